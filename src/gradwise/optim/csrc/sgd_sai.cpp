// SGD-SaI (gradwise.optim.SGDSaI).
// Conventions, checks and shared helpers: common.h.
#include "common.h"

namespace gradwise::optim {
namespace {

template <typename T, bool BUF, bool FRESH>
void sgdsai_range(T* __restrict__ p, const T* __restrict__ g, T* __restrict__ buf, int64_t lo, int64_t hi, T mom,
                  T scale, T decay) {
  const T om = 1 - mom;
  for (int64_t j = lo; j < hi; ++j) {
    T b = g[j];
    if (BUF) {
      if (!FRESH) b = buf[j] * mom + om * g[j];
      buf[j] = b;
    }
    p[j] = p[j] * decay + b * scale;
  }
}

void sgdsai_(at::TensorList p, at::TensorList g, at::TensorList buf, c10::ArrayRef<double> scale,
             c10::ArrayRef<int64_t> fresh, double momentum, double decay) {
  check_params("sgdsai_", p, g);
  check_like("sgdsai_", "momentum_buffer", p, buf, true);
  check_count("sgdsai_", "scale", scale.size(), p.size());
  check_count("sgdsai_", "fresh", fresh.size(), p.size());
  const bool use_buf = !buf.empty();
  for (size_t i = 0; i < p.size(); ++i) {
    AT_DISPATCH_FLOATING_TYPES(p[i].scalar_type(), "sgdsai_", [&] {
      using T = scalar_t;
      Work P(p[i], true), G(g[i], false), B(use_buf ? buf[i] : g[i], use_buf);
      T *pp = P.ptr<T>(), *bp = B.ptr<T>();
      const T* gp = G.ptr<T>();
      const T MO = momentum, S = scale[i], D = decay;
      const bool f = fresh[i] != 0;
      at::parallel_for(0, P.t.numel(), kGrain, [=](int64_t lo, int64_t hi) {
        if (!use_buf) sgdsai_range<T, false, false>(pp, gp, bp, lo, hi, MO, S, D);
        else if (f) sgdsai_range<T, true, true>(pp, gp, bp, lo, hi, MO, S, D);
        else sgdsai_range<T, true, false>(pp, gp, bp, lo, hi, MO, S, D);
      });
    });
  }
}

}  // namespace
}  // namespace gradwise::optim

TORCH_LIBRARY_FRAGMENT(gradwise_fused, m) {
  m.def("sgdsai_(Tensor(a!)[] p, Tensor[] g, Tensor(b!)[] buf, float[] scale, int[] fresh, float momentum, "
        "float decay) -> ()");
}

TORCH_LIBRARY_IMPL(gradwise_fused, CPU, m) {
  m.impl("sgdsai_", &gradwise::optim::sgdsai_);
}
