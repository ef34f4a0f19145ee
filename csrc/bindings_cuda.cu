// CUDA implementations of the fastblocks_kernels::* schemas defined once in bindings.cpp. This file
// is compiled only when setup.py finds a CUDA toolkit: a CPU-only build has no CUDA kernels
// registered, and fastblocks/backends/native.py then reports the cuda backend unavailable.
#include <torch/library.h>

#include "fb_cuda_ops.h"
#include "fb_kernel_registration.h"

TORCH_LIBRARY_IMPL(fastblocks_kernels, CUDA, m) { FASTBLOCKS_IMPL_KERNEL_OPS(m, fastblocks::cuda); }
