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
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <vector>

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

void check_lists(const char* name, at::TensorList a, at::TensorList b) {
  TORCH_CHECK(a.size() == b.size(), name, ": tensor lists differ in length");
  for (size_t i = 0; i < a.size(); ++i) {
    TORCH_CHECK(a[i].numel() == b[i].numel(), name, ": tensor ", i, " sizes differ");
    TORCH_CHECK(a[i].device().is_cpu() && b[i].device().is_cpu(), name, ": CPU tensors only");
    TORCH_CHECK(a[i].scalar_type() == b[i].scalar_type(), name, ": gradient dtype differs from parameter dtype");
  }
}

// ---------------------------------------------------------------- AdaBelief
// mode: 0 adaptive with bias-corrected denominator, 1 rectified adaptive
// (denominator sqrt(s) + eps), 2 momentum-SGD step, 3 no step.
void adabelief_(at::TensorList p, at::TensorList g, at::TensorList m, at::TensorList s, at::TensorList smax,
                c10::ArrayRef<double> coef, c10::ArrayRef<double> bc2_sqrt, c10::ArrayRef<int64_t> mode,
                double b1, double b2, double eps, double decay, double l2) {
  check_lists("adabelief_", p, g);
  const bool ams = !smax.empty();
  for (size_t i = 0; i < p.size(); ++i) {
    AT_DISPATCH_FLOATING_TYPES(p[i].scalar_type(), "adabelief_", [&] {
      Work P(p[i], true), G(g[i], false), M(m[i], true), S(s[i], true);
      Work SM(ams ? smax[i] : s[i], ams);
      scalar_t *pp = P.ptr<scalar_t>(), *mp = M.ptr<scalar_t>(), *sp = S.ptr<scalar_t>(), *smp = SM.ptr<scalar_t>();
      const scalar_t* gp = G.ptr<scalar_t>();
      const scalar_t B1 = b1, B2 = b2, E = eps, D = decay, L2 = l2, C = coef[i], Q = bc2_sqrt[i];
      const scalar_t omb1 = 1 - b1, omb2 = 1 - b2;
      const int64_t md = mode[i];
      at::parallel_for(0, P.t.numel(), kGrain, [&](int64_t lo, int64_t hi) {
        for (int64_t j = lo; j < hi; ++j) {
          scalar_t gj = gp[j];
          if (L2 != 0) gj = gj + L2 * pp[j];
          scalar_t pj = pp[j] * D;
          scalar_t mj = mp[j] * B1 + omb1 * gj;
          scalar_t r = gj - mj;
          scalar_t sj = sp[j] * B2 + omb2 * (r * r);
          sj = sj + E;
          mp[j] = mj;
          sp[j] = sj;
          scalar_t use = sj;
          if (ams) {
            use = std::max(smp[j], sj);
            smp[j] = use;
          }
          if (md == 0) pj = pj + C * (mj / (std::sqrt(use) / Q + E));
          else if (md == 1) pj = pj + C * (mj / (std::sqrt(sj) + E));
          else if (md == 2) pj = pj + C * mj;
          pp[j] = pj;
        }
      });
    });
  }
}

