// PowerNorm (gradwise.nn.PowerNorm): training forward, the approximate backward and the eval forward, on
// x of shape (T, B, C) seen as N = T*B contiguous rows of C channels in G groups of cg = C / G.
//
//   r      = (mean_{group} x^2 + 1e-5)^-1/2 per row and group        xs = x r
//   var_c  = sum_{valid rows} xs_c^2 / #valid, running_phi_c if none (pad_mask: (B, T), True at padding)
//   s      = rsqrt((iters <= warmup ? var : running_phi) + eps)        y = bias + xs (s weight)
//   backward (k = 1 - alpha_bkw, sv = rsqrt(var + eps), ema = ema_gz before this step):
//   u      = gy weight sv - xs k ema s sv                            gx = r (u - xs mean_{group}(u xs))
//   grad_w = s sum gy xs,  grad_b = sum gy,   ema_gz += (weight grad_w - k ema s^2 sum_all xs^2) / N
//
// Passes over the (N, C) data: forward reads x twice during warm-up (the statistic must be complete before
// y is written), once after it (y is written in the statistic's pass); the backward reads x and gy once,
// as everything it needs per row is known before it starts. The warm-up switch reads iters here, so
// Python never syncs on it. Shared helpers: common.h.
#include "common.h"

namespace gradwise::nn {
namespace {

// the authors' group scaling uses eps 1e-5 whatever the layer's eps
constexpr double kGroupEps = 1e-5;

template <typename T>
inline T sum_squares(const T* __restrict__ x, int64_t n) {
  T s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t k = 0; k < n; ++k) s += x[k] * x[k];
  return s;
}

using Three = std::tuple<at::Tensor, at::Tensor, at::Tensor>;

// checks shared by the three operators
void check_input(const char* op, const at::Tensor& x, int64_t groups) {
  TORCH_CHECK(x.defined() && x.dim() == 3, op, ": x must be (T, B, C), got shape ",
              x.defined() ? x.sizes() : at::IntArrayRef{});
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, op,
              ": x must be float32 or float64, got ", x.scalar_type());
  check_dense(op, "x", x, x.scalar_type());
  const int64_t c = x.size(2);
  TORCH_CHECK(c > 0 && groups >= 1 && c % groups == 0, op, ": groups = ", groups, " must divide C = ", c);
}

