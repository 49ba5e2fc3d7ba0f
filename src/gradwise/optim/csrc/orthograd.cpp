// ⊥Grad (gradwise.optim.OrthoGrad, OrthoAdamW): the per-tensor sums of the projection.
// Conventions, checks and shared helpers: common.h.
#include "common.h"

#include <ATen/ops/zeros.h>

namespace gradwise::optim {
namespace {

// Per-tensor sums for ⊥Grad: <w,g>, <w,w>, <g,g>; with c given, ||g - c w||^2 in column 0.
template <typename T>
std::array<T, 3> perp_range(const T* __restrict__ w, const T* __restrict__ g, int64_t lo, int64_t hi) {
  T a = 0, b = 0, d = 0;
#pragma omp simd reduction(+ : a, b, d)
  for (int64_t j = lo; j < hi; ++j) {
    a += w[j] * g[j];
    b += w[j] * w[j];
    d += g[j] * g[j];
  }
  return {a, b, d};
}

template <typename T>
std::array<T, 1> orth_range(const T* __restrict__ w, const T* __restrict__ g, int64_t lo, int64_t hi, T c) {
  T a = 0;
#pragma omp simd reduction(+ : a)
  for (int64_t j = lo; j < hi; ++j) {
    const T r = g[j] - c * w[j];
    a += r * r;
  }
  return {a};
}

at::Tensor perp_stats(at::TensorList w, at::TensorList g, c10::ArrayRef<double> c) {
  check_params("perp_stats", w, g);
  check_count("perp_stats", "c", c.size(), w.size(), true);
  const bool second = !c.empty();
  auto out = at::zeros({static_cast<int64_t>(w.size()), 3}, at::kDouble);
  double* o = out.data_ptr<double>();
  for (size_t i = 0; i < w.size(); ++i) {
    AT_DISPATCH_FLOATING_TYPES(w[i].scalar_type(), "perp_stats", [&] {
      using T = scalar_t;
      Work W(w[i], false), G(g[i], false);
      const T *wp = W.ptr<T>(), *gp = G.ptr<T>();
      const int64_t n = W.t.numel();
      if (second) {
        const T ci = c[i];
        o[3 * i] = chunked_sum<T, 1>(n, [=](int64_t lo, int64_t hi) { return orth_range<T>(wp, gp, lo, hi, ci); })[0];
      } else {
        auto r = chunked_sum<T, 3>(n, [=](int64_t lo, int64_t hi) { return perp_range<T>(wp, gp, lo, hi); });
        for (int q = 0; q < 3; ++q) o[3 * i + q] = r[q];
      }
    });
  }
  return out;
}

}  // namespace
}  // namespace gradwise::optim

TORCH_LIBRARY_FRAGMENT(gradwise_fused, m) {
  m.def("perp_stats(Tensor[] w, Tensor[] g, float[] c) -> Tensor");
}

TORCH_LIBRARY_IMPL(gradwise_fused, CPU, m) {
  m.impl("perp_stats", &gradwise::optim::perp_stats);
}
