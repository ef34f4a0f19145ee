// What the CPU kernel loops need, and nothing of the host code's ATen operator headers: each ISA
// copy of a kernel family (csrc/<family>_cpu_<isa>.cpp) is its own translation unit, and parsing
// the heavy headers once per copy would cost more than compiling the small families.
#pragma once

// The baseline copy passes 32/64-byte vectors between inline functions: no ABI is crossed.
#pragma GCC diagnostic ignored "-Wpsabi"

#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <type_traits>
#include <utility>
#include <vector>

#include "fb_common.h"

// The AVX2 + FMA and AVX-512 copies exist on x86-64 GCC only (they use `#pragma GCC target`).
#if defined(__GNUC__) && !defined(__clang__) && (defined(__x86_64__) || defined(__i386__))
#define FB_HAVE_AVX2_CLONE 1
#include <immintrin.h>  // reciprocal estimates in the AVX2 / AVX-512 copies (eval_kernels.h)
#else
#define FB_HAVE_AVX2_CLONE 0
#endif

namespace fastblocks {
namespace cpu {

// Geometry of a depthwise k x k conv on channels-last data (dilation 1).
constexpr int kMaxTaps = 49;  // k <= 7
struct ConvGeo {
  int64_t N, C, H, W, K, S, Ho, Wo, top, left;
};
// Geometry of a dense k x k conv over few input channels (a network's stem): x read through its
// element strides (any layout), y channels-last with Cout channels.
struct DirectGeo {
  int64_t N, Cin, H, W, K, S, Ho, Wo, top, left, Cout;
  int64_t sn, sc, sh, sw;
};

// A 64-byte aligned float buffer, grown on demand and kept until destroyed (kernels keep them
// thread_local: per-call intermediates without an allocation, or fresh pages to touch, per call).
class Scratch {
 public:
  Scratch() = default;
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  ~Scratch() { std::free(p_); }
  // At least n floats.
  float* get(int64_t n) {
    const size_t bytes = (static_cast<size_t>(std::max<int64_t>(n, 1)) * sizeof(float) + 63) / 64 * 64;
    if (bytes > bytes_) {
      std::free(p_);
      p_ = std::aligned_alloc(64, bytes);
      bytes_ = p_ ? bytes : 0;
      TORCH_CHECK(p_ != nullptr, "fastblocks: out of memory for ", bytes, " bytes of scratch");
    }
    return static_cast<float*>(p_);
  }

 private:
  void* p_ = nullptr;
  size_t bytes_ = 0;
};

}  // namespace cpu
}  // namespace fastblocks