// ---------------------------------------------------------------- Adam / AdamW
// p <- p * decay + coef * m / (sqrt(v) / bc2_sqrt + eps) with m, v updated from
// g' = (g - pc * w) * pk (pc = pk = 0/1 when there is no ⊥Grad projection).
void adamw_(at::TensorList p, at::TensorList g, at::TensorList m, at::TensorList v, c10::ArrayRef<double> coef,
            c10::ArrayRef<double> bc2_sqrt, c10::ArrayRef<double> proj_c, c10::ArrayRef<double> proj_k,
            double b1, double b2, double eps, double decay) {
  check_lists("adamw_", p, g);
  const bool proj = !proj_c.empty();
  for (size_t i = 0; i < p.size(); ++i) {
    AT_DISPATCH_FLOATING_TYPES(p[i].scalar_type(), "adamw_", [&] {
      Work P(p[i], true), G(g[i], false), M(m[i], true), V(v[i], true);
      scalar_t *pp = P.ptr<scalar_t>(), *mp = M.ptr<scalar_t>(), *vp = V.ptr<scalar_t>();
      const scalar_t* gp = G.ptr<scalar_t>();
      const scalar_t B1 = b1, B2 = b2, E = eps, D = decay, C = coef[i], Q = bc2_sqrt[i];
      const scalar_t PC = proj ? proj_c[i] : 0, PK = proj ? proj_k[i] : 1;
      const scalar_t omb1 = 1 - b1, omb2 = 1 - b2;
      at::parallel_for(0, P.t.numel(), kGrain, [&](int64_t lo, int64_t hi) {
        for (int64_t j = lo; j < hi; ++j) {
          scalar_t gj = gp[j];
          if (proj) gj = (gj - PC * pp[j]) * PK;
          scalar_t mj = mp[j] + omb1 * (gj - mp[j]);  // lerp, as torch.optim.AdamW
          scalar_t vj = vp[j] * B2 + omb2 * (gj * gj);
          mp[j] = mj;
          vp[j] = vj;
          pp[j] = pp[j] * D + C * (mj / (std::sqrt(vj) / Q + E));
        }
      });
    });
  }
}

// Per-tensor sums for ⊥Grad: <w,g>, <w,w>, <g,g>, and with c given, ||g - c w||^2.
at::Tensor perp_stats(at::TensorList w, at::TensorList g, c10::ArrayRef<double> c) {
  check_lists("perp_stats", w, g);
  const bool second = !c.empty();
  auto out = at::zeros({static_cast<int64_t>(w.size()), 3}, at::kDouble);
  double* o = out.data_ptr<double>();
  for (size_t i = 0; i < w.size(); ++i) {
    AT_DISPATCH_FLOATING_TYPES(w[i].scalar_type(), "perp_stats", [&] {
      Work W(w[i], false), G(g[i], false);
      const scalar_t *wp = W.ptr<scalar_t>(), *gp = G.ptr<scalar_t>();
      const int64_t n = W.t.numel();
      const scalar_t ci = second ? static_cast<scalar_t>(c[i]) : 0;
      // fixed chunking so the result does not depend on the thread count
      const int64_t chunks = std::max<int64_t>(1, (n + kGrain - 1) / kGrain);
      std::vector<scalar_t> acc(3 * chunks, 0);
      at::parallel_for(0, chunks, 1, [&](int64_t lo, int64_t hi) {
        for (int64_t k = lo; k < hi; ++k) {
          scalar_t a = 0, b = 0, d = 0;
          for (int64_t j = k * kGrain; j < std::min(n, (k + 1) * kGrain); ++j) {
            if (second) {
              scalar_t r = gp[j] - ci * wp[j];
              a += r * r;
            } else {
              a += wp[j] * gp[j];
              b += wp[j] * wp[j];
              d += gp[j] * gp[j];
            }
          }
          acc[3 * k] = a; acc[3 * k + 1] = b; acc[3 * k + 2] = d;
        }
      });
      for (int64_t k = 0; k < chunks; ++k)
        for (int q = 0; q < 3; ++q) o[3 * i + q] += static_cast<double>(acc[3 * k + q]);
    });
  }
  return out;
}

