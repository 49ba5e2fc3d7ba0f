// Fused CPU kernels for gradwise's optimizers.
//
// Each kernel does, in one or a few passes over memory, what the multi-tensor
// (torch._foreach_*) path of the same optimizer does in 8-15 passes. They are
// an acceleration of that path, not a second definition: the Python side
// computes every per-tensor scalar (bias corrections, step sizes, schedules)
// and tests check both paths against the authors' golden trajectories.
//
// Conventions: tensors are CPU float32/float64; a non-contiguous tensor is
// processed through a contiguous copy (written back if it is an output).
// Arithmetic is done in the tensor's dtype, in the order of the Python path.
// Element loops are free functions over __restrict__ pointers with scalars
// passed by value, so that the compiler can vectorize them.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <memory>
#include <vector>

// glibc's libmvec has vector versions of exp; declaring them lets the loop in
// diffgrad_range vectorize (as math.h does under -ffast-math, which we avoid).
extern "C" {
#pragma omp declare simd notinbranch
double exp(double) noexcept;
#pragma omp declare simd notinbranch
float expf(float) noexcept;
}

namespace {

constexpr int64_t kGrain = 16384;

// A contiguous working view of a tensor; copies back on destruction when it had to copy.
struct Work {
  at::Tensor orig, t;
  bool out;
  Work(const at::Tensor& x, bool is_output) : orig(x), t(x.is_contiguous() ? x : x.contiguous()), out(is_output) {}
  ~Work() {
    if (out && !orig.is_same(t)) orig.copy_(t);
  }
  template <typename T>
  T* ptr() { return t.data_ptr<T>(); }
};

template <typename T>
inline T sgn(T x) { return static_cast<T>((x > T(0)) - (x < T(0))); }

inline float fexp(float x) { return expf(x); }
inline double fexp(double x) { return exp(x); }

// Every kernel checks each tensor and per-tensor scalar it will touch before it writes anything: a
// state tensor of another shape (a parameter resized after its state was made, a load_state_dict of
// other shapes, the same element count in another shape) would otherwise be read or written past its
// end, or silently paired with the wrong elements. The errors are RuntimeErrors, as torch.optim's.
void check_like(const char* name, const char* what, at::TensorList p, at::TensorList t, bool optional = false) {
  if (optional && t.empty()) return;
  TORCH_CHECK(t.size() == p.size(), name, ": ", t.size(), " ", what, " tensors for ", p.size(), " parameters");
  for (size_t i = 0; i < p.size(); ++i) {
    TORCH_CHECK(t[i].defined() && t[i].device().is_cpu() && t[i].layout() == at::kStrided, name, ": ", what, " ",
                i, " must be a dense CPU tensor");
    TORCH_CHECK(t[i].sizes() == p[i].sizes(), name, ": ", what, " ", i, " has shape ", t[i].sizes(),
                " but its parameter has shape ", p[i].sizes());
    TORCH_CHECK(t[i].scalar_type() == p[i].scalar_type(), name, ": ", what, " ", i, " has dtype ",
                t[i].scalar_type(), " but its parameter has dtype ", p[i].scalar_type());
  }
}

void check_params(const char* name, at::TensorList p, at::TensorList g) {
  for (size_t i = 0; i < p.size(); ++i) {
    TORCH_CHECK(p[i].defined() && p[i].device().is_cpu() && p[i].layout() == at::kStrided, name, ": parameter ",
                i, " must be a dense CPU tensor");
    TORCH_CHECK(p[i].scalar_type() == at::kFloat || p[i].scalar_type() == at::kDouble, name, ": parameter ", i,
                " has dtype ", p[i].scalar_type(), " (accepted: float32, float64)");
  }
  check_like(name, "gradient", p, g);
}

// A per-tensor scalar argument list (coefficients, step counts) must have one entry per parameter.
void check_count(const char* name, const char* what, size_t got, size_t n, bool optional = false) {
  TORCH_CHECK(got == n || (optional && got == 0), name, ": ", got, " ", what, " values for ", n, " parameters");
}

// One-element state per parameter (StableSPAM's running norms), read and written at [0].
void check_scalar_state(const char* name, const char* what, at::TensorList p, at::TensorList t) {
  TORCH_CHECK(t.size() == p.size(), name, ": ", t.size(), " ", what, " tensors for ", p.size(), " parameters");
  for (size_t i = 0; i < p.size(); ++i)
    TORCH_CHECK(t[i].defined() && t[i].device().is_cpu() && t[i].layout() == at::kStrided && t[i].numel() == 1 &&
                    t[i].scalar_type() == p[i].scalar_type(),
                name, ": ", what, " ", i, " must be a one-element CPU tensor of its parameter's dtype (got shape ",
                t[i].sizes(), ", dtype ", t[i].scalar_type(), ")");
}

// Sum of f over [0, n) in fixed chunks, so the result does not depend on the
// thread count. Within a chunk the sums are vectorized (omp simd reductions),
// so they are summed in a different order than torch's reductions: equal to
// the last few bits, which is why tests compare to the authors' code with a
// tolerance and this path to itself bit for bit.
template <typename T, int K, typename F>
std::array<T, K> chunked_sum(int64_t n, F f) {
  const int64_t chunks = std::max<int64_t>(1, (n + kGrain - 1) / kGrain);
  std::vector<std::array<T, K>> acc(chunks);
  at::parallel_for(0, chunks, 1, [&](int64_t lo, int64_t hi) {
    for (int64_t c = lo; c < hi; ++c) acc[c] = f(c * kGrain, std::min(n, (c + 1) * kGrain));
  });
  std::array<T, K> out{};
  for (auto& a : acc)
    for (int k = 0; k < K; ++k) out[k] += a[k];
  return out;
}

// Max of f over [0, n) in fixed chunks.
template <typename T, typename F>
T chunked_max(int64_t n, F f) {
  const int64_t chunks = std::max<int64_t>(1, (n + kGrain - 1) / kGrain);
  std::vector<T> acc(chunks, T(0));
  at::parallel_for(0, chunks, 1, [&](int64_t lo, int64_t hi) {
    for (int64_t c = lo; c < hi; ++c) acc[c] = f(c * kGrain, std::min(n, (c + 1) * kGrain));
  });
  return *std::max_element(acc.begin(), acc.end());
}

// ---------------------------------------------------------------- AdaBelief
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

// ---------------------------------------------------------------- Adam / AdamW
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

// ---------------------------------------------------------------- DiffGrad
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

// ---------------------------------------------------------------- Lion (K = l1)
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

// ---------------------------------------------------------------- SPAM
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

// ---------------------------------------------------------------- StableSPAM
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

// ---------------------------------------------------------------- SGD-SaI
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

// ---------------------------------------------------------------- AdamP / SGDP
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

// Schemas (with their mutations) here, CPU kernels below: kept apart so that the fake
// implementations registered from Python serve torch.compile's fake tensors.
TORCH_LIBRARY(gradwise_fused, m) {
  m.def("adabelief_(Tensor(a!)[] p, Tensor[] g, Tensor(b!)[] m, Tensor(c!)[] s, Tensor(d!)[] smax, float[] coef, "
        "float[] bc2_sqrt, int[] modes, float b1, float b2, float eps, float decay, float l2) -> ()");
  m.def("adamw_(Tensor(a!)[] p, Tensor[] g, Tensor(b!)[] m, Tensor(c!)[] v, float[] coef, float[] bc2_sqrt, "
        "float[] proj_c, float[] proj_k, float b1, float b2, float eps, float decay) -> ()");
  m.def("perp_stats(Tensor[] w, Tensor[] g, float[] c) -> Tensor");
  m.def("diffgrad_(Tensor(a!)[] p, Tensor[] g, Tensor(b!)[] m, Tensor(c!)[] v, Tensor(d!)[] prev, float[] coef, "
        "float b1, float b2, float eps, float l2) -> ()");
  m.def("lion_(Tensor(a!)[] p, Tensor[] g, Tensor(b!)[] m, float lr, float b1, float b2, float decay) -> ()");
  m.def("spam_(Tensor(a!)[] p, Tensor[] g, Tensor(b!)[] m, Tensor(c!)[] v, float[] coef, float b1, float b2, "
        "float eps, float threshold, bool reset, float decay_after) -> ()");
  m.def("stablespam_(Tensor(a!)[] p, Tensor[] g, Tensor(b!)[] m, Tensor(c!)[] v, Tensor(d!)[] vmax, "
        "Tensor(e!)[] m_max, Tensor(f!)[] m_norm, Tensor(g!)[] v_norm, float[] k, float[] kb, float lr, float b1s, "
        "float b2, float eps, float g1s, float g2, float g3, float decay) -> ()");
  m.def("sgdsai_(Tensor(a!)[] p, Tensor[] g, Tensor(b!)[] buf, float[] scale, int[] fresh, float momentum, "
        "float decay) -> ()");
  m.def("radial_(int kind, Tensor(a!)[] p, Tensor[] g, Tensor(b!)[] a, Tensor(c!)[] b, float[] coef, "
        "float[] bc2_sqrt, float b1, float b2, float eps, float dampening, bool nesterov, float delta, "
        "float wd_ratio, float lr_wd) -> ()");
}

TORCH_LIBRARY_IMPL(gradwise_fused, CPU, m) {
  m.impl("adabelief_", &adabelief_);
  m.impl("adamw_", &adamw_);
  m.impl("perp_stats", &perp_stats);
  m.impl("diffgrad_", &diffgrad_);
  m.impl("lion_", &lion_);
  m.impl("spam_", &spam_);
  m.impl("stablespam_", &stablespam_);
  m.impl("sgdsai_", &sgdsai_);
  m.impl("radial_", &radial_);
}
