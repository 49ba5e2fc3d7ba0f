// StableMax cross-entropy (gradwise.losses.stablemax_cross_entropy): per-row loss forward and gradient
// backward, each one read of the logits. Shared helpers: common.h.
//
//   s(x) = 1 + x (x >= 0), 1 / (1 - x) (x < 0);   R = sum_{k != t} s(x_k);   loss = log((R + s_t) / s_t)
//   dloss/dx_k = s'(x_k) / (R + s_t) (k != t),    dloss/dx_t = -s'(x_t) R / ((R + s_t) s_t)
//   s'(x) = 1 (x >= 0), 1 / (1 - x)^2 (x < 0)
#include "common.h"

namespace gradwise::losses {
namespace {

template <typename T>
inline T ramp(T x) {
  const T u = T(1) + (x < T(0) ? -x : x);
  return x >= T(0) ? u : T(1) / u;
}

template <typename T>
inline T ramp_grad(T x) {
  const T u = T(1) - x;
  return x >= T(0) ? T(1) : T(1) / (u * u);
}

// log((R + s_t) / s_t) without cancellation (R < s_t: log1p of a ratio below 1) and without overflow
// (R >= s_t: log R + log1p(s_t / R) - log s_t, with log s_t = sign(x_t) log1p(|x_t|) exact for tiny s_t)
template <typename T>
inline T loss_from(T r, T st, T xt) {
  if (r < st) return vlog1p(r / st);
  const T log_st = xt >= T(0) ? vlog1p(xt) : -vlog1p(-xt);
  return std::log(r) + vlog1p(st / r) - log_st;
}

template <typename T>
T ramp_sum(const T* __restrict__ x, int64_t lo, int64_t hi) {
  T z = 0;
#pragma omp simd reduction(+ : z)
  for (int64_t k = lo; k < hi; ++k) z += ramp<T>(x[k]);
  return z;
}

template <typename T>
void ramp_grad_row(const T* __restrict__ xr, T* __restrict__ gr, int64_t c, T coef) {
#pragma omp simd
  for (int64_t k = 0; k < c; ++k) gr[k] = coef * ramp_grad<T>(xr[k]);
}

void check_inputs(const char* name, const at::Tensor& x, const at::Tensor& target) {
  TORCH_CHECK(x.dim() == 2 && x.size(1) > 0 && x.device().is_cpu(), name, ": CPU [N, C>0] logits");
  TORCH_CHECK(target.dim() == 1 && target.size(0) == x.size(0) && target.scalar_type() == at::kLong &&
                  target.device().is_cpu(),
              name, ": target must be CPU int64 of shape [N]");
  const int64_t* tp = target.data_ptr<int64_t>();
  const int64_t c = x.size(1);
  for (int64_t i = 0; i < target.size(0); ++i)
    TORCH_CHECK(tp[i] >= 0 && tp[i] < c, name, ": target ", tp[i], " out of range [0, ", c, ")");
}

// [loss, s_t, R], each [N]
std::vector<at::Tensor> stablemax_ce_forward(const at::Tensor& x_, const at::Tensor& target_) {
  auto x = x_.contiguous();
  auto target = target_.contiguous();
  check_inputs("stablemax_ce_forward", x, target);
  const int64_t n = x.size(0), c = x.size(1);
  auto loss = at::empty({n}, x.options()), s_t = at::empty({n}, x.options()), rest = at::empty({n}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "stablemax_ce_forward", [&] {
    using T = scalar_t;
    const T* xp = x.data_ptr<T>();
    const int64_t* tp = target.data_ptr<int64_t>();
    T *lp = loss.data_ptr<T>(), *sp = s_t.data_ptr<T>(), *rp = rest.data_ptr<T>();
    at::parallel_for(0, n, std::max<int64_t>(1, 4096 / c), [&](int64_t lo, int64_t hi) {
      for (int64_t i = lo; i < hi; ++i) {
        const T* xr = xp + i * c;
        const int64_t t = tp[i];
        const T r = ramp_sum<T>(xr, 0, t) + ramp_sum<T>(xr, t + 1, c);  // the other classes only: no cancellation
        const T st = ramp<T>(xr[t]);
        sp[i] = st;
        rp[i] = r;
        lp[i] = loss_from(r, st, xr[t]);
      }
    });
  });
  return {loss, s_t, rest};
}

at::Tensor stablemax_ce_backward(const at::Tensor& x_, const at::Tensor& target_, const at::Tensor& s_t_,
                                 const at::Tensor& rest_, const at::Tensor& g_) {
  auto x = x_.contiguous();
  auto target = target_.contiguous();
  check_inputs("stablemax_ce_backward", x, target);
  const int64_t n = x.size(0), c = x.size(1);
  auto s_t = s_t_.to(x.scalar_type()).contiguous(), rest = rest_.to(x.scalar_type()).contiguous();
  auto g = g_.to(x.scalar_type()).contiguous();
  TORCH_CHECK(s_t.numel() == n && rest.numel() == n && g.numel() == n,
              "stablemax_ce_backward: s_t, rest and g must have N elements");
  auto grad = at::empty_like(x);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "stablemax_ce_backward", [&] {
    using T = scalar_t;
    const T *xp = x.data_ptr<T>(), *sp = s_t.data_ptr<T>(), *rp = rest.data_ptr<T>(), *gp = g.data_ptr<T>();
    const int64_t* tp = target.data_ptr<int64_t>();
    T* op = grad.data_ptr<T>();
    at::parallel_for(0, n, std::max<int64_t>(1, 4096 / c), [&](int64_t lo, int64_t hi) {
      for (int64_t i = lo; i < hi; ++i) {
        const T* xr = xp + i * c;
        T* gr = op + i * c;
        const T total = rp[i] + sp[i];
        ramp_grad_row<T>(xr, gr, c, gp[i] / total);
        const int64_t t = tp[i];
        // s'(x_t) / s_t = 1 / s_t (x_t >= 0), s_t (x_t < 0): no underflow of s'(x_t) for a very negative x_t
        const T dlog_st = xr[t] >= T(0) ? T(1) / sp[i] : sp[i];
        gr[t] = -gp[i] * (rp[i] / total) * dlog_st;
      }
    });
  });
  return grad;
}

}  // namespace
}  // namespace gradwise::losses

TORCH_LIBRARY_FRAGMENT(gradwise_losses, m) {
  m.def("stablemax_ce_forward(Tensor x, Tensor target) -> Tensor[]");
  m.def("stablemax_ce_backward(Tensor x, Tensor target, Tensor s_t, Tensor rest, Tensor g) -> Tensor");
}

TORCH_LIBRARY_IMPL(gradwise_losses, CPU, m) {
  m.impl("stablemax_ce_forward", &gradwise::losses::stablemax_ce_forward);
  m.impl("stablemax_ce_backward", &gradwise::losses::stablemax_ce_backward);
}
