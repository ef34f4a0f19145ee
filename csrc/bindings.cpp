// fastblocks._C: the kernel-level operator schemas (TORCH_LIBRARY, from fb_kernel_registration.h), and one
// implementation per dispatch key (TORCH_LIBRARY_IMPL): CPU below (csrc/*_cpu.cpp), CUDA in
// csrc/bindings_cuda.cu (csrc/*.cu), compiled only when the build finds a CUDA toolkit.
//
// Two layers of ops, on purpose:
//  - torch.ops.fastblocks_kernels.* (this file): plain kernels, no autograd, no backend choice; the
//    dispatcher picks the CPU or CUDA kernel from the tensors' device.
//  - torch.ops.fastblocks.* (fastblocks/ops/*.py): the public Python custom ops. They carry the
//    backend choice (reference / eager / cpu / triton / cuda), fake impls and autograd, and their
//    "cpu" and "cuda" backends call these kernel ops (fastblocks/backends/native.py).
//
// Importing fastblocks._C loads the library, which registers the ops as torch.ops.fastblocks_kernels.*;
// the module's one Python class is MBConvRunner (csrc/block_runner_cpu.cpp, CPU builds), the
// whole-block eval call of a patched block with its checks in C++.
#include <Python.h>
#include <torch/library.h>

#include "eval_cpu_ops.h"
#include "fb_cpu_ops.h"

namespace fastblocks {
void add_block_runner(PyObject* module);  // csrc/block_runner_cpu.cpp
}
#include "fb_kernel_registration.h"

extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT, "_C", "fastblocks C++/CUDA kernels (ops registered under torch.ops.fastblocks_kernels)",
      -1, nullptr};
  PyObject* module = PyModule_Create(&module_def);
  // Whether the pre-AVX2 copy of the CPU kernels is in (fastblocks/backends/native.py reads it).
#if defined(FB_NO_BASELINE_COPY)
  const long baseline = 0;
#else
  const long baseline = 1;
#endif
  if (module != nullptr && PyModule_AddIntConstant(module, "has_baseline_copy", baseline) != 0) {
    Py_DECREF(module);
    return nullptr;
  }
#ifdef FASTBLOCKS_WITH_CPU
  if (module != nullptr) {
    try {
      fastblocks::add_block_runner(module);
    } catch (const std::exception& e) {
      PyErr_SetString(PyExc_ImportError, e.what());
      Py_DECREF(module);
      return nullptr;
    }
  }
#endif
  return module;
}
}

TORCH_LIBRARY(fastblocks_kernels, m) {
  fastblocks::define_kernel_schemas(m);
  // Eval-mode kernels on folded float32 weights (CPU only: csrc/eval_cpu.cpp).
  m.def("eval_epilogue_(Tensor(a!) y, Tensor bias, Tensor? residual, str act) -> Tensor(a!)");
  m.def(
      "dw_eval(Tensor x, Tensor taps, Tensor bias, int kernel_size, int stride, int[4] padding, str act, "
      "bool pool) -> (Tensor, Tensor)");
  m.def(
      "direct_conv_eval(Tensor x, Tensor taps, Tensor bias, int kernel_size, int stride, int[4] padding, str act) "
      "-> Tensor");
  m.def("pointwise_eval(Tensor x, Tensor wt, Tensor bias, Tensor? residual, str act, Tensor? scale) -> Tensor");
  m.def(
      "mbconv_eval(Tensor x, Tensor? expand_wt, Tensor? expand_bias, str expand_act, Tensor dw_taps, "
      "Tensor dw_bias, int kernel_size, int stride, int[4] padding, str dw_act, Tensor? se_w1, Tensor? se_b1, "
      "Tensor? se_w2, Tensor? se_b2, str se_act, str se_gate, str gate_act, Tensor proj_wt, Tensor proj_bias, "
      "bool residual) "
      "-> Tensor");
}

// FASTBLOCKS_WITH_CPU: defined by setup.py unless FASTBLOCKS_BUILD_CPU=0 leaves the CPU kernels out.
#ifdef FASTBLOCKS_WITH_CPU
TORCH_LIBRARY_IMPL(fastblocks_kernels, CPU, m) {
  FASTBLOCKS_IMPL_KERNEL_OPS(m, fastblocks::cpu);
  m.impl("eval_epilogue_", &fastblocks::cpu::eval_epilogue_);
  m.impl("dw_eval", &fastblocks::cpu::dw_eval);
  m.impl("direct_conv_eval", &fastblocks::cpu::direct_conv_eval);
  m.impl("pointwise_eval", &fastblocks::cpu::pointwise_eval);
  m.impl("mbconv_eval", &fastblocks::cpu::mbconv_eval);
}
#endif  // FASTBLOCKS_WITH_CPU
