// AdamP / SGDP (gradwise.optim.AdamP, SGDP): one radial-projection kernel for both.
// Conventions, checks and shared helpers: common.h.
#include "common.h"

namespace gradwise::optim {
namespace {

// KIND 0: AdamP (a = exp_avg, b = exp_avg_sq); KIND 1: SGDP (a = momentum
// buffer, b1 = momentum). state_update advances the state and returns the
// unprojected update u; update_of recomputes u from the advanced state.
template <typename T, int KIND, bool NEST>
struct Radial {
  T b1, b2, eps, q, damp;
  inline T state_update(T* __restrict__ a, T* __restrict__ b, int64_t j, T gj) const {
    if (KIND == 0) {
      const T mj = a[j] * b1 + (1 - b1) * gj;
      const T vj = b[j] * b2 + (1 - b2) * (gj * gj);
      a[j] = mj;
      b[j] = vj;
      const T num = NEST ? (b1 * mj + (1 - b1) * gj) : mj;
      return num / (std::sqrt(vj) / q + eps);
    }
    const T bj = a[j] * b1 + damp * gj;
    a[j] = bj;
    return NEST ? gj + b1 * bj : bj;
  }
  inline T update_of(const T* __restrict__ a, const T* __restrict__ b, int64_t j, T gj) const {
    if (KIND == 0) {
      const T num = NEST ? (b1 * a[j] + (1 - b1) * gj) : a[j];
      return num / (std::sqrt(b[j]) / q + eps);
    }
    return NEST ? gj + b1 * a[j] : a[j];
  }
};

// pass 1 over one row: advance the state, gather <w,g>, |w|^2, |g|^2, <w,u>, in double: float32
// products and sums overflow for gradients past ~1.8e19 (the cosines they give do not)
template <typename T, int KIND, bool NEST>
std::array<double, 4> radial_stats_row(Radial<T, KIND, NEST> R, const T* __restrict__ p, const T* __restrict__ g,
                                       T* __restrict__ a, T* __restrict__ b, int64_t lo, int64_t hi) {
  double wg = 0, ww = 0, gg = 0, wu = 0;
#pragma omp simd reduction(+ : wg, ww, gg, wu)
  for (int64_t j = lo; j < hi; ++j) {
    const double u = R.state_update(a, b, j, g[j]);
    const double pj = p[j], gj = g[j];
    wg += pj * gj;
    ww += pj * pj;
    gg += gj * gj;
    wu += pj * u;
  }
  return {wg, ww, gg, wu};
}

// pass 2 over one row: p <- p * decay + coef * (u - w * c); SGDP without
// Nesterov also stores the projected update in its buffer (WRITE).
template <typename T, int KIND, bool NEST, bool PROJ, bool WRITE>
void radial_apply_row(Radial<T, KIND, NEST> R, T* __restrict__ p, const T* __restrict__ g, T* __restrict__ a,
                      const T* __restrict__ b, int64_t lo, int64_t hi, T c, T decay, T coef) {
  for (int64_t j = lo; j < hi; ++j) {
    T u = R.update_of(a, b, j, g[j]);
    if (PROJ) u = u - p[j] * c;
    if (WRITE) a[j] = u;
    p[j] = p[j] * decay + coef * u;
  }
}

template <typename T, int KIND, bool NEST>
void radial_plain_range(Radial<T, KIND, NEST> R, T* __restrict__ p, const T* __restrict__ g, T* __restrict__ a,
                        T* __restrict__ b, int64_t lo, int64_t hi, T decay, T coef) {
  for (int64_t j = lo; j < hi; ++j) {
    const T u = R.state_update(a, b, j, g[j]);
    p[j] = p[j] * decay + coef * u;
  }
}

template <typename T, int KIND, bool NEST>
void radial_tensor(Radial<T, KIND, NEST> R, at::IntArrayRef shape, T* p, const T* g, T* a, T* b, T coef,
                   double delta, double wd_ratio, double lr_wd) {
  int64_t n = 1;
  for (auto s : shape) n *= s;
  if (shape.size() <= 1 || n == 0) {  // vectors, and empty tensors, are never projected
    const T D = 1 - static_cast<T>(lr_wd), C = coef;
    at::parallel_for(0, n, kGrain, [=](int64_t lo, int64_t hi) {
      radial_plain_range<T, KIND, NEST>(R, p, g, a, b, lo, hi, D, C);
    });
    return;
  }
  const int64_t rows = shape[0], d = rows > 0 ? n / rows : 0;
  const int64_t row_grain = std::max<int64_t>(1, kGrain / std::max<int64_t>(d, 1));
  std::vector<std::array<double, 4>> st(rows);
  at::parallel_for(0, rows, row_grain, [&](int64_t lo, int64_t hi) {
    for (int64_t r = lo; r < hi; ++r) st[r] = radial_stats_row<T, KIND, NEST>(R, p, g, a, b, r * d, (r + 1) * d);
  });
  // channel view: max_r |cos| < delta / sqrt(d); else layer view: |cos| < delta / sqrt(n)
  const double E = R.eps;
  double cmax = 0, swg = 0, sww = 0, sgg = 0, swu = 0;
  for (int64_t r = 0; r < rows; ++r) {
    const double wn = std::max(std::sqrt(st[r][1]), E), gn = std::max(std::sqrt(st[r][2]), E);
    cmax = std::max(cmax, std::abs(st[r][0]) / (wn * gn));
    swg += st[r][0]; sww += st[r][1]; sgg += st[r][2]; swu += st[r][3];
  }
  const bool use_c = cmax < delta / std::sqrt(static_cast<double>(d));
  const double cl = std::abs(swg) / (std::max(std::sqrt(sww), E) * std::max(std::sqrt(sgg), E));
  const bool use_l = !use_c && cl < delta / std::sqrt(static_cast<double>(n));
  std::vector<T> crow(rows, T(0));
  if (use_c) {
    for (int64_t r = 0; r < rows; ++r) {
      const double s = std::sqrt(st[r][1]) + E;
      crow[r] = static_cast<T>(st[r][3] / (s * s));
    }
  } else if (use_l) {
    const double s = std::sqrt(sww) + E;
    std::fill(crow.begin(), crow.end(), static_cast<T>(swu / (s * s)));
  }
  const bool proj = use_c || use_l;
  const T D = 1 - static_cast<T>(lr_wd) * static_cast<T>(proj ? wd_ratio : 1.0), C = coef;
  const bool write = KIND == 1 && !NEST && proj;  // SGDP projects its buffer in place
  at::parallel_for(0, rows, row_grain, [&](int64_t lo, int64_t hi) {
    for (int64_t r = lo; r < hi; ++r) {
      if (!proj) radial_apply_row<T, KIND, NEST, false, false>(R, p, g, a, b, r * d, (r + 1) * d, crow[r], D, C);
      else if (write) radial_apply_row<T, KIND, NEST, true, true>(R, p, g, a, b, r * d, (r + 1) * d, crow[r], D, C);
      else radial_apply_row<T, KIND, NEST, true, false>(R, p, g, a, b, r * d, (r + 1) * d, crow[r], D, C);
    }
  });
}

void radial_(int64_t kind, at::TensorList p, at::TensorList g, at::TensorList a, at::TensorList b,
             c10::ArrayRef<double> coef, c10::ArrayRef<double> bc2_sqrt, double b1, double b2, double eps,
             double dampening, bool nesterov, double delta, double wd_ratio, double lr_wd) {
  TORCH_CHECK(kind == 0 || kind == 1, "radial_: kind must be 0 (AdamP) or 1 (SGDP), got ", kind);
  check_params("radial_", p, g);
  check_like("radial_", kind == 0 ? "exp_avg" : "momentum", p, a);
  if (kind == 0) check_like("radial_", "exp_avg_sq", p, b);
  check_count("radial_", "coef", coef.size(), p.size());
  if (kind == 0) check_count("radial_", "bc2_sqrt", bc2_sqrt.size(), p.size());
  for (size_t i = 0; i < p.size(); ++i) {
    AT_DISPATCH_FLOATING_TYPES(p[i].scalar_type(), "radial_", [&] {
      using T = scalar_t;
      Work P(p[i], true), G(g[i], false), A(a[i], true);
      std::unique_ptr<Work> B;
      if (kind == 0) B = std::make_unique<Work>(b[i], true);
      T *pp = P.ptr<T>(), *ap = A.ptr<T>(), *bp = B ? B->ptr<T>() : nullptr;
      const T* gp = G.ptr<T>();
      const T q = kind == 0 ? static_cast<T>(bc2_sqrt[i]) : T(1), C = coef[i];
      auto shape = p[i].sizes();
      if (kind == 0 && nesterov)
        radial_tensor<T, 0, true>({T(b1), T(b2), T(eps), q, T(1)}, shape, pp, gp, ap, bp, C, delta, wd_ratio, lr_wd);
      else if (kind == 0)
        radial_tensor<T, 0, false>({T(b1), T(b2), T(eps), q, T(1)}, shape, pp, gp, ap, bp, C, delta, wd_ratio, lr_wd);
      else if (nesterov)
        radial_tensor<T, 1, true>({T(b1), T(0), T(eps), q, T(1 - dampening)}, shape, pp, gp, ap, bp, C, delta,
                                  wd_ratio, lr_wd);
      else
        radial_tensor<T, 1, false>({T(b1), T(0), T(eps), q, T(1 - dampening)}, shape, pp, gp, ap, bp, C, delta,
                                   wd_ratio, lr_wd);
    });
  }
}

}  // namespace
}  // namespace gradwise::optim

TORCH_LIBRARY_FRAGMENT(gradwise_fused, m) {
  m.def("radial_(int kind, Tensor(a!)[] p, Tensor[] g, Tensor(b!)[] a, Tensor(c!)[] b, float[] coef, "
        "float[] bc2_sqrt, float b1, float b2, float eps, float dampening, bool nesterov, float delta, "
        "float wd_ratio, float lr_wd) -> ()");
}

TORCH_LIBRARY_IMPL(gradwise_fused, CPU, m) {
  m.impl("radial_", &gradwise::optim::radial_);
}