// ---------------------------------------------------------------- DiffGrad
void diffgrad_(at::TensorList p, at::TensorList g, at::TensorList m, at::TensorList v, at::TensorList prev,
               c10::ArrayRef<double> coef, double b1, double b2, double eps, double l2) {
  check_lists("diffgrad_", p, g);
  for (size_t i = 0; i < p.size(); ++i) {
    AT_DISPATCH_FLOATING_TYPES(p[i].scalar_type(), "diffgrad_", [&] {
      Work P(p[i], true), G(g[i], false), M(m[i], true), V(v[i], true), R(prev[i], true);
      scalar_t *pp = P.ptr<scalar_t>(), *mp = M.ptr<scalar_t>(), *vp = V.ptr<scalar_t>(), *rp = R.ptr<scalar_t>();
      const scalar_t* gp = G.ptr<scalar_t>();
      const scalar_t B1 = b1, B2 = b2, E = eps, L2 = l2, C = coef[i], omb1 = 1 - b1, omb2 = 1 - b2;
      at::parallel_for(0, P.t.numel(), kGrain, [&](int64_t lo, int64_t hi) {
        for (int64_t j = lo; j < hi; ++j) {
          scalar_t gj = gp[j];
          if (L2 != 0) gj = gj + L2 * pp[j];
          scalar_t mj = mp[j] * B1 + omb1 * gj;
          scalar_t vj = vp[j] * B2 + omb2 * (gj * gj);
          scalar_t fric = 1 / (1 + std::exp(-std::abs(rp[j] - gj)));
          mp[j] = mj; vp[j] = vj; rp[j] = gj;
          pp[j] = pp[j] + C * ((fric * mj) / (std::sqrt(vj) + E));
        }
      });
    });
  }
}

// ---------------------------------------------------------------- Lion (K = l1)
void lion_(at::TensorList p, at::TensorList g, at::TensorList m, double lr, double b1, double b2, double decay) {
  check_lists("lion_", p, g);
  for (size_t i = 0; i < p.size(); ++i) {
    AT_DISPATCH_FLOATING_TYPES(p[i].scalar_type(), "lion_", [&] {
      Work P(p[i], true), G(g[i], false), M(m[i], true);
      scalar_t *pp = P.ptr<scalar_t>(), *mp = M.ptr<scalar_t>();
      const scalar_t* gp = G.ptr<scalar_t>();
      const scalar_t B1 = b1, B2 = b2, LR = lr, D = decay, omb1 = 1 - b1, omb2 = 1 - b2;
      at::parallel_for(0, P.t.numel(), kGrain, [&](int64_t lo, int64_t hi) {
        for (int64_t j = lo; j < hi; ++j) {
          scalar_t c = mp[j] * B1 + omb1 * gp[j];
          pp[j] = pp[j] * D - LR * sgn(c);
          mp[j] = mp[j] * B2 + omb2 * gp[j];
        }
      });
    });
  }
}

// ---------------------------------------------------------------- SPAM
void spam_(at::TensorList p, at::TensorList g, at::TensorList m, at::TensorList v, c10::ArrayRef<double> coef,
           double b1, double b2, double eps, double threshold, bool reset, double decay_after) {
  check_lists("spam_", p, g);
  for (size_t i = 0; i < p.size(); ++i) {
    AT_DISPATCH_FLOATING_TYPES(p[i].scalar_type(), "spam_", [&] {
      Work P(p[i], true), G(g[i], false), M(m[i], true), V(v[i], true);
      scalar_t *pp = P.ptr<scalar_t>(), *mp = M.ptr<scalar_t>(), *vp = V.ptr<scalar_t>();
      const scalar_t* gp = G.ptr<scalar_t>();
      const scalar_t B1 = b1, B2 = b2, E = eps, TH = threshold, C = coef[i], D = decay_after;
      const scalar_t omb1 = 1 - b1, omb2 = 1 - b2;
      at::parallel_for(0, P.t.numel(), kGrain, [&](int64_t lo, int64_t hi) {
        for (int64_t j = lo; j < hi; ++j) {
          scalar_t mj = reset ? 0 : mp[j], vj = reset ? 0 : vp[j], gj = gp[j];
          if (TH != 0) {
            scalar_t lim = vj * TH;
            if (gj * gj > lim) gj = sgn(gj) * std::sqrt(lim);
          }
          mj = mj * B1 + omb1 * gj;
          vj = vj * B2 + omb2 * (gj * gj);
          mp[j] = mj; vp[j] = vj;
          scalar_t pj = pp[j] + C * (mj / (std::sqrt(vj) + E));
          pp[j] = pj * D;
        }
      });
    });
  }
}

