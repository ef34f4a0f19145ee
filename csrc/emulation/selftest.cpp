// fastblocks_cuda_emulated::emulator_selftest(fault): one small kernel, correct or with one
// deliberate fault, so the tests can check that the emulator reports what a GPU would fault on or
// silently get wrong. The kernel sums 64 values per block through shared memory (a barrier tree).
//  - "none": correct; returns the two block sums.
//  - "overrun": writes one float past the launch's dynamic shared memory.
//  - "misaligned": a 16-byte vector load from an address that is only 4-byte aligned.
//  - "divergent_barrier": odd threads wait at a different __syncthreads() than even ones.
//  - "early_return": odd threads return while even ones wait at __syncthreads().
//  - "write_race": every thread adds its value to slot 0 between the same two barriers (a lost
//    update on a GPU; sequential fibers sum it right, so only FASTBLOCKS_EMU_RACECHECK=1 sees it).
//  - "race": each thread reads its neighbour's shared slot with no barrier in between; returns
//    what was read (unwritten slots read as the emulator's NaN fill, and the values depend on the
//    thread order: FASTBLOCKS_EMU_SHUFFLE changes them).
#include <ATen/ops/arange.h>
#include <ATen/ops/full.h>
#include <torch/library.h>

#include <string>

#include "fb_cuda_runtime.cuh"

namespace fastblocks {
namespace emulation {
namespace {

enum Fault : int { kNone, kOverrun, kMisaligned, kDivergent, kEarlyReturn, kRace, kWriteRace };
constexpr int kBlock = 64;

__global__ void selftest_kernel(int fault, const float* __restrict__ in, float* __restrict__ out) {
  float* sh = reinterpret_cast<float*>(cuda::dynamic_shared_memory());
  const int t = threadIdx.x;
  sh[t] = in[blockIdx.x * kBlock + t];
  if (fault == kRace) {
    out[blockIdx.x * kBlock + t] = sh[(t + 1) % kBlock];
    return;
  }
  if (fault == kOverrun && t == 0) sh[kBlock] = 1.0f;
  if (fault == kMisaligned && t == 0) {
    const uint4 v = reinterpret_cast<const uint4*>(in + 1)[0];
    out[0] = static_cast<float>(v.x);
  }
  if (fault == kEarlyReturn && t % 2 == 1) return;
  if (fault == kWriteRace) {
    __syncthreads();
    if (t > 0) sh[0] += sh[t];
    __syncthreads();
    if (t == 0) out[blockIdx.x] = sh[0];
    return;
  }
  if (fault == kDivergent && t % 2 == 1) {
    __syncthreads();
  } else {
    __syncthreads();
  }
  for (int s = kBlock / 2; s > 0; s >>= 1) {
    if (t < s) sh[t] += sh[t + s];
    __syncthreads();
  }
  if (t == 0) out[blockIdx.x] = sh[0];
}

at::Tensor emulator_selftest(c10::string_view fault_name) {
  const std::string name(fault_name);
  int fault = -1;
  const char* names[] = {"none", "overrun", "misaligned", "divergent_barrier", "early_return", "race", "write_race"};
  for (int i = 0; i < 7; ++i)
    if (name == names[i]) fault = i;
  TORCH_CHECK(fault >= 0, "emulator_selftest: fault must be none, overrun, misaligned, divergent_barrier, "
              "early_return, race or write_race, got '", name, "'");
  const int blocks = 2;
  const at::Tensor in = at::arange(blocks * kBlock, at::TensorOptions().dtype(at::kFloat));
  at::Tensor out = at::full({fault == kRace ? blocks * kBlock : blocks}, -1.0f, in.options());
  cuda::launch_kernel(selftest_kernel, dim3(blocks), dim3(kBlock), kBlock * sizeof(float), fault,
                      in.const_data_ptr<float>(), out.mutable_data_ptr<float>());
  return out;
}

}  // namespace
}  // namespace emulation
}  // namespace fastblocks

TORCH_LIBRARY_FRAGMENT(fastblocks_cuda_emulated, m) {
  m.def("emulator_selftest(str fault) -> Tensor", &fastblocks::emulation::emulator_selftest);
}
