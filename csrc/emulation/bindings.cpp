// fastblocks._C_cuda_emulated: the CUDA kernels of csrc/*.cu, compiled by the host compiler and run
// by the emulator (emulator.cpp), registered as torch.ops.fastblocks_cuda_emulated.* for CPU
// tensors. Its own namespace: fastblocks._C registers the CPU kernels under fastblocks_kernels.
// Built only with FASTBLOCKS_BUILD_CUDA_EMULATION=1 (setup.py); the cuda_emulated backend
// (fastblocks/backends/native.py) calls these ops.
#include <Python.h>
#include <torch/library.h>

#include "fb_cuda_ops.h"
#include "fb_kernel_registration.h"

extern "C" {
PyObject* PyInit__C_cuda_emulated(void) {
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT, "_C_cuda_emulated",
      "fastblocks CUDA kernels on the CPU emulator (ops registered under torch.ops.fastblocks_cuda_emulated)", -1,
      nullptr};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(fastblocks_cuda_emulated, m) { fastblocks::define_kernel_schemas(m); }

TORCH_LIBRARY_IMPL(fastblocks_cuda_emulated, CPU, m) { FASTBLOCKS_IMPL_KERNEL_OPS(m, fastblocks::cuda); }
