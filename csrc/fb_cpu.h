// Host-side helpers shared by the CPU kernels (csrc/*_cpu.cpp): argument checks, ISA selection,
// deterministic reduction of per-block partials (activation names and padding arithmetic are in
// fb_common.h, shared with the CUDA kernels).
//
// Kernel loops live in csrc/*_kernels.h (+ fb_cpu_math.h), compiled three times, each copy in its
// own translation unit csrc/<family>_cpu_<isa>.cpp (fb_cpu_isa_copy.h): for the baseline ISA
// (32-byte GCC vectors lowered to SSE2), under `#pragma GCC target("avx2,fma")` (32-byte vectors)
// and under an AVX-512 target (64-byte vectors), the last two on x86-64 GCC only. The host code
// sees their declarations (fb_cpu_kernels.h) in namespaces isa_default / isa_avx2 / isa_avx512.
// isa_level() picks the best copy the CPU runs at first use; FASTBLOCKS_CPU_ISA=default|avx2 caps
// it (tests/test_cpu_backend.py runs the lower copies this way).
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/TensorOperators.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>

#include <optional>
#include <string>
#include <tuple>

#include "fb_cpu_base.h"

// Calls isa_avx512::fn(...), isa_avx2::fn(...) or isa_default::fn(...) by the CPU's capability
// (see isa_level); fn names a member of a class in fb_cpu_kernels.h, e.g. ActKernels<float>::act_forward_flat.
#if FB_HAVE_AVX2_CLONE && defined(FB_NO_BASELINE_COPY)
// Built without the baseline copy (setup.py's default on x86-64): the AVX2 copy is the floor.
#define FB_ISA_CALL(fn, ...)                                                                     \
  (::fastblocks::cpu::require_vector_isa(),                                                      \
   ::fastblocks::cpu::isa_level() >= 2 ? ::fastblocks::cpu::isa_avx512::fn(__VA_ARGS__)          \
                                       : ::fastblocks::cpu::isa_avx2::fn(__VA_ARGS__))
#elif FB_HAVE_AVX2_CLONE
#define FB_ISA_CALL(fn, ...)                                                                     \
  (::fastblocks::cpu::isa_level() >= 2   ? ::fastblocks::cpu::isa_avx512::fn(__VA_ARGS__)        \
   : ::fastblocks::cpu::isa_level() == 1 ? ::fastblocks::cpu::isa_avx2::fn(__VA_ARGS__)          \
                                         : ::fastblocks::cpu::isa_default::fn(__VA_ARGS__))
#else
#define FB_ISA_CALL(fn, ...) ::fastblocks::cpu::isa_default::fn(__VA_ARGS__)
#endif

