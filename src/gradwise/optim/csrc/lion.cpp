// Lion (gradwise.optim.Lion, and LionK with K = l1).
// Conventions, checks and shared helpers: common.h.
#include "common.h"

namespace gradwise::optim {
namespace {

template <typename T>
void lion_range(T* __restrict__ p, const T* __restrict__ g, T* __restrict__ m, int64_t lo, int64_t hi, T lr, T b1,
                T b2, T decay) {
  const T omb1 = 1 - b1, omb2 = 1 - b2;
  for (int64_t j = lo; j < hi; ++j) {
    const T c = m[j] * b1 + omb1 * g[j];
    p[j] = p[j] * decay - lr * sgn(c);
    m[j] = m[j] * b2 + omb2 * g[j];
  }
}

void lion_(at::TensorList p, at::TensorList g, at::TensorList m, double lr, double b1, double b2, double decay) {
  check_params("lion_", p, g);
  check_like("lion_", "exp_avg", p, m);
  for (size_t i = 0; i < p.size(); ++i) {
    AT_DISPATCH_FLOATING_TYPES(p[i].scalar_type(), "lion_", [&] {
      using T = scalar_t;
      Work P(p[i], true), G(g[i], false), M(m[i], true);
      T *pp = P.ptr<T>(), *mp = M.ptr<T>();
      const T* gp = G.ptr<T>();
      const T LR = lr, B1 = b1, B2 = b2, D = decay;
      at::parallel_for(0, P.t.numel(), kGrain, [=](int64_t lo, int64_t hi) {
        lion_range<T>(pp, gp, mp, lo, hi, LR, B1, B2, D);
      });
    });
  }
}

}  // namespace
}  // namespace gradwise::optim

TORCH_LIBRARY_FRAGMENT(gradwise_fused, m) {
  m.def("lion_(Tensor(a!)[] p, Tensor[] g, Tensor(b!)[] m, float lr, float b1, float b2, float decay) -> ()");
}

TORCH_LIBRARY_IMPL(gradwise_fused, CPU, m) {
  m.impl("lion_", &gradwise::optim::lion_);
}
