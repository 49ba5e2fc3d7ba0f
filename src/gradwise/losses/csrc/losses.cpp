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

// s_k = softplus(x_k) into sp; returns their sum
template <typename T>
T softplus_row(const T* __restrict__ x, T* __restrict__ sp, int64_t c) {
  T sum = 0;
#pragma omp simd reduction(+ : sum)
  for (int64_t k = 0; k < c; ++k) {
    sp[k] = softplus(x[k]);
    sum += sp[k];
  }
  return sum;
}

// u_k = (sp_k / m + margin [k != y]) / lam, in place; returns max u
template <typename T>
T ldr_u_row(T* __restrict__ u, int64_t c, int64_t y, T m, T lam, T margin) {
  T mx = -std::numeric_limits<T>::infinity();
  const T a = T(1) / m;
#pragma omp simd reduction(max : mx)
  for (int64_t k = 0; k < c; ++k) {
    u[k] = (u[k] * a + (k == y ? T(0) : margin)) / lam;
    mx = std::max(mx, u[k]);
  }
  return mx;
}

template <typename T>
T expsum_row(const T* __restrict__ u, int64_t c, T shift) {
  T z = 0;
#pragma omp simd reduction(+ : z)
  for (int64_t k = 0; k < c; ++k) z += vexp(u[k] - shift);
  return z;
}

// one row of the LDR backward; sp is scratch of length c
template <typename T>
void ldr_backward_row(const T* __restrict__ xr, T* __restrict__ sp, T* __restrict__ gr, int64_t c, int64_t yi,
                      T mi, T li, T gi, T lam, T margin) {
  const T a = T(1) / mi;
  softplus_row<T>(xr, sp, c);
  T qs = 0;  // sum_k q_k s_k, with q_k stored in gr
#pragma omp simd reduction(+ : qs)
  for (int64_t k = 0; k < c; ++k) {
    const T s = sp[k] * a;
    const T q = vexp((s + (k == yi ? T(0) : margin)) / lam - li);
    gr[k] = q;
    qs += q * s;
  }
  const T d = (qs - sp[yi] * a) / static_cast<T>(c);
  const T scale = gi * a;
#pragma omp simd
  for (int64_t k = 0; k < c; ++k) {
    const T sig = T(1) / (T(1) + vexp(-xr[k]));
    gr[k] = scale * sig * (gr[k] - (k == yi ? T(1) : T(0)) - d);
  }
}

// LDR-KL on softplus-normalized scores. Returns per-row loss; m and lse are saved for backward.
std::vector<at::Tensor> ldr_softplus_forward(const at::Tensor& x_, const at::Tensor& y_, double lam, double margin) {
  TORCH_CHECK(x_.dim() == 2 && x_.device().is_cpu(), "ldr_softplus_forward: CPU [N, C] logits");
  auto x = x_.contiguous();
  auto y = y_.to(at::kLong).contiguous();
  const int64_t n = x.size(0), c = x.size(1);
  auto loss = at::empty({n}, x.options()), m = at::empty({n}, x.options()), lse = at::empty({n}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "ldr_softplus_forward", [&] {
    using T = scalar_t;
    const T* xp = x.data_ptr<T>();
    const int64_t* yp = y.data_ptr<int64_t>();
    T *lp = loss.data_ptr<T>(), *mp = m.data_ptr<T>(), *ep = lse.data_ptr<T>();
    const T L = lam, MG = margin, logc = std::log(static_cast<T>(c));
    at::parallel_for(0, n, std::max<int64_t>(1, 4096 / std::max<int64_t>(c, 1)), [&](int64_t lo, int64_t hi) {
      std::vector<T> buf(c);
      for (int64_t i = lo; i < hi; ++i) {
        const T* xr = xp + i * c;
        const int64_t yi = yp[i];
        const T mi = std::max(softplus_row<T>(xr, buf.data(), c) / static_cast<T>(c),
                              std::numeric_limits<T>::min());
        const T s_y = buf[yi] / mi;
        const T mx = ldr_u_row<T>(buf.data(), c, yi, mi, L, MG);
        const T li = mx + std::log(expsum_row<T>(buf.data(), c, mx));
        mp[i] = mi;
        ep[i] = li;
        lp[i] = L * (li - logc) - s_y;
      }
    });
  });
  return {loss, m, lse};
}

// d loss_i / d x_ij = g_i / m_i * sigmoid(x_ij) * (q_ij - [j = y_i] - D_i / C),
// q = softmax(u), D_i = sum_k (q_ik - [k = y_i]) s_ik.
at::Tensor ldr_softplus_backward(const at::Tensor& x_, const at::Tensor& y_, const at::Tensor& m_,
                                 const at::Tensor& lse_, const at::Tensor& g_, double lam, double margin) {
  auto x = x_.contiguous();
  auto y = y_.to(at::kLong).contiguous();
  auto m = m_.contiguous(), lse = lse_.contiguous(), g = g_.to(x.scalar_type()).contiguous();
  const int64_t n = x.size(0), c = x.size(1);
  auto grad = at::empty_like(x);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "ldr_softplus_backward", [&] {
    using T = scalar_t;
    const T *xp = x.data_ptr<T>(), *mp = m.data_ptr<T>(), *ep = lse.data_ptr<T>(), *gp = g.data_ptr<T>();
    const int64_t* yp = y.data_ptr<int64_t>();
    T* op = grad.data_ptr<T>();
    const T L = lam, MG = margin;
    at::parallel_for(0, n, std::max<int64_t>(1, 4096 / std::max<int64_t>(c, 1)), [&](int64_t lo, int64_t hi) {
      std::vector<T> sp(c);
      for (int64_t i = lo; i < hi; ++i) {
        const T* xr = xp + i * c;
        T* gr = op + i * c;
        const int64_t yi = yp[i];
        const T mi = mp[i], li = ep[i];
        ldr_backward_row<T>(xr, sp.data(), gr, c, yi, mi, li, gp[i], L, MG);
      }
    });
  });
  return grad;
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
  m.def("ldr_softplus_forward(Tensor x, Tensor y, float lam, float margin) -> Tensor[]", &ldr_softplus_forward);
  m.def("ldr_softplus_backward(Tensor x, Tensor y, Tensor m, Tensor lse, Tensor g, float lam, float margin) -> Tensor",
        &ldr_softplus_backward);
}
