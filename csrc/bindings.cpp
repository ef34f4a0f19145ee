// fastblocks._C: the kernel-level operator schemas, defined ONCE here (TORCH_LIBRARY), and one
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
// The module itself has no Python functions: importing fastblocks._C loads the library, which
// registers the ops as torch.ops.fastblocks_kernels.*.
#include <Python.h>
#include <torch/library.h>

#include "fb_cpu_ops.h"

extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT, "_C", "fastblocks C++/CUDA kernels (ops registered under torch.ops.fastblocks_kernels)",
      -1, nullptr};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(fastblocks_kernels, m) {
  m.def("act_forward(Tensor x, str act) -> Tensor");
  m.def("act_backward(Tensor dy, Tensor x, str act) -> Tensor");
  m.def(
      "bn_act_forward(Tensor x, Tensor? bn_weight, Tensor? bn_bias, Tensor? running_mean, Tensor? running_var, "
      "bool training, float eps, str act) -> (Tensor, Tensor, Tensor)");
  m.def(
      "bn_act_backward(Tensor dy, Tensor x, Tensor? bn_weight, Tensor? bn_bias, Tensor mean, Tensor var, "
      "bool training, float eps, str act, bool[3] mask) -> (Tensor, Tensor, Tensor)");
  m.def(
      "dwconv_bn_act_forward(Tensor x, Tensor weight, Tensor? bn_weight, Tensor? bn_bias, Tensor? running_mean, "
      "Tensor? running_var, Tensor? conv_bias, int stride, str padding_mode, int padding, bool training, "
      "float eps, str act) -> (Tensor, Tensor, Tensor)");
  m.def(
      "dwconv_bn_act_backward(Tensor dy, Tensor x, Tensor weight, Tensor? bn_weight, Tensor? bn_bias, "
      "Tensor? conv_bias, Tensor mean, Tensor var, int stride, str padding_mode, int padding, bool training, "
      "float eps, str act, bool[5] mask) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def("channel_pool(Tensor x) -> Tensor");
  m.def("channel_scale(Tensor x, Tensor scale, Tensor? shift) -> Tensor");
  m.def("channel_scale_backward(Tensor dy, Tensor x, Tensor scale, bool compute_dx) -> (Tensor, Tensor)");
}

// FASTBLOCKS_WITH_CPU: defined by setup.py unless FASTBLOCKS_BUILD_CPU=0 leaves the CPU kernels out.
#ifdef FASTBLOCKS_WITH_CPU
TORCH_LIBRARY_IMPL(fastblocks_kernels, CPU, m) {
  namespace k = fastblocks::cpu;
  m.impl("act_forward", &k::act_forward);
  m.impl("act_backward", &k::act_backward);
  m.impl("bn_act_forward", &k::bn_act_forward);
  m.impl("bn_act_backward", &k::bn_act_backward);
  m.impl("dwconv_bn_act_forward", &k::dwconv_bn_act_forward);
  m.impl("dwconv_bn_act_backward", &k::dwconv_bn_act_backward);
  m.impl("channel_pool", &k::channel_pool);
  m.impl("channel_scale", &k::channel_scale);
  m.impl("channel_scale_backward", &k::channel_scale_backward);
}
#endif  // FASTBLOCKS_WITH_CPU
