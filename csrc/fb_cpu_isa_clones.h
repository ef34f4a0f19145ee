// Compiles the kernels header named by FB_KERNELS_HEADER once per CPU target (baseline, AVX2+FMA,
// AVX-512) in namespaces isa_default / isa_avx2 / isa_avx512; fb_cpu.h picks one at run time.
// Include it inside namespace fastblocks::cpu after defining FB_KERNELS_HEADER.
namespace isa_default {
#define FB_VBYTES 32
#include "fb_cpu_math.h"
#include FB_KERNELS_HEADER
#undef FB_VBYTES
}  // namespace isa_default

#if FB_HAVE_AVX2_CLONE
#pragma GCC push_options
#pragma GCC target("avx2,fma")
namespace isa_avx2 {
#define FB_VBYTES 32
#include "fb_cpu_math.h"
#include FB_KERNELS_HEADER
#undef FB_VBYTES
}  // namespace isa_avx2
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")
namespace isa_avx512 {
#define FB_VBYTES 64
#include "fb_cpu_math.h"
#include FB_KERNELS_HEADER
#undef FB_VBYTES
}  // namespace isa_avx512
#pragma GCC pop_options
#endif
#undef FB_KERNELS_HEADER
