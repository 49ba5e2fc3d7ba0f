// LDR-KL on softplus-normalized scores (gradwise.losses.ldr_loss): per-row loss and gradient in one pass.
// Shared helpers: common.h.
#include "common.h"

namespace gradwise::losses {
namespace {

// exp(v) for v <= 0 (both exps of the LDR kernel have such arguments).
// double: libm. float: 2^k e^r with |r| <= ln2/2 (Cody-Waite split of ln2)
// and a degree-6 polynomial (Chebyshev least-squares fit, within 1.1 ulp on
// that range), about 3x cheaper than libmvec's expf. 2^k is applied as two
// normal-range factors, so results down to the smallest subnormal are right;
// below -104 the result rounds to 0, as expf's does.
__attribute__((always_inline)) inline double exp_le0(double v) { return vexp(v); }

__attribute__((always_inline)) inline float exp_le0(float v) {
  v = v > -104.0f ? v : -104.0f;
  const float kf = (v * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  // round to nearest
  const float r = std::fma(kf, -1.428606765330187045e-06f, std::fma(kf, -0.693145751953125f, v));
  float q = 0.0013933643931522965f;
  q = std::fma(q, r, 0.008363175205886364f);
  q = std::fma(q, r, 0.04166646674275398f);
  q = std::fma(q, r, 0.16666576266288757f);
  q = std::fma(q, r, 0.5f);
  const float p = std::fma(r * r, q, r) + 1.0f;
  const int32_t k = static_cast<int32_t>(kf), k1 = k / 2;
  const int32_t b1 = (k1 + 127) << 23, b2 = (k - k1 + 127) << 23;
  float s1, s2;
  std::memcpy(&s1, &b1, sizeof s1);
  std::memcpy(&s2, &b2, sizeof s2);
  return p * s1 * s2;
}

// softplus(x) (F.softplus: x itself above 20) and sigmoid(x) together.
// double: e = exp(x) gives log1p(e) and e / (1 + e); clamping x at 40 keeps
// e finite and sigmoid exact (1 + exp(40) rounds to exp(40)).
__attribute__((always_inline)) inline void softplus_sigmoid(double x, double& sp, double& sg) {
  const double e = vexp(x < 40.0 ? x : 40.0);
  sp = x > 20.0 ? x : vlog1p(e);
  sg = e / (1.0 + e);
}

// float: libmvec's log1pf is the costliest step of the LDR kernel, so it is
// replaced by one division shared with sigmoid and a polynomial. With
// t = exp(-|x|) in (0, 1] and u = 1 + t: softplus(x) = max(x, 0) + log1p(t),
// log1p(t) = log(u) + (t - (u - 1)) / u (the second term restores the
// rounding of 1 + t, exactly computed), log(u) = k ln2 + f P(f) with
// u = 2^k (1 + f), f in [sqrt(1/2) - 1, sqrt(2) - 1], P a degree-8 fit of
// log1p(f)/f (Chebyshev least squares, relative error 2.7e-8; softplus and
// sigmoid within 3 ulp in float on a dense grid); sigmoid(x) = 1/u for x >= 0 and t/u below. Tested against
// F.softplus/torch.sigmoid in tests/losses/test_fused.py.
__attribute__((always_inline)) inline void softplus_sigmoid(float x, float& sp, float& sg) {
  const float t = vexp(-(x < 0.0f ? -x : x));
  const float u = 1.0f + t;
  const float r = 1.0f / u;
  const float low = t - (u - 1.0f);
  const bool big = u > 1.41421356f;
  const float f = (big ? 0.5f * u : u) - 1.0f;
  float p = 0.08743945509195328f;
  p = std::fma(p, f, -0.14377330243587494f);
  p = std::fma(p, f, 0.14949095249176025f);
  p = std::fma(p, f, -0.16560696065425873f);
  p = std::fma(p, f, 0.19956977665424347f);
  p = std::fma(p, f, -0.2500215470790863f);
  p = std::fma(p, f, 0.3333418369293213f);
  p = std::fma(p, f, -0.49999988079071045f);
  p = std::fma(p, f, 1.0f);
  const float lp = std::fma(f, p, big ? 0.693147180559945f : 0.0f) + low * r;
  sp = x > 20.0f ? x : (x > 0.0f ? x : 0.0f) + lp;
  sg = x >= 0.0f ? r : t * r;
}

// One row of LDR-KL on softplus-normalized scores, and optionally its
// gradient. The gradient needs only row scalars known at the end of the
// forward (m, lse, sum_k q_k s_k), so it is written here, while the row is in
// cache, and backward is one multiply by the upstream gradient: per logit
// two exps and a division instead of 7 transcendentals.
//   s = softplus(x) / m, m = mean_k softplus(x_k); u_k = (s_k + margin [k != y]) / lam
//   loss = lam (logsumexp(u) - log C) - s_y; q = softmax(u)
//   dloss/dx_j = sigmoid(x_j) / m (q_j - [j = y] - sum_k (q_k - [k = y]) s_k / C)
// sp and sg are row scratch of length c; gr == nullptr skips the gradient,
// which is written multiplied by gscale.
template <typename T>
T ldr_row(const T* __restrict__ xr, T* __restrict__ sp, T* __restrict__ sg, T* __restrict__ gr, int64_t c,
          int64_t yi, T lam, T margin, T logc, T gscale) {
  T sum = 0, spmax = 0;
  if (gr) {
#pragma omp simd reduction(+ : sum) reduction(max : spmax)
    for (int64_t k = 0; k < c; ++k) {
      T a, b;
      softplus_sigmoid(xr[k], a, b);
      sp[k] = a;
      sg[k] = b;
      sum += a;
      const T other = k == yi ? T(0) : a;  // softplus >= 0, so 0 is neutral for the max
      spmax = other > spmax ? other : spmax;
    }
  } else {  // the same softplus values, so the loss does not depend on whether a gradient is wanted
#pragma omp simd reduction(+ : sum) reduction(max : spmax)
    for (int64_t k = 0; k < c; ++k) {
      T a, b;
      softplus_sigmoid(xr[k], a, b);
      sp[k] = a;
      sum += a;
      const T other = k == yi ? T(0) : a;
      spmax = other > spmax ? other : spmax;
    }
  }
  const T m = std::max(sum / static_cast<T>(c), std::numeric_limits<T>::min());
  const T a = T(1) / m;
  const T s_y = sp[yi] * a;
  // u_k = s_k / lam + margin / lam [k != y], s_k = softplus_k / m (formed first:
  // 1/m is huge when every softplus underflows, s_k <= C is not). The shift
  // mx is the exact max of u, from the largest non-target softplus of the
  // first pass, so no pass is spent on it. The loop leaves the target class
  // out of the sums (a masked add, not a subtraction afterwards, which would
  // cancel when the target's term dominates) and its term is added after.
  const T il = T(1) / lam, cm = margin / lam;
  const T u_y = s_y * il;
  const T mx = c > 1 ? std::max((spmax * a) * il + cm, u_y) : u_y;
  T z = 0, wu = 0;
#pragma omp simd reduction(+ : z, wu)
  for (int64_t k = 0; k < c; ++k) {
    const T u = (sp[k] * a) * il + cm;
    const T w = exp_le0(u - mx);
    const T wk = k == yi ? T(0) : w;
    z += wk;
    wu += wk * u;
    sp[k] = w;  // unnormalized q
  }
  sp[yi] = exp_le0(u_y - mx);
  z += sp[yi];
  wu += sp[yi] * u_y;
  const T loss = lam * (mx + std::log(z) - logc) - s_y;
  if (gr) {
    const T iz = T(1) / z;
    // sum_k q_k s_k with s_k = lam u_k - margin [k != y]
    const T qs = lam * wu * iz - margin * (T(1) - sp[yi] * iz);
    const T d = (qs - s_y) / static_cast<T>(c);
    const T ga = a * gscale;
#pragma omp simd
    for (int64_t k = 0; k < c; ++k) gr[k] = ga * sg[k] * (sp[k] * iz - d);
    gr[yi] -= ga * sg[yi];
  }
  return loss;
}

// Per-row LDR-KL loss [N] and, when need_grad, d loss_i / d x_i [N, C], each
// row multiplied by row_scale[i] when given (the weights of a reduction over
// rows, so that the gradient of the reduced loss comes out ready). Rows with
// row_scale 0 (ignored targets) are skipped: loss 0, gradient 0, so NaN
// logits there do not leak into the reduced loss.
std::vector<at::Tensor> ldr_softplus(const at::Tensor& x_, const at::Tensor& y_, double lam, double margin,
                                     bool need_grad, const std::optional<at::Tensor>& row_scale) {
  TORCH_CHECK(x_.dim() == 2 && x_.size(1) > 0 && x_.device().is_cpu(), "ldr_softplus: CPU [N, C>0] logits");
  auto x = x_.contiguous();
  auto y = y_.to(at::kLong).contiguous();
  const int64_t n = x.size(0), c = x.size(1);
  at::Tensor rs;
  if (row_scale.has_value()) {
    rs = row_scale->to(x.scalar_type()).contiguous();
    TORCH_CHECK(rs.dim() == 1 && rs.size(0) == n, "ldr_softplus: row_scale must have shape [N]");
  }
  auto loss = at::empty({n}, x.options());
  at::Tensor grad = need_grad ? at::empty_like(x) : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "ldr_softplus", [&] {
    using T = scalar_t;
    const T* xp = x.data_ptr<T>();
    const int64_t* yp = y.data_ptr<int64_t>();
    const T* sp_scale = rs.defined() ? rs.data_ptr<T>() : nullptr;
    T* lp = loss.data_ptr<T>();
    T* gp = need_grad ? grad.data_ptr<T>() : nullptr;
    const T L = lam, MG = margin, logc = std::log(static_cast<T>(c));
    at::parallel_for(0, n, std::max<int64_t>(1, 4096 / c), [&](int64_t lo, int64_t hi) {
      std::vector<T> sp(c), sg(c);
      for (int64_t i = lo; i < hi; ++i) {
        if (sp_scale && sp_scale[i] == T(0)) {  // an ignored row: loss 0 and no gradient, whatever its logits
          lp[i] = 0;
          if (gp) std::fill(gp + i * c, gp + (i + 1) * c, T(0));
          continue;
        }
        lp[i] = ldr_row<T>(xp + i * c, sp.data(), sg.data(), gp ? gp + i * c : nullptr, c, yp[i], L, MG, logc,
                           sp_scale ? sp_scale[i] : T(1));
      }
    });
  });
  if (need_grad) return {loss, grad};
  return {loss};
}

}  // namespace
}  // namespace gradwise::losses

TORCH_LIBRARY_FRAGMENT(gradwise_losses, m) {
  m.def("ldr_softplus(Tensor x, Tensor y, float lam, float margin, bool need_grad, Tensor? row_scale) -> Tensor[]");
}

TORCH_LIBRARY_IMPL(gradwise_losses, CPU, m) {
  m.impl("ldr_softplus", &gradwise::losses::ldr_softplus);
}
