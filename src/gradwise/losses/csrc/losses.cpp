// Fused CPU kernels for gradwise's losses (built with the optimizer kernels,
// see gradwise/optim/_fused.py). Each works row by row: a row of logits stays
// in cache while the several passes a loss needs run over it, so memory is
// read once forward and once backward, where composing torch ops makes 10-20
// passes over the [N, C] tensor.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

// vector versions of exp/log1p from glibc's libmvec (see fused.cpp)
extern "C" {
#pragma omp declare simd notinbranch
double exp(double) noexcept;
#pragma omp declare simd notinbranch
float expf(float) noexcept;
#pragma omp declare simd notinbranch
double log1p(double) noexcept;
#pragma omp declare simd notinbranch
float log1pf(float) noexcept;
}

namespace {

inline float vexp(float x) { return expf(x); }
inline double vexp(double x) { return exp(x); }
inline float vlog1p(float x) { return log1pf(x); }
inline double vlog1p(double x) { return log1p(x); }

// torch.nn.functional.softplus with beta=1, threshold=20
template <typename T>
inline T softplus(T x) { return x > T(20) ? x : vlog1p(vexp(x)); }

template <typename T>
T expsum_row(const T* __restrict__ u, int64_t c, T shift) {
  T z = 0;
#pragma omp simd reduction(+ : z)
  for (int64_t k = 0; k < c; ++k) z += vexp(u[k] - shift);
  return z;
}

// One row of LDR-KL on softplus-normalized scores, and optionally its
// gradient. With e = exp(x): softplus(x) = log1p(e) and sigmoid(x) =
// e / (1 + e), so the softplus derivative costs a division instead of a
// third exp. The gradient needs only row
// scalars known at the end of the forward (m, lse, sum_k q_k s_k), so it is
// written here, while the row is in cache, and backward is one multiply by
// the upstream gradient: 3 transcendentals per logit instead of 7.
//   s = softplus(x) / m, m = mean_k softplus(x_k); u_k = (s_k + margin [k != y]) / lam
//   loss = lam (logsumexp(u) - log C) - s_y; q = softmax(u)
//   dloss/dx_j = sigmoid(x_j) / m (q_j - [j = y] - sum_k (q_k - [k = y]) s_k / C)
// sp and sg are row scratch of length c; gr == nullptr skips the gradient.
template <typename T>
T ldr_row(const T* __restrict__ xr, T* __restrict__ sp, T* __restrict__ sg, T* __restrict__ gr, int64_t c,
          int64_t yi, T lam, T margin, T logc) {
  T sum = 0;
  if (gr) {
#pragma omp simd reduction(+ : sum)
    for (int64_t k = 0; k < c; ++k) {
      // exp(40) is finite in float and 1 + exp(40) rounds to exp(40) in
      // double, so the clamp leaves sigmoid exact and never makes inf / inf
      const T e = vexp(xr[k] < T(40) ? xr[k] : T(40));
      sp[k] = xr[k] > T(20) ? xr[k] : vlog1p(e);  // F.softplus's threshold
      sg[k] = e / (T(1) + e);
      sum += sp[k];
    }
  } else {
#pragma omp simd reduction(+ : sum)
    for (int64_t k = 0; k < c; ++k) {
      sp[k] = softplus(xr[k]);
      sum += sp[k];
    }
  }
  const T m = std::max(sum / static_cast<T>(c), std::numeric_limits<T>::min());
  const T a = T(1) / m;
  const T s_y = sp[yi] * a;
  // u_k; the target's margin is taken back after the loop, and the loop's
  // max is written as a select: both keep it vectorized
  const T b = a / lam, cm = margin / lam;
  T mx = -std::numeric_limits<T>::infinity();
#pragma omp simd reduction(max : mx)
  for (int64_t k = 0; k < c; ++k) {
    const T u = sp[k] * b + cm;
    sp[k] = u;
    mx = u > mx ? u : mx;
  }
  sp[yi] -= cm;
  mx = std::max(mx, sp[yi]);  // a negative margin makes u_y the largest
  T z = 0, wu = 0;
#pragma omp simd reduction(+ : z, wu)
  for (int64_t k = 0; k < c; ++k) {
    const T w = vexp(sp[k] - mx);
    z += w;
    wu += w * sp[k];
    sp[k] = w;  // unnormalized q
  }
  const T loss = lam * (mx + std::log(z) - logc) - s_y;
  if (gr) {
    const T iz = T(1) / z;
    // sum_k q_k s_k with s_k = lam u_k - margin [k != y]
    const T qs = lam * wu * iz - margin * (T(1) - sp[yi] * iz);
    const T d = (qs - s_y) / static_cast<T>(c);
#pragma omp simd
    for (int64_t k = 0; k < c; ++k) gr[k] = a * sg[k] * (sp[k] * iz - d);
    gr[yi] -= a * sg[yi];
  }
  return loss;
}

// Per-row LDR-KL loss [N] and, when need_grad, d loss_i / d x_i [N, C].
std::vector<at::Tensor> ldr_softplus(const at::Tensor& x_, const at::Tensor& y_, double lam, double margin,
                                     bool need_grad) {
  TORCH_CHECK(x_.dim() == 2 && x_.size(1) > 0 && x_.device().is_cpu(), "ldr_softplus: CPU [N, C>0] logits");
  auto x = x_.contiguous();
  auto y = y_.to(at::kLong).contiguous();
  const int64_t n = x.size(0), c = x.size(1);
  auto loss = at::empty({n}, x.options());
  at::Tensor grad = need_grad ? at::empty_like(x) : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "ldr_softplus", [&] {
    using T = scalar_t;
    const T* xp = x.data_ptr<T>();
    const int64_t* yp = y.data_ptr<int64_t>();
    T* lp = loss.data_ptr<T>();
    T* gp = need_grad ? grad.data_ptr<T>() : nullptr;
    const T L = lam, MG = margin, logc = std::log(static_cast<T>(c));
    at::parallel_for(0, n, std::max<int64_t>(1, 4096 / c), [&](int64_t lo, int64_t hi) {
      std::vector<T> sp(c), sg(c);
      for (int64_t i = lo; i < hi; ++i)
        lp[i] = ldr_row<T>(xp + i * c, sp.data(), sg.data(), gp ? gp + i * c : nullptr, c, yp[i], L, MG, logc);
    });
  });
  if (need_grad) return {loss, grad};
  return {loss};
}

