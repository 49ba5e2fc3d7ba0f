// Shared pieces of the losses' fused CPU kernels (their own library, gradwise/losses/_C*.so; see
// gradwise/_kernels.py): one .cpp per kernel group beside this header, each registering its operators
// in the torch.ops.gradwise_losses namespace. Each works row by row: a row of logits stays
// in cache while the several passes a loss needs run over it, so memory is
// read once forward and once backward, where composing torch ops makes 10-20
// passes over the [N, C] tensor.
//
// Registration: each kernel file ends with its own TORCH_LIBRARY_FRAGMENT (schemas) and
// TORCH_LIBRARY_IMPL (CPU kernels), kept apart so that the fake implementations registered from Python
// (gradwise/losses/_fakes.py) serve torch.compile's fake tensors.
#pragma once

// The few ATen headers the kernels use, not <ATen/ATen.h> (all of torch's operators): every kernel
// file parses this header, and ATen.h alone more than doubles a file's compile time.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <optional>
#include <vector>

// vector versions of exp/log1p from glibc's libmvec (see optim/csrc/common.h)
extern "C" {
#pragma omp declare simd notinbranch
double exp(double) noexcept;
#pragma omp declare simd notinbranch
float expf(float) noexcept;
#pragma omp declare simd notinbranch
double log1p(double) noexcept;
#pragma omp declare simd notinbranch
float log1pf(float) noexcept;
}

namespace gradwise::losses {

inline float vexp(float x) { return expf(x); }
inline double vexp(double x) { return exp(x); }
inline float vlog1p(float x) { return log1pf(x); }
inline double vlog1p(double x) { return log1p(x); }

}  // namespace gradwise::losses
