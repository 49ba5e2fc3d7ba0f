// StableSPAM (gradwise.optim.StableSPAM): AdaClip, AdaGN and the Adam step.
// Conventions, checks and shared helpers: common.h.
#include "common.h"

namespace gradwise::optim {
namespace {

template <typename T>
T absmax_range(const T* __restrict__ g, int64_t lo, int64_t hi) {
  T a = 0;
#pragma omp simd reduction(max : a)
  for (int64_t j = lo; j < hi; ++j) a = std::max(a, std::abs(g[j]));
  return a;
}

// summed in double: a float32 gradient's squares overflow past |g| ~ 1.8e19 (its norm does not)
template <typename T>
std::array<double, 1> clipped_sq_range(const T* __restrict__ g, int64_t lo, int64_t hi, T hat, T ratio) {
  double a = 0;
#pragma omp simd reduction(+ : a)
  for (int64_t j = lo; j < hi; ++j) {
    const double gj = std::abs(g[j]) > hat ? g[j] * ratio : g[j];
    a += gj * gj;
  }
  return {a};
}

template <typename T, bool AMS>
void stablespam_range(T* __restrict__ p, const T* __restrict__ g, T* __restrict__ m, T* __restrict__ v,
                      T* __restrict__ vmax, int64_t lo, int64_t hi, T hat, T ratio, T factor, T b1, T b2, T eps,
                      T decay, T coef, T q) {
  const T omb1 = 1 - b1, omb2 = 1 - b2;
  for (int64_t j = lo; j < hi; ++j) {
    const T gj = (std::abs(g[j]) > hat ? g[j] * ratio : g[j]) * factor;
    const T mj = m[j] * b1 + omb1 * gj;
    T vj = v[j] * b2 + (omb2 * gj) * gj;
    m[j] = mj;
    v[j] = vj;
    if (AMS) {
      vj = std::max(vmax[j], vj);
      vmax[j] = vj;
    }
    p[j] = p[j] * decay + coef * (mj / (std::sqrt(vj) / q + eps));
  }
}

// The AdaClip/AdaGN statistics (0-dim CPU tensors of the parameter dtype) are
// read and written: m_max_t, m_norm_t, v_norm_t. k[i] is the tensor's step for
// those statistics, kb[i] the step of Adam's bias correction.
void stablespam_(at::TensorList p, at::TensorList g, at::TensorList m, at::TensorList v, at::TensorList vmax,
                 at::TensorList m_max, at::TensorList m_norm, at::TensorList v_norm, c10::ArrayRef<double> k,
                 c10::ArrayRef<double> kb, double lr, double b1s, double b2, double eps, double g1s, double g2,
                 double g3, double decay) {
  check_params("stablespam_", p, g);
  check_like("stablespam_", "exp_avg", p, m);
  check_like("stablespam_", "exp_avg_sq", p, v);
  check_like("stablespam_", "max_exp_avg_sq", p, vmax, true);
  check_scalar_state("stablespam_", "m_max_t", p, m_max);
  check_scalar_state("stablespam_", "m_norm_t", p, m_norm);
  check_scalar_state("stablespam_", "v_norm_t", p, v_norm);
  check_count("stablespam_", "k", k.size(), p.size());
  check_count("stablespam_", "kb", kb.size(), p.size());
  const bool ams = !vmax.empty();
  for (size_t i = 0; i < p.size(); ++i) {
    AT_DISPATCH_FLOATING_TYPES(p[i].scalar_type(), "stablespam_", [&] {
      using T = scalar_t;
      Work P(p[i], true), G(g[i], false), M(m[i], true), V(v[i], true), VM(ams ? vmax[i] : v[i], ams);
      T *pp = P.ptr<T>(), *mp = M.ptr<T>(), *vp = V.ptr<T>(), *vmp = VM.ptr<T>();
      const T* gp = G.ptr<T>();
      const int64_t n = P.t.numel();
      // AdaClip: EMA of max |g|
      const T gmax = chunked_max<T>(n, [=](int64_t lo, int64_t hi) { return absmax_range<T>(gp, lo, hi); });
      T* mm = m_max[i].data_ptr<T>();
      T* mn = m_norm[i].data_ptr<T>();
      T* vn = v_norm[i].data_ptr<T>();
      const T K = k[i], G3 = g3;
      const T mmax = G3 * mm[0] + (1 - G3) * gmax;
      const T hat = mmax / (1 - std::pow(G3, K));
      const T ratio = hat / gmax;
      // AdaGN: EMAs of the clipped gradient's norm
      const double sq = chunked_sum<double, 1>(n, [=](int64_t lo, int64_t hi) {
        return clipped_sq_range<T>(gp, lo, hi, hat, ratio); })[0];
      const T norm = static_cast<T>(std::sqrt(sq));
      const T G1 = g1s, G2 = g2, E = eps;
      const T mnorm = G1 * mn[0] + (1 - G1) * norm;
      const T vnorm = G2 * vn[0] + (1 - G2) * norm * norm;
      const T cnorm = (mnorm / (1 - std::pow(G1, K))) / (std::sqrt(vnorm / (1 - std::pow(G2, K))) + E);
      const T factor = norm > 0 ? cnorm / norm : T(1);
      mm[0] = mmax;
      mn[0] = mnorm;
      vn[0] = vnorm;
      // Adam on the clipped, rescaled gradient
      const T B1 = b1s, B2 = b2, D = decay, KB = kb[i];
      const T Q = std::sqrt(1 - std::pow(B2, KB));
      const T C = -static_cast<T>(lr) / (1 - std::pow(B1, KB));
      at::parallel_for(0, n, kGrain, [=](int64_t lo, int64_t hi) {
        if (ams) stablespam_range<T, true>(pp, gp, mp, vp, vmp, lo, hi, hat, ratio, factor, B1, B2, E, D, C, Q);
        else stablespam_range<T, false>(pp, gp, mp, vp, vmp, lo, hi, hat, ratio, factor, B1, B2, E, D, C, Q);
      });
    });
  }
}

}  // namespace
}  // namespace gradwise::optim

TORCH_LIBRARY_FRAGMENT(gradwise_fused, m) {
  m.def("stablespam_(Tensor(a!)[] p, Tensor[] g, Tensor(b!)[] m, Tensor(c!)[] v, Tensor(d!)[] vmax, "
        "Tensor(e!)[] m_max, Tensor(f!)[] m_norm, Tensor(g!)[] v_norm, float[] k, float[] kb, float lr, float b1s, "
        "float b2, float eps, float g1s, float g2, float g3, float decay) -> ()");
}

TORCH_LIBRARY_IMPL(gradwise_fused, CPU, m) {
  m.impl("stablespam_", &gradwise::optim::stablespam_);
}
