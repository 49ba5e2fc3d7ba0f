// SPAM (gradwise.optim.SPAM): spike clipping, momentum reset, Adam step.
// Conventions, checks and shared helpers: common.h.
#include "common.h"

namespace gradwise::optim {
namespace {

template <typename T, bool CLIP, bool RESET>
void spam_range(T* __restrict__ p, const T* __restrict__ g, T* __restrict__ m, T* __restrict__ v, int64_t lo,
                int64_t hi, T b1, T b2, T eps, T th, T coef, T decay) {
  const T omb1 = 1 - b1, omb2 = 1 - b2;
  for (int64_t j = lo; j < hi; ++j) {
    T mj = RESET ? T(0) : m[j], vj = RESET ? T(0) : v[j], gj = g[j];
    if (CLIP) {
      const T lim = vj * th;
      gj = gj * gj > lim ? sgn(gj) * std::sqrt(lim) : gj;
    }
    mj = mj * b1 + omb1 * gj;
    vj = vj * b2 + (omb2 * gj) * gj;
    m[j] = mj;
    v[j] = vj;
    p[j] = (p[j] + coef * (mj / (std::sqrt(vj) + eps))) * decay;
  }
}

void spam_(at::TensorList p, at::TensorList g, at::TensorList m, at::TensorList v, c10::ArrayRef<double> coef,
           double b1, double b2, double eps, double threshold, bool reset, double decay_after) {
  check_params("spam_", p, g);
  check_like("spam_", "exp_avg", p, m);
  check_like("spam_", "exp_avg_sq", p, v);
  check_count("spam_", "coef", coef.size(), p.size());
  for (size_t i = 0; i < p.size(); ++i) {
    AT_DISPATCH_FLOATING_TYPES(p[i].scalar_type(), "spam_", [&] {
      using T = scalar_t;
      Work P(p[i], true), G(g[i], false), M(m[i], true), V(v[i], true);
      T *pp = P.ptr<T>(), *mp = M.ptr<T>(), *vp = V.ptr<T>();
      const T* gp = G.ptr<T>();
      const T B1 = b1, B2 = b2, E = eps, TH = threshold, C = coef[i], D = decay_after;
      const bool clip = threshold != 0;
      at::parallel_for(0, P.t.numel(), kGrain, [=](int64_t lo, int64_t hi) {
        if (clip && reset) spam_range<T, true, true>(pp, gp, mp, vp, lo, hi, B1, B2, E, TH, C, D);
        else if (clip) spam_range<T, true, false>(pp, gp, mp, vp, lo, hi, B1, B2, E, TH, C, D);
        else if (reset) spam_range<T, false, true>(pp, gp, mp, vp, lo, hi, B1, B2, E, TH, C, D);
        else spam_range<T, false, false>(pp, gp, mp, vp, lo, hi, B1, B2, E, TH, C, D);
      });
    });
  }
}

}  // namespace
}  // namespace gradwise::optim

TORCH_LIBRARY_FRAGMENT(gradwise_fused, m) {
  m.def("spam_(Tensor(a!)[] p, Tensor[] g, Tensor(b!)[] m, Tensor(c!)[] v, float[] coef, float b1, float b2, "
        "float eps, float threshold, bool reset, float decay_after) -> ()");
}

TORCH_LIBRARY_IMPL(gradwise_fused, CPU, m) {
  m.impl("spam_", &gradwise::optim::spam_);
}
