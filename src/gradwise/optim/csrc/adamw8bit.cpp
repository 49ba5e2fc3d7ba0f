// AdamW on 8-bit block-wise state (state_bits=8): dequantize, update, quantize in one pass per block.
// Conventions, checks and shared helpers: common.h. The storage format and its rounding rule are those
// of gradwise/optim/quantization.py (bitsandbytes' CPU rule): this kernel gives the same codes for the
// same float32 moments.
#include "common.h"

#include <cstdint>
#include <cstring>

// No contraction of a*b+c into fma in this file (g++ contracts by default, even with -std=c++17): the
// update must round as torch's _foreach_ ops do on this CPU, so the fma's below are written out where
// torch's vectorized kernels use one (lerp, addcmul) and nowhere else. Placed after the includes, so
// only this file's functions are affected.
#pragma GCC optimize("fp-contract=off")

namespace gradwise::optim {
namespace {

constexpr int64_t kMapSize = 256;     // values of a dynamic map (uint8 codes)
constexpr int64_t kGridSize = 65536;  // points of [-1, 1] a normalized value is rounded to

// One 8-bit state of one tensor: codes (one per entry), one absmax per block, its map and table.
struct Q8 {
  uint8_t* codes = nullptr;
  float* absmax = nullptr;
  const float* map = nullptr;
  const uint8_t* lut = nullptr;
};

// bit pattern of a float, and back (memcpy: the defined way, compiled to nothing)
inline uint32_t bits_of(float x) {
  uint32_t b;
  std::memcpy(&b, &x, sizeof b);
  return b;
}

inline float float_of(uint32_t b) {
  float x;
  std::memcpy(&x, &b, sizeof x);
  return x;
}

// |x| as its bit pattern, with NaN as 0: for non-negative floats the integer order of the patterns is
// their order (NaN patterns lie above infinity's), so a block's absmax is an integer max, which vectorizes
// where a float max that ignores NaN does not (without -ffast-math).
inline uint32_t abs_bits(float x) {
  const uint32_t b = bits_of(x) & 0x7fffffffu;
  return b & (0u - static_cast<uint32_t>(b <= 0x7f800000u));  // a mask, not a select: g++ vectorizes it
}

// Codes of one block from its float32 values x[0, n) and absmax a (the largest |x|, NaN not counted), as
// quantize_with_lut: v = clamp(x * (1/a), -1, 1) in float32; grid index floor(fma((v + 1) / 2, 65535,
// 0.5)) (one rounding, as the reference's exact float64 product and sum rounded once to float32; a NaN
// goes to grid point 0); the code is the table's entry there. The indices are computed in a loop of
// their own (it vectorizes), the table look-up after it. idx: int32 scratch of n entries.
inline void quantize_block(const float* __restrict__ x, int64_t n, float a, uint8_t* __restrict__ codes,
                           const uint8_t* __restrict__ lut, int32_t* __restrict__ idx) {
  if (a == 0.0f) {  // the reference codes an all-zero (or all-NaN) block as 0
    for (int64_t j = 0; j < n; ++j) codes[j] = 0;
    return;
  }
  const float inv = 1.0f / a;
  for (int64_t j = 0; j < n; ++j) {
    float v = x[j] * inv;
    v = v > 1.0f ? 1.0f : v;  // clamp; a NaN stays NaN (its comparisons are false)
    v = v < -1.0f ? -1.0f : v;
    float pos = std::fma((v + 1.0f) * 0.5f, float(kGridSize - 1), 0.5f);
    pos = pos == pos ? pos : 0.0f;
    idx[j] = static_cast<int32_t>(pos);  // pos in [0.5, 65535.5]: truncation is floor
  }
  for (int64_t j = 0; j < n; ++j) codes[j] = lut[idx[j]];
}

template <typename T>
inline T nan_max(T a, T b) {  // torch.maximum: NaN if either is
  return (a > b || a != a) ? a : b;
}

// Blocks [blo, bhi) of one tensor of n entries. The update is adamw_foreach_'s (gradwise/optim/_adam.py)
// as torch's vectorized CPU ops compute it: p * decay; lerp: fma(w, g - m, m), or fma(w - 1, g - m, g)
// when w >= 0.5; v b2, then addcmul: fma(omb2 g, g, v b2); with amsgrad vmax = maximum(vmax, v); then
// addcdiv: p + (coef m) / (sqrt(v) / q + eps). The scalars come rounded to T as torch rounds them.
// bm, bv, bx: float32 scratch of one block (the updated moments, quantized once the block's absmax is
// known); idx: int32 scratch of one block.
template <typename T, bool AMS>
void adamw8bit_blocks(T* __restrict__ p, const T* __restrict__ g, Q8 m, Q8 v, Q8 x, int64_t n, int64_t bs,
                      int64_t blo, int64_t bhi, T w, T b2, T omb2, T eps, T decay, T coef, T q,
                      float* __restrict__ bm, float* __restrict__ bv, float* __restrict__ bx,
                      int32_t* __restrict__ idx) {
  const bool small_w = std::abs(w) < T(0.5);
  const T w1 = w - T(1);
  for (int64_t b = blo; b < bhi; ++b) {
    const int64_t lo = b * bs, len = std::min(n, lo + bs) - lo;
    const float am = m.absmax[b], av = v.absmax[b], ax = AMS ? x.absmax[b] : 0.0f;
    uint32_t nm = 0, nv = 0, nx = 0;  // the new absmax of each, as abs_bits
    const uint8_t* __restrict__ mc = m.codes + lo;
    const uint8_t* __restrict__ vc = v.codes + lo;
    const uint8_t* __restrict__ xc = AMS ? x.codes + lo : nullptr;
    T* __restrict__ pp = p + lo;
    const T* __restrict__ gp = g + lo;
    for (int64_t j = 0; j < len; ++j) {
      const T gj = gp[j];
      // dequantized as the reference: Q[code] * absmax in float32, then in the parameter's dtype
      T mj = static_cast<T>(m.map[mc[j]] * am);
      T vj = static_cast<T>(v.map[vc[j]] * av);
      mj = small_w ? std::fma(w, gj - mj, mj) : std::fma(w1, gj - mj, gj);
      vj = std::fma(omb2 * gj, gj, vj * b2);
      T dv = vj;
      if (AMS) {
        dv = nan_max(static_cast<T>(x.map[xc[j]] * ax), vj);
        bx[j] = static_cast<float>(dv);
        const uint32_t ax_j = abs_bits(bx[j]);
        nx = ax_j > nx ? ax_j : nx;
      }
      const T pj = pp[j] * decay;
      pp[j] = pj + (coef * mj) / (std::sqrt(dv) / q + eps);
      bm[j] = static_cast<float>(mj);
      bv[j] = static_cast<float>(vj);
      const uint32_t am_j = abs_bits(bm[j]), av_j = abs_bits(bv[j]);
      nm = am_j > nm ? am_j : nm;
      nv = av_j > nv ? av_j : nv;
    }
    m.absmax[b] = float_of(nm);
    v.absmax[b] = float_of(nv);
    quantize_block(bm, len, m.absmax[b], m.codes + lo, m.lut, idx);
    quantize_block(bv, len, v.absmax[b], v.codes + lo, v.lut, idx);
    if (AMS) {
      x.absmax[b] = float_of(nx);
      quantize_block(bx, len, x.absmax[b], x.codes + lo, x.lut, idx);
    }
  }
}

// The checks of one 8-bit state list: uint8 codes of each parameter's shape and float32 absmax of one
// entry per block, both dense contiguous CPU tensors (the kernel writes them through raw pointers).
void check_q8(const char* name, const char* what, at::TensorList p, at::TensorList codes, at::TensorList absmax,
              int64_t bs, bool optional = false) {
  if (optional && codes.empty() && absmax.empty()) return;
  TORCH_CHECK(codes.size() == p.size() && absmax.size() == p.size(), name, ": ", codes.size(), " ", what,
              " code tensors and ", absmax.size(), " absmax tensors for ", p.size(), " parameters");
  for (size_t i = 0; i < p.size(); ++i) {
    const at::Tensor &c = codes[i], &a = absmax[i];
    TORCH_CHECK(c.defined() && c.device().is_cpu() && c.layout() == at::kStrided && c.scalar_type() == at::kByte,
                name, ": ", what, " codes ", i, " must be a dense uint8 CPU tensor");
    TORCH_CHECK(c.sizes() == p[i].sizes(), name, ": ", what, " codes ", i, " have shape ", c.sizes(),
                " but their parameter has shape ", p[i].sizes());
    TORCH_CHECK(c.is_contiguous(), name, ": ", what, " codes ", i, " must be contiguous");
    const int64_t blocks = (p[i].numel() + bs - 1) / bs;
    TORCH_CHECK(a.defined() && a.device().is_cpu() && a.layout() == at::kStrided && a.scalar_type() == at::kFloat &&
                    a.dim() == 1 && a.is_contiguous(),
                name, ": ", what, " absmax ", i, " must be a contiguous 1-D float32 CPU tensor");
    TORCH_CHECK(a.numel() == blocks, name, ": ", what, " absmax ", i, " has ", a.numel(), " entries but its ",
                p[i].numel(), "-entry parameter has ", blocks, " blocks of ", bs);
  }
}

void check_table(const char* name, const char* what, const at::Tensor& t, at::ScalarType dtype, int64_t size) {
  TORCH_CHECK(t.defined() && t.device().is_cpu() && t.layout() == at::kStrided && t.scalar_type() == dtype &&
                  t.dim() == 1 && t.numel() == size && t.is_contiguous(),
              name, ": ", what, " must be a contiguous 1-D ", dtype, " CPU tensor of ", size, " entries");
}

void adamw_8bit_(at::TensorList p, at::TensorList g, at::TensorList m_codes, at::TensorList m_absmax,
                 at::TensorList v_codes, at::TensorList v_absmax, at::TensorList vmax_codes,
                 at::TensorList vmax_absmax, const at::Tensor& signed_map, const at::Tensor& signed_lut,
                 const at::Tensor& unsigned_map, const at::Tensor& unsigned_lut, c10::ArrayRef<double> coef,
                 c10::ArrayRef<double> bc2_sqrt, double b1, double b2, double eps, double decay,
                 int64_t block_size) {
  static constexpr const char name[] = "adamw_8bit_";
  TORCH_CHECK(block_size >= 1, name, ": block_size is ", block_size, " (accepted: >= 1)");
  check_params(name, p, g);
  check_q8(name, "exp_avg", p, m_codes, m_absmax, block_size);
  check_q8(name, "exp_avg_sq", p, v_codes, v_absmax, block_size);
  check_q8(name, "max_exp_avg_sq", p, vmax_codes, vmax_absmax, block_size, true);
  check_table(name, "signed_map", signed_map, at::kFloat, kMapSize);
  check_table(name, "unsigned_map", unsigned_map, at::kFloat, kMapSize);
  check_table(name, "signed_lut", signed_lut, at::kByte, kGridSize);
  check_table(name, "unsigned_lut", unsigned_lut, at::kByte, kGridSize);
  check_count(name, "coef", coef.size(), p.size());
  check_count(name, "bc2_sqrt", bc2_sqrt.size(), p.size());
  const bool ams = !vmax_codes.empty();
  const float* smap = signed_map.data_ptr<float>();
  const float* umap = unsigned_map.data_ptr<float>();
  const uint8_t* slut = signed_lut.data_ptr<uint8_t>();
  const uint8_t* ulut = unsigned_lut.data_ptr<uint8_t>();
  // blocks per task: about kGrain entries, so small blocks are not scheduled one by one
  const int64_t grain = std::max<int64_t>(1, kGrain / block_size);
  for (size_t i = 0; i < p.size(); ++i) {
    AT_DISPATCH_FLOATING_TYPES(p[i].scalar_type(), name, [&] {
      using T = scalar_t;
      Work P(p[i], true), G(g[i], false);
      T* pp = P.ptr<T>();
      const T* gp = G.ptr<T>();
      const int64_t n = P.t.numel(), bs = block_size, blocks = (n + bs - 1) / bs;
      Q8 M{m_codes[i].data_ptr<uint8_t>(), m_absmax[i].data_ptr<float>(), smap, slut};
      Q8 V{v_codes[i].data_ptr<uint8_t>(), v_absmax[i].data_ptr<float>(), umap, ulut};
      Q8 X;
      if (ams) X = Q8{vmax_codes[i].data_ptr<uint8_t>(), vmax_absmax[i].data_ptr<float>(), umap, ulut};
      // each scalar rounded to T as torch rounds a Python number given to an op on a T tensor
      const T W = static_cast<T>(1.0 - b1), B2 = static_cast<T>(b2), OMB2 = static_cast<T>(1.0 - b2);
      const T E = static_cast<T>(eps), D = static_cast<T>(decay), C = static_cast<T>(coef[i]);
      const T Q = static_cast<T>(bc2_sqrt[i]);
      at::parallel_for(0, blocks, grain, [=](int64_t blo, int64_t bhi) {
        std::vector<float> scratch((ams ? 3 : 2) * bs);
        std::vector<int32_t> idx(bs);
        float *bm = scratch.data(), *bv = bm + bs, *bx = ams ? bv + bs : nullptr;
        if (ams)
          adamw8bit_blocks<T, true>(pp, gp, M, V, X, n, bs, blo, bhi, W, B2, OMB2, E, D, C, Q, bm, bv, bx, idx.data());
        else
          adamw8bit_blocks<T, false>(pp, gp, M, V, X, n, bs, blo, bhi, W, B2, OMB2, E, D, C, Q, bm, bv, bx, idx.data());
      });
    });
  }
}

}  // namespace
}  // namespace gradwise::optim

TORCH_LIBRARY_FRAGMENT(gradwise_fused, m) {
  m.def("adamw_8bit_(Tensor(a!)[] p, Tensor[] g, Tensor(b!)[] m_codes, Tensor(c!)[] m_absmax, "
        "Tensor(d!)[] v_codes, Tensor(e!)[] v_absmax, Tensor(f!)[] vmax_codes, Tensor(g!)[] vmax_absmax, "
        "Tensor signed_map, Tensor signed_lut, Tensor unsigned_map, Tensor unsigned_lut, float[] coef, "
        "float[] bc2_sqrt, float b1, float b2, float eps, float decay, int block_size) -> ()");
}

TORCH_LIBRARY_IMPL(gradwise_fused, CPU, m) {
  m.impl("adamw_8bit_", &gradwise::optim::adamw_8bit_);
}