// ---------------------------------------------------------------- StableSPAM
// stats (per tensor, CPU scalars of the parameter dtype) are read and written:
// m_max_t, m_norm_t, v_norm_t. k[i] is the tensor's step for the clipping and
// norm statistics, kb[i] the step used by Adam's bias correction.
void stablespam_(at::TensorList p, at::TensorList g, at::TensorList m, at::TensorList v, at::TensorList vmax,
                 at::TensorList m_max, at::TensorList m_norm, at::TensorList v_norm, c10::ArrayRef<double> k,
                 c10::ArrayRef<double> kb, double lr, double b1s, double b2, double eps, double g1s, double g2,
                 double g3, double decay) {
  check_lists("stablespam_", p, g);
  const bool ams = !vmax.empty();
  for (size_t i = 0; i < p.size(); ++i) {
    AT_DISPATCH_FLOATING_TYPES(p[i].scalar_type(), "stablespam_", [&] {
      Work P(p[i], true), G(g[i], false), M(m[i], true), V(v[i], true), VM(ams ? vmax[i] : v[i], ams);
      scalar_t *pp = P.ptr<scalar_t>(), *mp = M.ptr<scalar_t>(), *vp = V.ptr<scalar_t>(), *vmp = VM.ptr<scalar_t>();
      const scalar_t* gp = G.ptr<scalar_t>();
      const int64_t n = P.t.numel();
      // pass 1: max |g|
      scalar_t gmax = 0;
      for (int64_t j = 0; j < n; ++j) gmax = std::max(gmax, std::abs(gp[j]));
      scalar_t* mm = m_max[i].data_ptr<scalar_t>();
      scalar_t* mn = m_norm[i].data_ptr<scalar_t>();
      scalar_t* vn = v_norm[i].data_ptr<scalar_t>();
      const scalar_t K = k[i];
      const scalar_t mmax = static_cast<scalar_t>(g3) * mm[0] + static_cast<scalar_t>(1 - g3) * gmax;
      const scalar_t hat = mmax / (1 - std::pow(static_cast<scalar_t>(g3), K));
      const scalar_t ratio = hat / gmax;
      // pass 2: squared norm of the clipped gradient (fixed chunking: thread-count independent)
      const int64_t chunks = std::max<int64_t>(1, (n + kGrain - 1) / kGrain);
      std::vector<scalar_t> acc(chunks, 0);
      at::parallel_for(0, chunks, 1, [&](int64_t lo, int64_t hi) {
        for (int64_t c = lo; c < hi; ++c) {
          scalar_t a = 0;
          for (int64_t j = c * kGrain; j < std::min(n, (c + 1) * kGrain); ++j) {
            scalar_t gj = std::abs(gp[j]) > hat ? gp[j] * ratio : gp[j];
            a += gj * gj;
          }
          acc[c] = a;
        }
      });
      scalar_t sq = 0;
      for (auto a : acc) sq += a;
      const scalar_t norm = std::sqrt(sq);
      const scalar_t G1 = g1s, G2 = g2;
      const scalar_t mnorm = G1 * mn[0] + (1 - G1) * norm;
      const scalar_t vnorm = G2 * vn[0] + (1 - G2) * norm * norm;
      const scalar_t cnorm = (mnorm / (1 - std::pow(G1, K))) /
                             (std::sqrt(vnorm / (1 - std::pow(G2, K))) + static_cast<scalar_t>(eps));
      const scalar_t factor = norm > 0 ? cnorm / norm : scalar_t(1);
      mm[0] = mmax; mn[0] = mnorm; vn[0] = vnorm;
      // pass 3: Adam on the clipped, rescaled gradient
      const scalar_t B1 = b1s, B2 = b2, E = eps, D = decay, omb1 = 1 - b1s, omb2 = 1 - b2;
      const scalar_t KB = kb[i];
      const scalar_t Q = std::sqrt(1 - std::pow(B2, KB));
      const scalar_t C = -static_cast<scalar_t>(lr) / (1 - std::pow(B1, KB));
      at::parallel_for(0, n, kGrain, [&](int64_t lo, int64_t hi) {
        for (int64_t j = lo; j < hi; ++j) {
          scalar_t gj = (std::abs(gp[j]) > hat ? gp[j] * ratio : gp[j]) * factor;
          scalar_t mj = mp[j] * B1 + omb1 * gj;
          scalar_t vj = vp[j] * B2 + omb2 * (gj * gj);
          mp[j] = mj; vp[j] = vj;
          if (ams) { vj = std::max(vmp[j], vj); vmp[j] = vj; }
          pp[j] = pp[j] * D + C * (mj / (std::sqrt(vj) / Q + E));
        }
      });
    });
  }
}

