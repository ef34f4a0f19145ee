// Entry points of the CPU kernels, registered as fastblocks_kernels::* ops for the CPU dispatch key
// in bindings.cpp (the CUDA kernels, fb_cuda_ops.h, have exactly these signatures).
// Shapes and return conventions mirror fastblocks/backends/eager/*.py (see fastblocks/backends/native.py).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/string_view.h>

#include <array>
#include <optional>
#include <tuple>

namespace fastblocks {
namespace cpu {

#include "fb_kernel_entry_points.inc"

}  // namespace cpu
}  // namespace fastblocks
