// The body of csrc/<family>_cpu_<isa>.cpp: one ISA copy of one kernel family, its own translation
// unit. The including file defines
//   FB_ISA_LEVEL       0 = baseline (32-byte GCC vectors, lowered to SSE2), 1 = AVX2 + FMA
//                      (32-byte vectors), 2 = AVX-512 F/VL/BW/DQ (64-byte vectors);
//   FB_KERNELS_HEADER  the family's kernels header (definitions of the members declared in
//                      fb_cpu_kernels.h);
//   FB_KERNELS         the family's class template in fb_cpu_kernels.h,
//   FB_KERNELS_FLOAT_ONLY  (optional) instantiate it for float only,
// and this compiles the header in namespace fastblocks::cpu::isa_default / isa_avx2 / isa_avx512
// under that target and instantiates the class for the four dtypes. fb_cpu.h's FB_ISA_CALL picks
// the copy at run time. Levels 1 and 2 compile to nothing where FB_HAVE_AVX2_CLONE is 0.
#include "fb_cpu_base.h"

#if FB_ISA_LEVEL == 0 || FB_HAVE_AVX2_CLONE

// Literal target strings: GCC does not expand macros in `#pragma GCC target`.
#if FB_ISA_LEVEL == 2
#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")
#define FB_VBYTES 64
#define FB_ISA_NAMESPACE isa_avx512
#elif FB_ISA_LEVEL == 1
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#define FB_VBYTES 32
#define FB_ISA_NAMESPACE isa_avx2
#else
#define FB_VBYTES 32
#define FB_ISA_NAMESPACE isa_default
#endif

namespace fastblocks {
namespace cpu {
namespace FB_ISA_NAMESPACE {
#include "fb_cpu_kernels.h"
#include "fb_cpu_math.h"
#include FB_KERNELS_HEADER

template struct FB_KERNELS<float>;
#ifndef FB_KERNELS_FLOAT_ONLY  // a family whose loops are float32 only (eval_kernels.h)
template struct FB_KERNELS<double>;
template struct FB_KERNELS<c10::BFloat16>;
template struct FB_KERNELS<c10::Half>;
#endif
}  // namespace FB_ISA_NAMESPACE
}  // namespace cpu
}  // namespace fastblocks

#if FB_ISA_LEVEL > 0
#pragma GCC pop_options
#endif

#endif  // FB_ISA_LEVEL == 0 || FB_HAVE_AVX2_CLONE
