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

}  // namespace cpu
}  // namespace fastblocks
