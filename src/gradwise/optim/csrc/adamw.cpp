// Adam / AdamW (the Adam update of OrthoAdamW, optionally on the ⊥Grad-projected gradient).
// Conventions, checks and shared helpers: common.h.
#include "common.h"

namespace gradwise::optim {
namespace {

// p <- p * decay + coef * m / (sqrt(v) / q + eps), m and v updated from
// g' = (g - pc * w) * pk when PROJ (⊥Grad), else g.
template <typename T, bool PROJ>
void adamw_range(T* __restrict__ p, const T* __restrict__ g, T* __restrict__ m, T* __restrict__ v, int64_t lo,
                 int64_t hi, T b1, T b2, T eps, T decay, T coef, T q, T pc, T pk) {
  const T omb1 = 1 - b1, omb2 = 1 - b2;
  for (int64_t j = lo; j < hi; ++j) {
    T gj = g[j];
    if (PROJ) gj = (gj - pc * p[j]) * pk;
    const T mj = m[j] + omb1 * (gj - m[j]);  // lerp, as torch.optim.AdamW
    const T vj = v[j] * b2 + (omb2 * gj) * gj;
    m[j] = mj;
    v[j] = vj;
    p[j] = p[j] * decay + coef * (mj / (std::sqrt(vj) / q + eps));
  }
}

void adamw_(at::TensorList p, at::TensorList g, at::TensorList m, at::TensorList v, c10::ArrayRef<double> coef,
            c10::ArrayRef<double> bc2_sqrt, c10::ArrayRef<double> proj_c, c10::ArrayRef<double> proj_k,
            double b1, double b2, double eps, double decay) {
  check_params("adamw_", p, g);
  check_like("adamw_", "exp_avg", p, m);
  check_like("adamw_", "exp_avg_sq", p, v);
  check_count("adamw_", "coef", coef.size(), p.size());
  check_count("adamw_", "bc2_sqrt", bc2_sqrt.size(), p.size());
  check_count("adamw_", "proj_c", proj_c.size(), p.size(), true);
  check_count("adamw_", "proj_k", proj_k.size(), proj_c.size());
  const bool proj = !proj_c.empty();
  for (size_t i = 0; i < p.size(); ++i) {
    AT_DISPATCH_FLOATING_TYPES(p[i].scalar_type(), "adamw_", [&] {
      using T = scalar_t;
      Work P(p[i], true), G(g[i], false), M(m[i], true), V(v[i], true);
      T *pp = P.ptr<T>(), *mp = M.ptr<T>(), *vp = V.ptr<T>();
      const T* gp = G.ptr<T>();
      const T B1 = b1, B2 = b2, E = eps, D = decay, C = coef[i], Q = bc2_sqrt[i];
      const T PC = proj ? proj_c[i] : 0, PK = proj ? proj_k[i] : 1;
      at::parallel_for(0, P.t.numel(), kGrain, [=](int64_t lo, int64_t hi) {
        if (proj) adamw_range<T, true>(pp, gp, mp, vp, lo, hi, B1, B2, E, D, C, Q, PC, PK);
        else adamw_range<T, false>(pp, gp, mp, vp, lo, hi, B1, B2, E, D, C, Q, PC, PK);
      });
    });
  }
}

}  // namespace
}  // namespace gradwise::optim

TORCH_LIBRARY_FRAGMENT(gradwise_fused, m) {
  m.def("adamw_(Tensor(a!)[] p, Tensor[] g, Tensor(b!)[] m, Tensor(c!)[] v, float[] coef, float[] bc2_sqrt, "
        "float[] proj_c, float[] proj_k, float b1, float b2, float eps, float decay) -> ()");
}

TORCH_LIBRARY_IMPL(gradwise_fused, CPU, m) {
  m.impl("adamw_", &gradwise::optim::adamw_);
}
