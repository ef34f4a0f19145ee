// The CUDA runtime pieces the kernels (csrc/*.cu) and their host launchers use, in one place:
// kernel launch, dynamic shared memory, the device the tensors must be on, the device guard.
// Under nvcc they are CUDA's own; with FASTBLOCKS_CUDA_EMULATION (the host compiler building
// fastblocks._C_cuda_emulated) the same sources run on the CPU emulator of csrc/emulation/, with
// CPU tensors. Nothing else in the kernels or launchers differs between the two builds.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

#include <cstddef>
#include <utility>

#ifdef FASTBLOCKS_CUDA_EMULATION
#include "emulation/cuda_emulation.h"
#else
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#endif

namespace fastblocks {
namespace cuda {

#ifdef FASTBLOCKS_CUDA_EMULATION
constexpr const char* kKernelDevice = "CPU (cuda_emulated)";
inline bool on_kernel_device(const at::Tensor& t) { return t.is_cpu(); }

// CPU tensors need no device guard.
struct DeviceGuard {
  explicit DeviceGuard(c10::Device) {}
};

__device__ __forceinline__ unsigned char* dynamic_shared_memory() { return emulation::dynamic_shared_memory(); }

// kernel<<<grid, block, smem>>>(args...) on the emulator (raises for a fault found while it ran).
template <typename... Params, typename... Args>
inline void launch_kernel(void (*kernel)(Params...), dim3 grid, dim3 block, std::size_t smem, Args&&... args) {
  emulation::launch(kernel, grid, block, smem, std::forward<Args>(args)...);
}
#else
constexpr const char* kKernelDevice = "CUDA";
inline bool on_kernel_device(const at::Tensor& t) { return t.is_cuda(); }

using DeviceGuard = c10::cuda::CUDAGuard;

// The block's dynamic shared memory (one untyped declaration for every kernel).
__device__ __forceinline__ unsigned char* dynamic_shared_memory() {
  extern __shared__ __align__(16) unsigned char fb_shared[];
  return fb_shared;
}

// kernel<<<grid, block, smem, current stream>>>(args...), then the launch error check.
template <typename... Params, typename... Args>
inline void launch_kernel(void (*kernel)(Params...), dim3 grid, dim3 block, std::size_t smem, Args&&... args) {
  kernel<<<grid, block, smem, at::cuda::getCurrentCUDAStream()>>>(std::forward<Args>(args)...);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}
#endif

}  // namespace cuda
}  // namespace fastblocks
