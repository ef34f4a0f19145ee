// Depthwise conv + BN + act kernels: the AVX-512 copy (see fb_cpu_isa_copy.h).
#define FB_ISA_LEVEL 2
#define FB_KERNELS_HEADER "dwconv_bn_act_kernels.h"
#define FB_KERNELS DwconvKernels
#include "fb_cpu_isa_copy.h"