// ---- top-label confidence max_k softmax(z)_k (correctness-aware calibration loss)
template <typename T>
T rowmax(const T* __restrict__ z, int64_t c, int64_t* arg) {
  T mx = z[0];
  int64_t a = 0;
  for (int64_t k = 1; k < c; ++k)  // first maximum, as torch.max
    if (z[k] > mx) { mx = z[k]; a = k; }
  *arg = a;
  return mx;
}

// conf_i, argmax_i, lse_i
std::vector<at::Tensor> top_confidence_forward(const at::Tensor& z_) {
  TORCH_CHECK(z_.dim() == 2 && z_.size(1) > 0 && z_.device().is_cpu(), "top_confidence_forward: CPU [N, C>0]");
  auto z = z_.contiguous();
  const int64_t n = z.size(0), c = z.size(1);
  auto conf = at::empty({n}, z.options()), lse = at::empty({n}, z.options());
  auto pred = at::empty({n}, z.options().dtype(at::kLong));
  AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "top_confidence_forward", [&] {
    using T = scalar_t;
    const T* zp = z.data_ptr<T>();
    T *cp = conf.data_ptr<T>(), *lp = lse.data_ptr<T>();
    int64_t* pp = pred.data_ptr<int64_t>();
    at::parallel_for(0, n, std::max<int64_t>(1, 4096 / c), [&](int64_t lo, int64_t hi) {
      for (int64_t i = lo; i < hi; ++i) {
        const T* zr = zp + i * c;
        const T mx = rowmax<T>(zr, c, pp + i);
        const T sum = expsum_row<T>(zr, c, mx);
        cp[i] = T(1) / sum;
        lp[i] = mx + std::log(sum);
      }
    });
  });
  return {conf, pred, lse};
}

template <typename T>
void top_conf_backward_row(const T* __restrict__ zr, T* __restrict__ gr, int64_t c, T lse, T coef) {
#pragma omp simd
  for (int64_t k = 0; k < c; ++k) gr[k] = -coef * vexp(zr[k] - lse);
}

// d conf_i / d z_ik = conf_i ([k = pred_i] - softmax(z_i)_k)
at::Tensor top_confidence_backward(const at::Tensor& z_, const at::Tensor& lse_, const at::Tensor& pred_,
                                   const at::Tensor& conf_, const at::Tensor& g_) {
  auto z = z_.contiguous();
  auto lse = lse_.contiguous(), conf = conf_.contiguous(), g = g_.to(z.scalar_type()).contiguous();
  auto pred = pred_.to(at::kLong).contiguous();
  const int64_t n = z.size(0), c = z.size(1);
  auto grad = at::empty_like(z);
  AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "top_confidence_backward", [&] {
    using T = scalar_t;
    const T *zp = z.data_ptr<T>(), *lp = lse.data_ptr<T>(), *cp = conf.data_ptr<T>(), *gp = g.data_ptr<T>();
    const int64_t* pp = pred.data_ptr<int64_t>();
    T* op = grad.data_ptr<T>();
    at::parallel_for(0, n, std::max<int64_t>(1, 4096 / c), [&](int64_t lo, int64_t hi) {
      for (int64_t i = lo; i < hi; ++i) {
        const T coef = gp[i] * cp[i];
        top_conf_backward_row<T>(zp + i * c, op + i * c, c, lp[i], coef);
        op[i * c + pp[i]] += coef;
      }
    });
  });
  return grad;
}

}  // namespace

TORCH_LIBRARY(gradwise_losses, m) {
  m.def("top_confidence_forward(Tensor z) -> Tensor[]", &top_confidence_forward);
  m.def("top_confidence_backward(Tensor z, Tensor lse, Tensor pred, Tensor conf, Tensor g) -> Tensor",
        &top_confidence_backward);
  m.def("ldr_softplus(Tensor x, Tensor y, float lam, float margin, bool need_grad) -> Tensor[]", &ldr_softplus);
}
