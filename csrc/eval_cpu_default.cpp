// Eval-mode kernels: the baseline copy (see fb_cpu_isa_copy.h).
#define FB_ISA_LEVEL 0
#define FB_KERNELS_HEADER "eval_kernels.h"
#define FB_KERNELS EvalKernels
#define FB_KERNELS_FLOAT_ONLY
#include "fb_cpu_isa_copy.h"
