// DiffGrad (gradwise.optim.DiffGrad).
// Conventions, checks and shared helpers: common.h.
#include "common.h"

namespace gradwise::optim {
namespace {

template <typename T, bool L2>
void diffgrad_range(T* __restrict__ p, const T* __restrict__ g, T* __restrict__ m, T* __restrict__ v,
                    T* __restrict__ prev, int64_t lo, int64_t hi, T b1, T b2, T eps, T l2, T coef) {
  const T omb1 = 1 - b1, omb2 = 1 - b2;
  for (int64_t j = lo; j < hi; ++j) {
    T gj = g[j];
    if (L2) gj = gj + l2 * p[j];
    const T mj = m[j] * b1 + omb1 * gj;
    const T vj = v[j] * b2 + (omb2 * gj) * gj;
    const T fric = T(1) / (T(1) + fexp(-std::abs(prev[j] - gj)));
    m[j] = mj;
    v[j] = vj;
    prev[j] = gj;
    p[j] = p[j] + coef * ((fric * mj) / (std::sqrt(vj) + eps));
  }
}

void diffgrad_(at::TensorList p, at::TensorList g, at::TensorList m, at::TensorList v, at::TensorList prev,
               c10::ArrayRef<double> coef, double b1, double b2, double eps, double l2) {
  check_params("diffgrad_", p, g);
  check_like("diffgrad_", "exp_avg", p, m);
  check_like("diffgrad_", "exp_avg_sq", p, v);
  check_like("diffgrad_", "previous_grad", p, prev);
  check_count("diffgrad_", "coef", coef.size(), p.size());
  for (size_t i = 0; i < p.size(); ++i) {
    AT_DISPATCH_FLOATING_TYPES(p[i].scalar_type(), "diffgrad_", [&] {
      using T = scalar_t;
      Work P(p[i], true), G(g[i], false), M(m[i], true), V(v[i], true), R(prev[i], true);
      T *pp = P.ptr<T>(), *mp = M.ptr<T>(), *vp = V.ptr<T>(), *rp = R.ptr<T>();
      const T* gp = G.ptr<T>();
      const T B1 = b1, B2 = b2, E = eps, L = l2, C = coef[i];
      at::parallel_for(0, P.t.numel(), kGrain, [=](int64_t lo, int64_t hi) {
        if (L != 0) diffgrad_range<T, true>(pp, gp, mp, vp, rp, lo, hi, B1, B2, E, L, C);
        else diffgrad_range<T, false>(pp, gp, mp, vp, rp, lo, hi, B1, B2, E, L, C);
      });
    });
  }
}

}  // namespace
}  // namespace gradwise::optim

TORCH_LIBRARY_FRAGMENT(gradwise_fused, m) {
  m.def("diffgrad_(Tensor(a!)[] p, Tensor[] g, Tensor(b!)[] m, Tensor(c!)[] v, Tensor(d!)[] prev, float[] coef, "
        "float b1, float b2, float eps, float l2) -> ()");
}

TORCH_LIBRARY_IMPL(gradwise_fused, CPU, m) {
  m.impl("diffgrad_", &gradwise::optim::diffgrad_);
}