// The forward's work on raw pointers (pragmas cannot sit inside the dispatch macro's lambda).
template <typename T>
void forward_impl(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, at::Tensor& running_phi,
                const bool* pm, at::Tensor& y, at::Tensor& r, at::Tensor& stats, int64_t it, double eps,
                double alpha_fwd, int64_t warmup_iters, int64_t g_num) {
  const int64_t t_len = x.size(0), b_len = x.size(1), c = x.size(2), n = t_len * b_len, cg = c / g_num;
  const bool masked = pm != nullptr;
  const T *xp = x.data_ptr<T>(), *wp = weight.data_ptr<T>(), *bp = bias.data_ptr<T>();
  T *yp = y.data_ptr<T>(), *rp = r.data_ptr<T>(), *sp = stats.data_ptr<T>(), *phi = running_phi.data_ptr<T>();
  // after warm-up the scale comes from running_phi as it was before this step: y goes out in the first pass
  const bool fused_y = it > warmup_iters;
  std::vector<T> scale(c);
  if (fused_y)
    for (int64_t k = 0; k < c; ++k) scale[k] = T(1) / std::sqrt(phi[k] + T(eps)) * wp[k];

  const int64_t rows = rows_per_block(c), nblocks = std::max<int64_t>(1, (n + rows - 1) / rows);
  const int64_t stride = masked ? 2 * c : c;  // masked: sums over valid rows, then over padded rows
  std::vector<T> slots(nblocks * stride, T(0));
  at::parallel_for(0, nblocks, 1, [&](int64_t lo, int64_t hi) {
    for (int64_t blk = lo; blk < hi; ++blk) {
      T* slot = slots.data() + blk * stride;
      for (int64_t i = blk * rows, end = std::min(n, (blk + 1) * rows); i < end; ++i) {
        // row i is position (t, b) = (i / B, i % B); pad_mask is (B, T)
        const bool pad = masked && pm[(i % b_len) * t_len + i / b_len];
        T* acc = slot + (pad ? c : 0);
        for (int64_t g = 0; g < g_num; ++g) {
          const T* xg = xp + i * c + g * cg;
          const T inv = T(1) / (sum_squares(xg, cg) / T(cg) + T(kGroupEps));
          const T rg = std::sqrt(inv);
          rp[i * g_num + g] = rg;
          T* ag = acc + g * cg;
#pragma omp simd
          for (int64_t k = 0; k < cg; ++k) ag[k] += xg[k] * xg[k] * inv;  // xs^2
          if (fused_y) {
            T* yg = yp + i * c + g * cg;
            const T *bg = bp + g * cg, *sg = scale.data() + g * cg;
#pragma omp simd
            for (int64_t k = 0; k < cg; ++k) yg[k] = bg[k] + xg[k] * rg * sg[k];
          }
        }
      }
    }
  });

  std::vector<double> valid_sum(c), pad_sum(c, 0.0);
  sum_blocks(slots, nblocks, c, stride, 0, valid_sum.data());
  int64_t count = n;
  if (masked) {
    sum_blocks(slots, nblocks, c, stride, c, pad_sum.data());
    count = 0;
    for (int64_t i = 0; i < n; ++i) count += !pm[i];
  }
  const T tc = T(count), ti = T(it), a = T(alpha_fwd), a1 = T(1 - alpha_fwd);
  for (int64_t k = 0; k < c; ++k) {
    // a batch with no valid position has no statistic: it takes running_phi's (which then stays unchanged)
    // instead of the authors' 0 / 0 = nan, which would poison running_phi for good
    const T var = count ? T(valid_sum[k]) / tc : phi[k];
    const T used = it <= warmup_iters ? var : phi[k];
    sp[k] = T(1) / std::sqrt(used + T(eps));
    sp[c + k] = T(1) / std::sqrt(var + T(eps));
    sp[2 * c + k] = T(valid_sum[k] + pad_sum[k]);
    // the authors' running statistic: the cumulative mean of the batch statistics while iters < warm-up,
    // then an EMA step (also after that cumulative step)
    const T cum = it < warmup_iters ? phi[k] * (ti - T(1)) / ti + var / ti : phi[k];
    phi[k] = a * cum + a1 * var;
    scale[k] = sp[k] * wp[k];
  }
  if (!fused_y) {
    at::parallel_for(0, n, std::max<int64_t>(1, 8192 / c), [&](int64_t lo, int64_t hi) {
      for (int64_t i = lo; i < hi; ++i)
        for (int64_t g = 0; g < g_num; ++g) {
          const T* xg = xp + i * c + g * cg;
          T* yg = yp + i * c + g * cg;
          const T *bg = bp + g * cg, *sg = scale.data() + g * cg;
          const T rg = rp[i * g_num + g];
#pragma omp simd
          for (int64_t k = 0; k < cg; ++k) yg[k] = bg[k] + xg[k] * rg * sg[k];
        }
    });
  }
}

// (y, r, stats): stats holds s, rsqrt(var + eps) and the sum over all rows of xs^2, for the backward
Three power_norm_forward(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, at::Tensor& running_phi,
                         const at::Tensor& iters, const std::optional<at::Tensor>& pad_mask, double eps,
                         double alpha_fwd, int64_t warmup_iters, int64_t groups) {
  constexpr const char* op = "power_norm_forward";
  check_input(op, x, groups);
  const int64_t t_len = x.size(0), b_len = x.size(1), c = x.size(2);
  const auto dt = x.scalar_type();
  check_channels(op, "weight", weight, dt, c);
  check_channels(op, "bias", bias, dt, c);
  check_channels(op, "running_phi", running_phi, dt, c);
  check_dense(op, "iters", iters, at::kLong);
  TORCH_CHECK(iters.numel() == 1, op, ": iters must have one element, got shape ", iters.sizes());
  const bool masked = pad_mask.has_value() && pad_mask->defined();
  if (masked) {
    check_dense(op, "pad_mask", *pad_mask, at::kBool);
    TORCH_CHECK(pad_mask->dim() == 2 && pad_mask->size(0) == b_len && pad_mask->size(1) == t_len, op,
                ": pad_mask must be (B, T) = (", b_len, ", ", t_len, "), got shape ", pad_mask->sizes());
  }
  const int64_t n = t_len * b_len, g_num = groups;
  auto y = at::empty_like(x);
  auto r = at::empty({n, g_num}, x.options());
  auto stats = at::empty({3, c}, x.options());
  const int64_t it = iters.data_ptr<int64_t>()[0];
  const bool* pm = masked ? pad_mask->data_ptr<bool>() : nullptr;

  AT_DISPATCH_FLOATING_TYPES(dt, op, [&] {
    forward_impl<scalar_t>(x, weight, bias, running_phi, pm, y, r, stats, it, eps, alpha_fwd, warmup_iters, g_num);
  });
  return {y, r, stats};
}

