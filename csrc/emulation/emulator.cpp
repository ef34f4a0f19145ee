// The CUDA execution emulator behind cuda_emulation.h: runs a grid block by block, the threads of
// a block as fibers with a real barrier, and checks what a GPU would fault on (or silently get
// wrong): launch configuration limits, dynamic shared memory overruns, misaligned 16-byte
// accesses, threads of one block waiting at different barriers or returning while others wait.
#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <numeric>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "cuda_emulation.h"
#include "fiber.h"

uint3 threadIdx;
uint3 blockIdx;
dim3 blockDim;
dim3 gridDim;

namespace fastblocks {
namespace emulation {
namespace {

constexpr std::size_t kStackBytes = 64 * 1024;  // per thread; the kernels keep small frames
constexpr unsigned kMaxThreadsPerBlock = 1024;
constexpr std::size_t kMaxDynamicShared = 48 * 1024;  // without cudaFuncSetAttribute opt-in
constexpr std::size_t kGuardBytes = 64;               // before and after the block's shared memory
constexpr unsigned char kFill = 0xff;                 // NaN in every float type; also the guard

enum class ThreadState { Running, AtBarrier, Done };

struct Thread {
  Fiber fiber;
  ThreadState state = ThreadState::Done;
  const char* barrier_site = nullptr;  // file:line of the __syncthreads it waits in
  bool fresh = true;                   // its fiber must start from fiber_main
};

// One grid at a time per process (the built-ins above are process-wide).
struct Emulator {
  std::mutex mutex;
  Context scheduler;
  std::vector<std::unique_ptr<Thread>> threads;
  Thread* current = nullptr;
  ThreadBody body{};
  std::vector<unsigned char> shared;  // guard | smem bytes | guard
  std::size_t smem = 0;
  std::string fault;
  std::uint64_t launches = 0;

  ~Emulator() {
    for (auto& t : threads) fiber_free(t->fiber);
  }
};

Emulator& emulator() {
  static Emulator e;
  return e;
}

void thread_main(Fiber* fiber);

Thread& thread_slot(Emulator& e, std::size_t i) {
  while (e.threads.size() <= i) {
    auto t = std::make_unique<Thread>();
    fiber_allocate(t->fiber, kStackBytes);
    e.threads.push_back(std::move(t));
  }
  return *e.threads[i];
}

// Runs thread bodies forever: the scheduler switches in, the body runs to its end (switching out
// at each barrier), and the fiber switches back to the scheduler, ready for its next thread.
void thread_main(Fiber* fiber) {
  Emulator& e = emulator();
  for (;;) {
    Thread* self = e.current;
    (void)fiber;
    try {
      e.body.call(e.body.state);
    } catch (const std::exception& err) {
      report_fault(err.what());
    } catch (...) {
      report_fault("an exception escaped the kernel");
    }
    self->state = ThreadState::Done;
    switch_context(self->fiber.context, e.scheduler);
  }
}

std::string where() {
  std::ostringstream s;
  s << "block (" << blockIdx.x << ", " << blockIdx.y << ", " << blockIdx.z << "), thread (" << threadIdx.x << ", "
    << threadIdx.y << ", " << threadIdx.z << ")";
  return s.str();
}

void check_config(dim3 grid, dim3 block, std::size_t smem) {
  const unsigned long long threads = 1ull * block.x * block.y * block.z;
  TORCH_CHECK(grid.x >= 1 && grid.y >= 1 && grid.z >= 1 && threads >= 1,
              "cuda emulator: invalid configuration argument (empty grid or block: grid (", grid.x, ", ", grid.y, ", ",
              grid.z, "), block (", block.x, ", ", block.y, ", ", block.z, "))");
  TORCH_CHECK(grid.x <= 2147483647u && grid.y <= 65535 && grid.z <= 65535,
              "cuda emulator: invalid configuration argument (grid (", grid.x, ", ", grid.y, ", ", grid.z,
              ") exceeds the limits (2^31 - 1, 65535, 65535))");
  TORCH_CHECK(threads <= kMaxThreadsPerBlock && block.x <= 1024 && block.y <= 1024 && block.z <= 64,
              "cuda emulator: invalid configuration argument (block (", block.x, ", ", block.y, ", ", block.z,
              ") has more than ", kMaxThreadsPerBlock, " threads or exceeds (1024, 1024, 64))");
  TORCH_CHECK(smem <= kMaxDynamicShared, "cuda emulator: ", smem, " bytes of dynamic shared memory requested, more than ",
              kMaxDynamicShared, " (the limit without an opt-in attribute)");
}

// Shared-memory bytes written by each thread between two barriers (FASTBLOCKS_EMU_RACECHECK=1):
// a thread's writes are the bytes that differ from a snapshot taken when it was resumed; two
// threads writing the same byte in one phase is a race (their order decides the value on a GPU).
struct WriteTracker {
  std::vector<unsigned char> snapshot;
  std::vector<int> writer;  // per byte: the thread that wrote it this phase, or -1

