// Channel pooling and scaling kernels: the baseline copy (SSE2) (see fb_cpu_isa_copy.h).
#define FB_ISA_LEVEL 0
#define FB_KERNELS_HEADER "gate_scale_kernels.h"
#define FB_KERNELS GateScaleKernels
#include "fb_cpu_isa_copy.h"