template <typename T>
void backward_impl(const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& r, const at::Tensor& stats,
                   const at::Tensor& weight, at::Tensor& ema_gz, at::Tensor& gx, at::Tensor& grad_w,
                   at::Tensor& grad_b, double alpha_bkw, int64_t g_num) {
  const int64_t c = x.size(2), n = x.size(0) * x.size(1), cg = c / g_num;
  const T *gyp = grad_y.data_ptr<T>(), *xp = x.data_ptr<T>(), *rp = r.data_ptr<T>();
  const T *s = stats.data_ptr<T>(), *sv = s + c, *sq_all = s + 2 * c, *wp = weight.data_ptr<T>();
  T *gxp = gx.data_ptr<T>(), *ema = ema_gz.data_ptr<T>();
  const T kb = T(1 - alpha_bkw);
  // dL/dxs = gy a - xs cc, with the EMA before this step's update
  std::vector<T> a(c), cc(c);
  for (int64_t k = 0; k < c; ++k) {
    a[k] = wp[k] * sv[k];
    cc[k] = kb * ema[k] * s[k] * sv[k];
  }
  const int64_t rows = rows_per_block(c), nblocks = std::max<int64_t>(1, (n + rows - 1) / rows);
  std::vector<T> slots(nblocks * 2 * c, T(0));  // per block: sum gy xs, then sum gy
  at::parallel_for(0, nblocks, 1, [&](int64_t lo, int64_t hi) {
    for (int64_t blk = lo; blk < hi; ++blk) {
      T* sgx = slots.data() + blk * 2 * c;
      T* sgy = sgx + c;
      for (int64_t i = blk * rows, end = std::min(n, (blk + 1) * rows); i < end; ++i)
        for (int64_t g = 0; g < g_num; ++g) {
          const int64_t off = i * c + g * cg;
          const T *xg = xp + off, *gyg = gyp + off, *ag = a.data() + g * cg, *cg_ = cc.data() + g * cg;
          T* gxg = gxp + off;
          T *s1 = sgx + g * cg, *s0 = sgy + g * cg;
          const T rg = rp[i * g_num + g];
          T m = 0;
#pragma omp simd reduction(+ : m)
          for (int64_t k = 0; k < cg; ++k) {
            const T xs = xg[k] * rg;
            const T u = gyg[k] * ag[k] - xs * cg_[k];
            gxg[k] = u;  // kept until the group's mean is known; the row is still in L1
            m += u * xs;
            s1[k] += gyg[k] * xs;
            s0[k] += gyg[k];
          }
          m /= T(cg);
#pragma omp simd
          for (int64_t k = 0; k < cg; ++k) gxg[k] = rg * (gxg[k] - xg[k] * rg * m);
        }
    }
  });
  std::vector<double> sum_gxs(c), sum_gy(c);
  sum_blocks(slots, nblocks, c, 2 * c, 0, sum_gxs.data());
  sum_blocks(slots, nblocks, c, 2 * c, c, sum_gy.data());
  T *gw = grad_w.data_ptr<T>(), *gb = grad_b.data_ptr<T>();
  const T tn = T(n);
  for (int64_t k = 0; k < c; ++k) {
    gw[k] = s[k] * T(sum_gxs[k]);
    gb[k] = T(sum_gy[k]);
    // ema_gz accumulates the mean over all positions of (g - k ema z) z, g = gy weight, z = xs s
    ema[k] += (wp[k] * gw[k] - kb * ema[k] * s[k] * s[k] * sq_all[k]) / tn;
  }
}