  void start_phase(const unsigned char* smem, std::size_t n) {
    snapshot.assign(smem, smem + n);
    writer.assign(n, -1);
  }
  // After thread t ran: records its writes; false (with the fault set) on a conflict.
  bool record(Emulator& e, const unsigned char* smem, int t) {
    constexpr std::size_t kChunk = 64;  // memcmp skips unchanged chunks fast
    for (std::size_t i = 0; i < snapshot.size(); ++i) {
      if (i % kChunk == 0) {
        const std::size_t len = std::min(kChunk, snapshot.size() - i);
        if (std::memcmp(smem + i, snapshot.data() + i, len) == 0) {
          i += len - 1;
          continue;
        }
      }
      if (smem[i] == snapshot[i]) continue;
      if (writer[i] >= 0 && writer[i] != t) {
        std::ostringstream s;
        s << "shared memory race: threads " << writer[i] << " and " << t << " (linear ids) of block (" << blockIdx.x
          << ", " << blockIdx.y << ", " << blockIdx.z << ") both write byte " << i
          << " between the same two barriers";
        if (e.fault.empty()) e.fault = s.str();
        return false;
      }
      writer[i] = t;
      snapshot[i] = smem[i];
    }
    return true;
  }
};

bool env_flag(const char* name) {
  const char* env = std::getenv(name);
  return env != nullptr && env[0] != '\0' && env[0] != '0';
}

// std::getenv("FASTBLOCKS_EMU_SHUFFLE") as a seed, or -1 for the thread-order schedule.
long long shuffle_seed() {
  const char* env = std::getenv("FASTBLOCKS_EMU_SHUFFLE");
  if (env == nullptr || env[0] == '\0') return -1;
  char* end = nullptr;
  const long long seed = std::strtoll(env, &end, 10);
  TORCH_CHECK(end != env && *end == '\0' && seed >= 0, "FASTBLOCKS_EMU_SHUFFLE must be a non-negative integer seed, got '",
              env, "'");
  return seed;
}

void prepare_shared(Emulator& e) {
  std::fill(e.shared.begin(), e.shared.end(), kFill);
}

void check_guards(Emulator& e) {
  const unsigned char* base = e.shared.data();
  const unsigned char* after = base + kGuardBytes + e.smem;
  for (std::size_t i = 0; i < kGuardBytes; ++i) {
    if (base[i] != kFill || after[i] != kFill) {
      std::ostringstream s;
      s << "dynamic shared memory overrun in block (" << blockIdx.x << ", " << blockIdx.y << ", " << blockIdx.z
        << "): a byte " << (after[i] != kFill ? "past the end" : "before the start") << " of the launch's " << e.smem
        << " bytes was written";
      if (e.fault.empty()) e.fault = s.str();
      return;
    }
  }
}

// Runs one block; false when a fault makes the rest of the grid pointless.
bool run_block(Emulator& e, dim3 block, std::mt19937_64* rng, WriteTracker* writes) {
  const unsigned n = block.x * block.y * block.z;
  prepare_shared(e);
  const unsigned char* smem = e.shared.data() + kGuardBytes;
  std::vector<unsigned> live(n);
  std::iota(live.begin(), live.end(), 0u);
  for (unsigned i = 0; i < n; ++i) thread_slot(e, i).state = ThreadState::Running;
  std::vector<unsigned> order;
  while (!live.empty()) {
    order = live;
    if (rng != nullptr) std::shuffle(order.begin(), order.end(), *rng);
    if (writes != nullptr) writes->start_phase(smem, e.smem);
    for (unsigned i : order) {
      Thread& t = *e.threads[i];
      threadIdx = uint3{i % block.x, (i / block.x) % block.y, i / (block.x * block.y)};
      if (t.fresh) {
        fiber_reset(t.fiber, &thread_main);
        t.fresh = false;
      }
      e.current = &t;
      switch_context(e.scheduler, t.fiber.context);
      if (writes != nullptr) writes->record(e, smem, static_cast<int>(i));
    }
    e.current = nullptr;
    std::vector<unsigned> waiting;
    for (unsigned i : live)
      if (e.threads[i]->state == ThreadState::AtBarrier) waiting.push_back(i);
    if (!waiting.empty()) {
      const char* site = e.threads[waiting[0]]->barrier_site;
      const auto differs = std::find_if(waiting.begin(), waiting.end(), [&](unsigned i) {
        const char* other = e.threads[i]->barrier_site;
        return other != site && std::strcmp(other, site) != 0;
      });
      std::ostringstream s;
      if (differs != waiting.end())
        s << "threads of one block wait at different __syncthreads() calls (" << site << " and "
          << e.threads[*differs]->barrier_site << ")";
      else if (waiting.size() != live.size())
        s << "some threads of a block returned while others wait at __syncthreads()";
      if (!s.str().empty()) {
        s << " (block (" << blockIdx.x << ", " << blockIdx.y << ", " << blockIdx.z << "), " << waiting.size() << " of "
          << n << " threads waiting)";
        if (e.fault.empty()) e.fault = s.str();
        // The waiting fibers are abandoned mid-kernel: they restart from scratch next time.
        for (unsigned i : waiting) e.threads[i]->fresh = true;
        return false;
      }
      for (unsigned i : waiting) e.threads[i]->state = ThreadState::Running;
    }
    live = std::move(waiting);
  }
  check_guards(e);
  return e.fault.empty();
}

}  // namespace

void report_fault(const char* what) {
  Emulator& e = emulator();
  if (e.fault.empty()) e.fault = std::string(what) + " in " + where();
}

unsigned char* dynamic_shared_memory() {
  Emulator& e = emulator();
  return e.shared.data() + kGuardBytes;
}

void run_grid(dim3 grid, dim3 block, std::size_t smem, ThreadBody body) {
  check_config(grid, block, smem);
  const long long seed = shuffle_seed();
  const bool race_check = env_flag("FASTBLOCKS_EMU_RACECHECK");
  Emulator& e = emulator();
  std::lock_guard<std::mutex> lock(e.mutex);
  e.body = body;
  e.fault.clear();
  e.smem = smem;
  // 16-byte alignment of the shared memory start: vector's storage is at least that aligned.
  e.shared.assign(2 * kGuardBytes + smem, kFill);
  TORCH_INTERNAL_ASSERT(reinterpret_cast<std::uintptr_t>(e.shared.data() + kGuardBytes) % 16 == 0);
  gridDim = grid;
  blockDim = block;
  std::unique_ptr<std::mt19937_64> rng;
  if (seed >= 0) rng = std::make_unique<std::mt19937_64>(static_cast<std::uint64_t>(seed) * 1000003u + e.launches);
  ++e.launches;
  std::unique_ptr<WriteTracker> writes = race_check ? std::make_unique<WriteTracker>() : nullptr;
  const unsigned long long blocks = 1ull * grid.x * grid.y * grid.z;
  std::vector<unsigned long long> block_order(blocks);
  std::iota(block_order.begin(), block_order.end(), 0ull);
  if (rng) std::shuffle(block_order.begin(), block_order.end(), *rng);
  for (unsigned long long b : block_order) {
    blockIdx = uint3{static_cast<unsigned>(b % grid.x), static_cast<unsigned>((b / grid.x) % grid.y),
                     static_cast<unsigned>(b / (1ull * grid.x * grid.y))};
    if (!run_block(e, block, rng.get(), writes.get())) break;
  }
  const std::string fault = e.fault;
  e.fault.clear();
  TORCH_CHECK(fault.empty(), "cuda emulator: ", fault);
}

void sync_block(const char* site) {
  Emulator& e = emulator();
  Thread* self = e.current;
  TORCH_INTERNAL_ASSERT(self != nullptr, "__syncthreads() called outside an emulated kernel");
  self->barrier_site = site;
  self->state = ThreadState::AtBarrier;
  switch_context(self->fiber.context, e.scheduler);
}

}  // namespace emulation
}  // namespace fastblocks
