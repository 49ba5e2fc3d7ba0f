// Top-label confidence max_k softmax(z)_k and its gradient (gradwise.losses.correctness_aware_loss).
// Shared helpers: common.h.
#include "common.h"

namespace gradwise::losses {
namespace {

template <typename T>
T expsum_row(const T* __restrict__ u, int64_t c, T shift) {
  T z = 0;
#pragma omp simd reduction(+ : z)
  for (int64_t k = 0; k < c; ++k) z += vexp(u[k] - shift);
  return z;
}

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
}  // namespace gradwise::losses

TORCH_LIBRARY_FRAGMENT(gradwise_losses, m) {
  m.def("top_confidence_forward(Tensor z) -> Tensor[]");
  m.def("top_confidence_backward(Tensor z, Tensor lse, Tensor pred, Tensor conf, Tensor g) -> Tensor");
}

TORCH_LIBRARY_IMPL(gradwise_losses, CPU, m) {
  m.impl("top_confidence_forward", &gradwise::losses::top_confidence_forward);
  m.impl("top_confidence_backward", &gradwise::losses::top_confidence_backward);
}
