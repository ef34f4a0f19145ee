// CUDA implementations of the fastblocks_kernels::* schemas defined once in bindings.cpp. This file
// is compiled only when setup.py finds a CUDA toolkit: a CPU-only build has no CUDA kernels
// registered, and fastblocks/backends/native.py then reports the cuda backend unavailable.
#include <torch/library.h>

#include "fb_cuda_ops.h"

TORCH_LIBRARY_IMPL(fastblocks_kernels, CUDA, m) {
  namespace k = fastblocks::cuda;
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
