// The kernel-level operator schemas and their registration, shared by every extension module:
// fastblocks._C defines them under fastblocks_kernels (CPU kernels in bindings.cpp, CUDA kernels in
// bindings_cuda.cu), fastblocks._C_cuda_emulated under its own namespace (csrc/emulation/bindings.cpp).
#pragma once

#include <torch/library.h>

namespace fastblocks {

// The schemas of every kernel op (the entry points of fb_kernel_entry_points.inc).
inline void define_kernel_schemas(torch::Library& m) {
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

}  // namespace fastblocks

// m.impl of every kernel op with the entry points of namespace `ns` (fastblocks::cpu / ::cuda).
#define FASTBLOCKS_IMPL_KERNEL_OPS(m, ns)                              \
  do {                                                                 \
    m.impl("act_forward", &ns::act_forward);                           \
    m.impl("act_backward", &ns::act_backward);                         \
    m.impl("bn_act_forward", &ns::bn_act_forward);                     \
    m.impl("bn_act_backward", &ns::bn_act_backward);                   \
    m.impl("dwconv_bn_act_forward", &ns::dwconv_bn_act_forward);       \
    m.impl("dwconv_bn_act_backward", &ns::dwconv_bn_act_backward);     \
    m.impl("channel_pool", &ns::channel_pool);                         \
    m.impl("channel_scale", &ns::channel_scale);                       \
    m.impl("channel_scale_backward", &ns::channel_scale_backward);     \
  } while (0)