// (dL/dx, dL/dweight, dL/dbias); updates ema_gz
Three power_norm_backward(const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& r, const at::Tensor& stats,
                          const at::Tensor& weight, at::Tensor& ema_gz, double alpha_bkw, int64_t groups) {
  constexpr const char* op = "power_norm_backward";
  check_input(op, x, groups);
  const int64_t t_len = x.size(0), b_len = x.size(1), c = x.size(2);
  const auto dt = x.scalar_type();
  check_dense(op, "grad_y", grad_y, dt);
  TORCH_CHECK(grad_y.sizes() == x.sizes(), op, ": grad_y must have x's shape ", x.sizes(), ", got ",
              grad_y.sizes());
  const int64_t n = t_len * b_len, g_num = groups;
  check_dense(op, "r", r, dt);
  TORCH_CHECK(r.dim() == 2 && r.size(0) == n && r.size(1) == g_num, op, ": r must be (T*B, groups) = (", n, ", ",
              g_num, "), got shape ", r.sizes());
  check_dense(op, "stats", stats, dt);
  TORCH_CHECK(stats.dim() == 2 && stats.size(0) == 3 && stats.size(1) == c, op, ": stats must be (3, C) = (3, ",
              c, "), got shape ", stats.sizes());
  check_channels(op, "weight", weight, dt, c);
  check_channels(op, "ema_gz", ema_gz, dt, c);
  auto gx = at::empty_like(x);
  auto grad_w = at::empty({c}, x.options()), grad_b = at::empty({c}, x.options());

  AT_DISPATCH_FLOATING_TYPES(dt, op, [&] {
    backward_impl<scalar_t>(grad_y, x, r, stats, weight, ema_gz, gx, grad_w, grad_b, alpha_bkw, g_num);
  });
  return {gx, grad_w, grad_b};
}

template <typename T>
void eval_impl(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, const at::Tensor& running_phi,
               at::Tensor& y, double eps, int64_t g_num) {
  const int64_t c = x.size(2), n = x.size(0) * x.size(1), cg = c / g_num;
  const T *xp = x.data_ptr<T>(), *wp = weight.data_ptr<T>(), *bp = bias.data_ptr<T>();
  const T* phi = running_phi.data_ptr<T>();
  T* yp = y.data_ptr<T>();
  std::vector<T> scale(c);
  for (int64_t k = 0; k < c; ++k) scale[k] = T(1) / std::sqrt(phi[k] + T(eps)) * wp[k];
  at::parallel_for(0, n, std::max<int64_t>(1, 8192 / c), [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; ++i)
      for (int64_t g = 0; g < g_num; ++g) {
        const T* xg = xp + i * c + g * cg;
        T* yg = yp + i * c + g * cg;
        const T *bg = bp + g * cg, *sg = scale.data() + g * cg;
        const T rg = T(1) / std::sqrt(sum_squares(xg, cg) / T(cg) + T(kGroupEps));
#pragma omp simd
        for (int64_t k = 0; k < cg; ++k) yg[k] = bg[k] + xg[k] * rg * sg[k];
      }
  });
}

at::Tensor power_norm_eval(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                           const at::Tensor& running_phi, double eps, int64_t groups) {
  constexpr const char* op = "power_norm_eval";
  check_input(op, x, groups);
  const int64_t c = x.size(2);
  const auto dt = x.scalar_type();
  check_channels(op, "weight", weight, dt, c);
  check_channels(op, "bias", bias, dt, c);
  check_channels(op, "running_phi", running_phi, dt, c);
  const int64_t g_num = groups;
  auto y = at::empty_like(x);
  AT_DISPATCH_FLOATING_TYPES(dt, op, [&] { eval_impl<scalar_t>(x, weight, bias, running_phi, y, eps, g_num); });
  return y;
}

}  // namespace
}  // namespace gradwise::nn

TORCH_LIBRARY_FRAGMENT(gradwise_nn, m) {
  m.def("power_norm_forward(Tensor x, Tensor weight, Tensor bias, Tensor(a!) running_phi, Tensor iters, "
        "Tensor? pad_mask, float eps, float alpha_fwd, int warmup_iters, int groups) "
        "-> (Tensor, Tensor, Tensor)");
  m.def("power_norm_backward(Tensor grad_y, Tensor x, Tensor r, Tensor stats, Tensor weight, Tensor(a!) ema_gz, "
        "float alpha_bkw, int groups) -> (Tensor, Tensor, Tensor)");
  m.def("power_norm_eval(Tensor x, Tensor weight, Tensor bias, Tensor running_phi, float eps, int groups) -> Tensor");
}

TORCH_LIBRARY_IMPL(gradwise_nn, CPU, m) {
  m.impl("power_norm_forward", &gradwise::nn::power_norm_forward);
  m.impl("power_norm_backward", &gradwise::nn::power_norm_backward);
  m.impl("power_norm_eval", &gradwise::nn::power_norm_eval);
}
