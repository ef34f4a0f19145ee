// Entry points of the CUDA kernels, registered as fastblocks_kernels::* ops for the CUDA dispatch
// key in bindings_cuda.cu. Exactly the signatures and return conventions of the CPU entry points
// (fb_cpu_ops.h), so one Python wrapper (fastblocks/backends/native.py) serves both devices.
// Every tensor argument must be on x's CUDA device; kernels run on the current stream.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/string_view.h>

#include <array>
#include <optional>
#include <tuple>

namespace fastblocks {
namespace cuda {

#include "fb_kernel_entry_points.inc"

}  // namespace cuda
}  // namespace fastblocks
