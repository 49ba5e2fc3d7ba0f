// AdaBelief (gradwise.optim.AdaBelief): adaptive, rectified, momentum-SGD and no-step modes.
// Conventions, checks and shared helpers: common.h.
#include "common.h"

namespace gradwise::optim {
namespace {

// MODE 0: adaptive with bias-corrected denominator; 1: rectified adaptive
// (denominator sqrt(s) + eps); 2: momentum-SGD step; 3: no step.
template <typename T, bool L2, bool AMS, int MODE>
void adabelief_range(T* __restrict__ p, const T* __restrict__ g, T* __restrict__ m, T* __restrict__ s,
                     T* __restrict__ smax, int64_t lo, int64_t hi, T b1, T b2, T eps, T decay, T l2, T coef, T q) {
  const T omb1 = 1 - b1, omb2 = 1 - b2;
  for (int64_t j = lo; j < hi; ++j) {
    T gj = g[j];
    if (L2) gj = gj + l2 * p[j];
    const T mj = m[j] * b1 + omb1 * gj;
    const T r = gj - mj;
    const T sj = (s[j] * b2 + (omb2 * r) * r) + eps;
    m[j] = mj;
    s[j] = sj;
    T use = sj;
    if (AMS) {
      use = std::max(smax[j], sj);
      smax[j] = use;
    }
    T pj = p[j] * decay;
    if (MODE == 0) pj = pj + coef * (mj / (std::sqrt(use) / q + eps));
    if (MODE == 1) pj = pj + coef * (mj / (std::sqrt(sj) + eps));
    if (MODE == 2) pj = pj + coef * mj;
    p[j] = pj;
  }
}

template <typename T, bool L2, bool AMS>
void adabelief_one(int64_t md, T* p, const T* g, T* m, T* s, T* smax, int64_t n, T b1, T b2, T eps, T decay, T l2,
                   T coef, T q) {
  at::parallel_for(0, n, kGrain, [=](int64_t lo, int64_t hi) {
    switch (md) {
      case 0: adabelief_range<T, L2, AMS, 0>(p, g, m, s, smax, lo, hi, b1, b2, eps, decay, l2, coef, q); break;
      case 1: adabelief_range<T, L2, AMS, 1>(p, g, m, s, smax, lo, hi, b1, b2, eps, decay, l2, coef, q); break;
      case 2: adabelief_range<T, L2, AMS, 2>(p, g, m, s, smax, lo, hi, b1, b2, eps, decay, l2, coef, q); break;
      default: adabelief_range<T, L2, AMS, 3>(p, g, m, s, smax, lo, hi, b1, b2, eps, decay, l2, coef, q);
    }
  });
}

void adabelief_(at::TensorList p, at::TensorList g, at::TensorList m, at::TensorList s, at::TensorList smax,
                c10::ArrayRef<double> coef, c10::ArrayRef<double> bc2_sqrt, c10::ArrayRef<int64_t> mode,
                double b1, double b2, double eps, double decay, double l2) {
  check_params("adabelief_", p, g);
  check_like("adabelief_", "exp_avg", p, m);
  check_like("adabelief_", "exp_avg_var", p, s);
  check_like("adabelief_", "max_exp_avg_var", p, smax, true);
  check_count("adabelief_", "coef", coef.size(), p.size());
  check_count("adabelief_", "bc2_sqrt", bc2_sqrt.size(), p.size());
  check_count("adabelief_", "modes", mode.size(), p.size());
  const bool ams = !smax.empty();
  for (size_t i = 0; i < p.size(); ++i) {
    AT_DISPATCH_FLOATING_TYPES(p[i].scalar_type(), "adabelief_", [&] {
      using T = scalar_t;
      Work P(p[i], true), G(g[i], false), M(m[i], true), S(s[i], true), SM(ams ? smax[i] : s[i], ams);
      const int64_t n = P.t.numel();
      auto args = std::make_tuple(P.ptr<T>(), G.ptr<T>(), M.ptr<T>(), S.ptr<T>(), SM.ptr<T>());
      const T B1 = b1, B2 = b2, E = eps, D = decay, L = l2, C = coef[i], Q = bc2_sqrt[i];
      auto [pp, gp, mp, sp, smp] = args;
      if (l2 != 0) {
        if (ams) adabelief_one<T, true, true>(mode[i], pp, gp, mp, sp, smp, n, B1, B2, E, D, L, C, Q);
        else adabelief_one<T, true, false>(mode[i], pp, gp, mp, sp, smp, n, B1, B2, E, D, L, C, Q);
      } else {
        if (ams) adabelief_one<T, false, true>(mode[i], pp, gp, mp, sp, smp, n, B1, B2, E, D, L, C, Q);
        else adabelief_one<T, false, false>(mode[i], pp, gp, mp, sp, smp, n, B1, B2, E, D, L, C, Q);
      }
    });
  }
}

}  // namespace
}  // namespace gradwise::optim

TORCH_LIBRARY_FRAGMENT(gradwise_fused, m) {
  m.def("adabelief_(Tensor(a!)[] p, Tensor[] g, Tensor(b!)[] m, Tensor(c!)[] s, Tensor(d!)[] smax, float[] coef, "
        "float[] bc2_sqrt, int[] modes, float b1, float b2, float eps, float decay, float l2) -> ()");
}

TORCH_LIBRARY_IMPL(gradwise_fused, CPU, m) {
  m.impl("adabelief_", &gradwise::optim::adabelief_);
}