// ---------------------------------------------------------------- SGD-SaI
void sgdsai_(at::TensorList p, at::TensorList g, at::TensorList buf, c10::ArrayRef<double> scale,
             c10::ArrayRef<int64_t> fresh, double momentum, double decay) {
  check_lists("sgdsai_", p, g);
  const bool use_buf = !buf.empty();
  for (size_t i = 0; i < p.size(); ++i) {
    AT_DISPATCH_FLOATING_TYPES(p[i].scalar_type(), "sgdsai_", [&] {
      Work P(p[i], true), G(g[i], false), B(use_buf ? buf[i] : g[i], use_buf);
      scalar_t *pp = P.ptr<scalar_t>(), *bp = B.ptr<scalar_t>();
      const scalar_t* gp = G.ptr<scalar_t>();
      const scalar_t MO = momentum, OM = 1 - momentum, S = scale[i], D = decay;
      const bool f = fresh[i] != 0;
      at::parallel_for(0, P.t.numel(), kGrain, [&](int64_t lo, int64_t hi) {
        for (int64_t j = lo; j < hi; ++j) {
          scalar_t b = gp[j];
          if (use_buf) {
            if (!f) b = bp[j] * MO + OM * gp[j];
            bp[j] = b;
          }
          pp[j] = pp[j] * D + b * S;
        }
      });
    });
  }
}