namespace fastblocks {
namespace cpu {

// The kernel copies' entry points (defined in csrc/<family>_cpu_<isa>.cpp).
namespace isa_default {
#include "fb_cpu_kernels.h"
}  // namespace isa_default
#if FB_HAVE_AVX2_CLONE
namespace isa_avx2 {
#include "fb_cpu_kernels.h"
}  // namespace isa_avx2
namespace isa_avx512 {
#include "fb_cpu_kernels.h"
}  // namespace isa_avx512
#endif

// Which copy of the kernels runs: 2 = AVX-512 (F/VL/BW/DQ), 1 = AVX2 + FMA, 0 = baseline.
// FASTBLOCKS_CPU_ISA=default|avx2|avx512 caps it (e.g. to test the other copies).
inline int isa_level() {
#if FB_HAVE_AVX2_CLONE
  static const int value = [] {
    __builtin_cpu_init();
    int level = 0;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) level = 1;
    if (level == 1 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
        __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq"))
      level = 2;
    const char* env = std::getenv("FASTBLOCKS_CPU_ISA");
    if (env != nullptr) {
      const std::string cap(env);
      if (cap == "default") level = 0;
      if (cap == "avx2") level = std::min(level, 1);
    }
    return level;
  }();
  return value;
#else
  return 0;
#endif
}

// Without the baseline copy a CPU below AVX2 + FMA (or FASTBLOCKS_CPU_ISA=default) has no kernels.
inline void require_vector_isa() {
#if defined(FB_NO_BASELINE_COPY)
  TORCH_CHECK(isa_level() >= 1,
              "fastblocks' cpu kernels were built without their baseline (pre-AVX2) copy, which this CPU or "
              "FASTBLOCKS_CPU_ISA=default needs: rebuild with FASTBLOCKS_CPU_BASELINE=1, or use backend='eager'");
#endif
}

inline void check_x(const at::Tensor& x, const char* op, const char* name = "x") {
  TORCH_CHECK(x.device().is_cpu(), op, ": ", name, " must be a CPU tensor, got ", x.device());
  TORCH_CHECK(x.dim() == 4, op, ": ", name, " must be 4-D (N, C, H, W), got ", x.dim(), "-D");
  auto t = x.scalar_type();
  TORCH_CHECK(t == at::kFloat || t == at::kDouble || t == at::kBFloat16 || t == at::kHalf, op, ": ", name,
              " must be float32, float64, bfloat16 or float16, got ", t);
}

inline void check_same(const at::Tensor& a, const at::Tensor& x, const char* op, const char* name) {
  TORCH_CHECK(a.device().is_cpu(), op, ": ", name, " must be a CPU tensor");
  TORCH_CHECK(a.sizes() == x.sizes(), op, ": ", name, " must have shape ", x.sizes(), ", got ", a.sizes());
}

// A (C,) parameter as a contiguous tensor of the accumulation dtype, or `fill` when absent.
inline at::Tensor per_channel(const std::optional<at::Tensor>& t, int64_t c, at::ScalarType acc, double fill,
                              const char* op, const char* name) {
  if (!t.has_value() || !t->defined()) return at::empty({c}, at::TensorOptions().dtype(acc)).fill_(fill);
  TORCH_CHECK(t->device().is_cpu(), op, ": ", name, " must be a CPU tensor");
  TORCH_CHECK(t->numel() == c, op, ": ", name, " must have ", c, " elements, got ", t->numel());
  return t->reshape({c}).to(acc).contiguous();
}

// Per-channel (mean, biased variance) from per-block partials, combined in a fixed order
// (Chan et al.): deterministic whatever the thread count. mean_b / m2_b: [nblocks][C] doubles,
// m2_b around the block's own mean; counts[b] elements per channel in block b.
inline void combine_blocks(const std::vector<double>& mean_b, const std::vector<double>& m2_b,
                           const std::vector<int64_t>& counts, int64_t c, double* mean, double* var) {
  const int64_t nb = static_cast<int64_t>(counts.size());
  int64_t total = 0;
  for (auto n : counts) total += n;
  at::parallel_for(0, c, 64, [&](int64_t c0, int64_t c1) {
    for (int64_t ch = c0; ch < c1; ++ch) {
      double s = 0;
      for (int64_t b = 0; b < nb; ++b) s += mean_b[b * c + ch] * static_cast<double>(counts[b]);
      const double m = s / static_cast<double>(total);
      double m2 = 0;
      for (int64_t b = 0; b < nb; ++b) {
        const double d = mean_b[b * c + ch] - m;
        m2 += m2_b[b * c + ch] + d * d * static_cast<double>(counts[b]);
      }
      mean[ch] = m;
      var[ch] = m2 / static_cast<double>(total);
    }
  });
}

// Column sums of a [nblocks][len] double array, in block order (deterministic).
inline void sum_blocks(const std::vector<double>& part, int64_t nb, int64_t len, double* out) {
  at::parallel_for(0, len, 256, [&](int64_t j0, int64_t j1) {
    for (int64_t j = j0; j < j1; ++j) {
      double s = 0;
      for (int64_t b = 0; b < nb; ++b) s += part[b * len + j];
      out[j] = s;
    }
  });
}

// Fixed partition of `rows` rows of `per_row` elements per channel into blocks of at least
// `min_per_block` elements per channel (independent of the thread count).
inline int64_t rows_per_block(int64_t per_row, int64_t min_per_block = 32) {
  return std::max<int64_t>(1, (min_per_block + per_row - 1) / std::max<int64_t>(per_row, 1));
}

}  // namespace cpu
}  // namespace fastblocks
