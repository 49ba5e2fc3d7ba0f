// Shared pieces of the optimizers' fused CPU kernels (one .cpp per kernel or small group beside this
// header; each registers its own operators in the torch.ops.gradwise_fused namespace).
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
//
// Registration: each kernel file ends with its own TORCH_LIBRARY_FRAGMENT (the schema, with its
// mutations) and TORCH_LIBRARY_IMPL (the CPU kernel), so adding a kernel is adding one .cpp (and its
// fake in gradwise/optim/_fakes.py), with no central list to keep in step. Schemas and CPU kernels are
// registered apart (m.def without a function) so that the fake implementations registered from Python
// serve torch.compile's fake tensors.
#pragma once

// The few ATen headers the kernels use, not <ATen/ATen.h> (all of torch's operators): every kernel
// file parses this header, and ATen.h alone more than doubles a file's compile time.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
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

namespace gradwise::optim {

inline constexpr int64_t kGrain = 16384;

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
inline void check_like(const char* name, const char* what, at::TensorList p, at::TensorList t,
                       bool optional = false) {
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

inline void check_params(const char* name, at::TensorList p, at::TensorList g) {
  for (size_t i = 0; i < p.size(); ++i) {
    TORCH_CHECK(p[i].defined() && p[i].device().is_cpu() && p[i].layout() == at::kStrided, name, ": parameter ",
                i, " must be a dense CPU tensor");
    TORCH_CHECK(p[i].scalar_type() == at::kFloat || p[i].scalar_type() == at::kDouble, name, ": parameter ", i,
                " has dtype ", p[i].scalar_type(), " (accepted: float32, float64)");
  }
  check_like(name, "gradient", p, g);
}

// A per-tensor scalar argument list (coefficients, step counts) must have one entry per parameter.
inline void check_count(const char* name, const char* what, size_t got, size_t n, bool optional = false) {
  TORCH_CHECK(got == n || (optional && got == 0), name, ": ", got, " ", what, " values for ", n, " parameters");
}

// One-element state per parameter (StableSPAM's running norms), read and written at [0].
inline void check_scalar_state(const char* name, const char* what, at::TensorList p, at::TensorList t) {
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

}  // namespace gradwise::optim