// ---------------------------------------------------------------- AdamP / SGDP
// kind 0: AdamP (state a = exp_avg, b = exp_avg_sq); kind 1: SGDP (a = momentum buffer).
// Per tensor: pass 1 updates the state and gathers per-row <w,g>, |w|^2, |g|^2 and
// <w,u> (u the unprojected update); the projection test is made on those; pass 2
// applies p <- p * (1 - lr_wd * factor) + coef * (u - w * c_row).
template <typename scalar_t>
void radial_kernel(int kind, at::Tensor& pt, const at::Tensor& gt, at::Tensor& at_, at::Tensor* bt, double coef,
                   double bc2_sqrt, double b1, double b2, double eps, double dampening, bool nesterov,
                   double delta, double wd_ratio, double lr_wd) {
  scalar_t* pp = pt.data_ptr<scalar_t>();
  const scalar_t* gp = gt.data_ptr<scalar_t>();
  scalar_t* ap = at_.data_ptr<scalar_t>();
  scalar_t* bp = bt ? bt->data_ptr<scalar_t>() : nullptr;
  const int64_t n = pt.numel();
  const int64_t rows = pt.dim() > 1 ? pt.size(0) : 1;
  const int64_t d = n / std::max<int64_t>(rows, 1);
  const bool project = pt.dim() > 1;
  const scalar_t B1 = b1, B2 = b2, E = eps, Q = bc2_sqrt, omb1 = 1 - b1, omb2 = 1 - b2;
  const scalar_t damp = 1 - dampening;
  auto update = [&](int64_t j, scalar_t gj) -> scalar_t {  // returns u, updates state
    if (kind == 0) {
      scalar_t mj = ap[j] * B1 + omb1 * gj;
      scalar_t vj = bp[j] * B2 + omb2 * (gj * gj);
      ap[j] = mj; bp[j] = vj;
      scalar_t den = std::sqrt(vj) / Q + E;
      scalar_t num = nesterov ? (B1 * mj + omb1 * gj) : mj;
      return num / den;
    }
    scalar_t bj = ap[j] * B1 + damp * gj;  // B1 carries the momentum for SGDP
    ap[j] = bj;
    return nesterov ? gj + B1 * bj : bj;
  };
  auto recompute = [&](int64_t j, scalar_t gj) -> scalar_t {  // u from the updated state
    if (kind == 0) {
      scalar_t den = std::sqrt(bp[j]) / Q + E;
      scalar_t num = nesterov ? (B1 * ap[j] + omb1 * gj) : ap[j];
      return num / den;
    }
    return nesterov ? gj + B1 * ap[j] : ap[j];
  };
  if (!project) {
    const scalar_t D = 1 - static_cast<scalar_t>(lr_wd), C = coef;
    at::parallel_for(0, n, kGrain, [&](int64_t lo, int64_t hi) {
      for (int64_t j = lo; j < hi; ++j) {
        scalar_t u = update(j, gp[j]);
        pp[j] = pp[j] * D + C * u;
      }
    });
    return;
  }
  std::vector<scalar_t> wg(rows), ww(rows), gg(rows), wu(rows);
  at::parallel_for(0, rows, std::max<int64_t>(1, kGrain / std::max<int64_t>(d, 1)), [&](int64_t lo, int64_t hi) {
    for (int64_t r = lo; r < hi; ++r) {
      scalar_t a = 0, b = 0, c = 0, e = 0;
      for (int64_t j = r * d; j < (r + 1) * d; ++j) {
        scalar_t u = update(j, gp[j]);
        a += pp[j] * gp[j]; b += pp[j] * pp[j]; c += gp[j] * gp[j]; e += pp[j] * u;
      }
      wg[r] = a; ww[r] = b; gg[r] = c; wu[r] = e;
    }
  });
  // channel view: max_r |cos| < delta / sqrt(d); layer view: |cos| < delta / sqrt(n)
  scalar_t cmax = 0, swg = 0, sww = 0, sgg = 0, swu = 0;
  for (int64_t r = 0; r < rows; ++r) {
    scalar_t wn = std::max(std::sqrt(ww[r]), E), gn = std::max(std::sqrt(gg[r]), E);
    cmax = std::max(cmax, std::abs(wg[r]) / (wn * gn));
    swg += wg[r]; sww += ww[r]; sgg += gg[r]; swu += wu[r];
  }
  const bool use_c = cmax < static_cast<scalar_t>(delta / std::sqrt(static_cast<double>(d)));
  const scalar_t cl = std::abs(swg) / (std::max(std::sqrt(sww), E) * std::max(std::sqrt(sgg), E));
  const bool use_l = !use_c && cl < static_cast<scalar_t>(delta / std::sqrt(static_cast<double>(n)));
  std::vector<scalar_t> crow(rows, 0);
  if (use_c) {
    for (int64_t r = 0; r < rows; ++r) { scalar_t s = std::sqrt(ww[r]) + E; crow[r] = wu[r] / (s * s); }
  } else if (use_l) {
    scalar_t s = std::sqrt(sww) + E;
    std::fill(crow.begin(), crow.end(), swu / (s * s));
  }
  const bool proj = use_c || use_l;
  const scalar_t D = 1 - static_cast<scalar_t>(lr_wd) * static_cast<scalar_t>(proj ? wd_ratio : 1.0);
  const scalar_t C = coef;
  const bool write_buf = kind == 1 && !nesterov && proj;  // SGDP projects its buffer in place
  at::parallel_for(0, rows, std::max<int64_t>(1, kGrain / std::max<int64_t>(d, 1)), [&](int64_t lo, int64_t hi) {
    for (int64_t r = lo; r < hi; ++r) {
      const scalar_t cr = crow[r];
      for (int64_t j = r * d; j < (r + 1) * d; ++j) {
        scalar_t u = recompute(j, gp[j]);
        if (proj) u = u - pp[j] * cr;
        if (write_buf) ap[j] = u;
        pp[j] = pp[j] * D + C * u;
      }
    }
  });
}

