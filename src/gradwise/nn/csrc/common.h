// Shared pieces of the nn layers' fused CPU kernels (their own library, gradwise/nn/_C*.so; see
// gradwise/_kernels.py): one .cpp per kernel group beside this header, each registering its operators in
// the torch.ops.gradwise_nn namespace with TORCH_LIBRARY_FRAGMENT (schemas) and TORCH_LIBRARY_IMPL (CPU
// kernels), kept apart so that the fakes registered from Python (gradwise/nn/_fakes.py) serve torch.compile.
//
// Activations are (rows, C) contiguous. A layer that normalizes per token needs whole rows, so the kernels
// walk rows (a row stays in L1 while its few passes run) and collect per-channel sums in fixed blocks of
// rows: each block sums into its own slot, the slots are added in order afterwards, so results do not
// depend on the thread count.
#pragma once

// the few ATen headers used, not <ATen/ATen.h>: it alone more than doubles a file's compile time
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <optional>
#include <tuple>
#include <vector>

namespace gradwise::nn {

// A tensor a kernel reads or writes through a raw pointer: CPU, strided, contiguous, of the dtype expected.
inline void check_dense(const char* op, const char* arg, const at::Tensor& t, at::ScalarType dtype) {
  TORCH_CHECK(t.defined(), op, ": ", arg, " is undefined");
  TORCH_CHECK(t.device().is_cpu(), op, ": ", arg, " must be a CPU tensor, got one on ", t.device());
  TORCH_CHECK(t.layout() == at::kStrided, op, ": ", arg, " must be a dense (strided) tensor, got ", t.layout());
  TORCH_CHECK(t.scalar_type() == dtype, op, ": ", arg, " must be ", dtype, ", got ", t.scalar_type());
  TORCH_CHECK(t.is_contiguous(), op, ": ", arg, " must be contiguous (shape ", t.sizes(), ", strides ",
              t.strides(), ")");
}

// A per-channel vector (weight, bias, a (1, C, 1, 1) buffer): C elements.
inline void check_channels(const char* op, const char* arg, const at::Tensor& t, at::ScalarType dtype, int64_t c) {
  check_dense(op, arg, t, dtype);
  TORCH_CHECK(t.numel() == c, op, ": ", arg, " must have C = ", c, " elements (one per channel), got shape ",
              t.sizes());
}

// rows per block of the per-channel sums: a block's slot (C values) and its rows stay in cache
inline int64_t rows_per_block(int64_t c) { return std::max<int64_t>(16, 32768 / std::max<int64_t>(c, 1)); }

// Adds the blocks' slots (nblocks x c, in order) into out, in double: the per-block sums are short, the sum
// over blocks is where a long float32 sum would lose bits.
template <typename T>
void sum_blocks(const std::vector<T>& slots, int64_t nblocks, int64_t c, int64_t stride, int64_t offset,
                double* out) {
  std::fill(out, out + c, 0.0);
  for (int64_t blk = 0; blk < nblocks; ++blk) {
    const T* s = slots.data() + blk * stride + offset;
#pragma omp simd
    for (int64_t k = 0; k < c; ++k) out[k] += static_cast<double>(s[k]);
  }
}

}  // namespace gradwise::nn
