// The CUDA built-ins the kernels in csrc/*.cu use, for compiling those same sources with the host
// compiler and running them on the CPU (the cuda_emulated backend, fastblocks._C_cuda_emulated).
// Included by fb_cuda_runtime.cuh when FASTBLOCKS_CUDA_EMULATION is defined; never under nvcc.
//
// Execution model (emulator.cpp): blocks run one after another; the threads of a block are fibers
// on the calling thread, each run until it reaches __syncthreads() or returns, so a barrier is a
// real barrier (every live thread of the block arrives before any continues). Dynamic shared
// memory is one buffer of exactly the launch's size, filled with 0xff bytes (NaN) when each block
// starts and followed by guard bytes checked when it ends. Errors found while a block runs (an
// overrun of shared memory, a misaligned 16-byte access, threads waiting at different barriers)
// are raised by the launch as c10::Error. FASTBLOCKS_EMU_SHUFFLE=<seed> runs each barrier phase's
// threads (and the blocks) in a random order (seeded per launch) instead of thread order;
// FASTBLOCKS_EMU_RACECHECK=1 also reports two threads writing the same shared-memory byte
// between the same two barriers.
#pragma once

#include <c10/util/Exception.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <tuple>
#include <utility>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))

namespace fastblocks {
namespace emulation {

// Reports a fault of the running kernel (kept until the launch ends, which raises it).
void report_fault(const char* what);

// Aborts the kernel if p is not `align`-byte aligned (a CUDA vector access faults there).
inline void check_aligned(const void* p, std::size_t align) {
  if (reinterpret_cast<std::uintptr_t>(p) % align != 0) report_fault("misaligned vector access");
}

}  // namespace emulation
}  // namespace fastblocks

struct uint3 {
  unsigned x, y, z;
};

struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned vx = 1, unsigned vy = 1, unsigned vz = 1) : x(vx), y(vy), z(vz) {}
  constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
};

// 16-byte vector types. Copying one through a misaligned address is reported like the fault a
// GPU raises for it (the kernels move data in uint4 pieces after reinterpret_cast).
#define FB_EMU_VECTOR4(name, T)                                                            \
  struct alignas(4 * sizeof(T)) name {                                                     \
    T x, y, z, w;                                                                          \
    name() = default;                                                                      \
    name(const name& o) { copy_from(o); }                                                  \
    name& operator=(const name& o) {                                                       \
      copy_from(o);                                                                        \
      return *this;                                                                        \
    }                                                                                      \
                                                                                           \
   private:                                                                                \
    void copy_from(const name& o) {                                                        \
      fastblocks::emulation::check_aligned(this, alignof(name));                          \
      fastblocks::emulation::check_aligned(&o, alignof(name));                            \
      x = o.x, y = o.y, z = o.z, w = o.w;                                                  \
    }                                                                                      \
  };
FB_EMU_VECTOR4(uint4, unsigned)
FB_EMU_VECTOR4(int4, int)
FB_EMU_VECTOR4(float4, float)
#undef FB_EMU_VECTOR4

// The running thread's coordinates (set by the emulator before it resumes a thread).
extern uint3 threadIdx;
extern uint3 blockIdx;
extern dim3 blockDim;
extern dim3 gridDim;

namespace fastblocks {
namespace emulation {
// Waits until every live thread of the block has called it; `site` (file:line of the call) must
// be the same for all of them.
void sync_block(const char* site);
}  // namespace emulation
}  // namespace fastblocks

#define FB_EMU_STR2(x) #x
#define FB_EMU_STR(x) FB_EMU_STR2(x)
#define __syncthreads() ::fastblocks::emulation::sync_block(__FILE__ ":" FB_EMU_STR(__LINE__))

template <typename T>
inline T __ldg(const T* p) {
  return *p;
}

namespace fastblocks {
namespace emulation {

// Dynamic shared memory of the running block.
unsigned char* dynamic_shared_memory();

// A type-erased reference to the code one thread runs.
struct ThreadBody {
  void (*call)(void*);
  void* state;
};

// Runs body once per thread of grid x block with `smem` bytes of dynamic shared memory; raises
// c10::Error for a fault found while it ran.
void run_grid(dim3 grid, dim3 block, std::size_t smem, ThreadBody body);

// kernel(args...) on every thread of grid x block: the emulated kernel<<<grid, block, smem>>>.
template <typename... Params, typename... Args>
void launch(void (*kernel)(Params...), dim3 grid, dim3 block, std::size_t smem, Args&&... args) {
  struct State {
    void (*kernel)(Params...);
    std::tuple<Params...> params;
  } state{kernel, std::tuple<Params...>(static_cast<Params>(std::forward<Args>(args))...)};
  auto call = [](void* p) {
    auto* s = static_cast<State*>(p);
    std::apply(s->kernel, s->params);
  };
  run_grid(grid, block, smem, ThreadBody{call, &state});
}

}  // namespace emulation
}  // namespace fastblocks