void radial_(int64_t kind, at::TensorList p, at::TensorList g, at::TensorList a, at::TensorList b,
             c10::ArrayRef<double> coef, c10::ArrayRef<double> bc2_sqrt, double b1, double b2, double eps,
             double dampening, bool nesterov, double delta, double wd_ratio, double lr_wd) {
  check_lists("radial_", p, g);
  for (size_t i = 0; i < p.size(); ++i) {
    AT_DISPATCH_FLOATING_TYPES(p[i].scalar_type(), "radial_", [&] {
      Work P(p[i], true), G(g[i], false), A(a[i], true);
      at::Tensor bt;
      std::unique_ptr<Work> B;
      if (kind == 0) B = std::make_unique<Work>(b[i], true);
      // the row structure is that of the parameter's shape, on the contiguous copy
      at::Tensor pv = P.t.view(p[i].sizes());
      radial_kernel<scalar_t>(static_cast<int>(kind), pv, G.t, A.t, B ? &B->t : nullptr, coef[i],
                              kind == 0 ? bc2_sqrt[i] : 1.0, b1, b2, eps, dampening, nesterov, delta, wd_ratio, lr_wd);
    });
  }
}

}  // namespace

TORCH_LIBRARY(gradwise_fused, m) {
  m.def("adabelief_(Tensor(a!)[] p, Tensor[] g, Tensor(b!)[] m, Tensor(c!)[] s, Tensor(d!)[] smax, float[] coef, "
        "float[] bc2_sqrt, int[] mode, float b1, float b2, float eps, float decay, float l2) -> ()", &adabelief_);
  m.def("adamw_(Tensor(a!)[] p, Tensor[] g, Tensor(b!)[] m, Tensor(c!)[] v, float[] coef, float[] bc2_sqrt, "
        "float[] proj_c, float[] proj_k, float b1, float b2, float eps, float decay) -> ()", &adamw_);
  m.def("perp_stats(Tensor[] w, Tensor[] g, float[] c) -> Tensor", &perp_stats);
  m.def("diffgrad_(Tensor(a!)[] p, Tensor[] g, Tensor(b!)[] m, Tensor(c!)[] v, Tensor(d!)[] prev, float[] coef, "
        "float b1, float b2, float eps, float l2) -> ()", &diffgrad_);
  m.def("lion_(Tensor(a!)[] p, Tensor[] g, Tensor(b!)[] m, float lr, float b1, float b2, float decay) -> ()", &lion_);
  m.def("spam_(Tensor(a!)[] p, Tensor[] g, Tensor(b!)[] m, Tensor(c!)[] v, float[] coef, float b1, float b2, "
        "float eps, float threshold, bool reset, float decay_after) -> ()", &spam_);
  m.def("stablespam_(Tensor(a!)[] p, Tensor[] g, Tensor(b!)[] m, Tensor(c!)[] v, Tensor(d!)[] vmax, "
        "Tensor(e!)[] m_max, Tensor(f!)[] m_norm, Tensor(g!)[] v_norm, float[] k, float[] kb, float lr, float b1s, "
        "float b2, float eps, float g1s, float g2, float g3, float decay) -> ()", &stablespam_);
  m.def("sgdsai_(Tensor(a!)[] p, Tensor[] g, Tensor(b!)[] buf, float[] scale, int[] fresh, float momentum, "
        "float decay) -> ()", &sgdsai_);
  m.def("radial_(int kind, Tensor(a!)[] p, Tensor[] g, Tensor(b!)[] a, Tensor(c!)[] b, float[] coef, "
        "float[] bc2_sqrt, float b1, float b2, float eps, float dampening, bool nesterov, float delta, "
        "float wd_ratio, float lr_wd) -> ()", &radial_);
}
