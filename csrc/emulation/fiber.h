// Fibers for the CUDA emulator: one per thread of a block, each on its own stack, switched
// cooperatively on the calling OS thread. x86-64 switches with a few instructions (callee-saved
// registers, MXCSR and the x87 control word); other architectures use ucontext (correct, slower:
// swapcontext makes a system call per switch).
#pragma once

#include <cstddef>

#if !defined(__x86_64__)
#include <ucontext.h>
#endif

namespace fastblocks {
namespace emulation {

struct Fiber;

// Called on a fiber's own stack when it first runs; must never return.
using FiberMain = void (*)(Fiber*);

// A saved execution context (where a switch resumes).
struct Context {
#if defined(__x86_64__)
  void* sp = nullptr;
#else
  ucontext_t uc;
#endif
};

struct Fiber {
  Context context;
  unsigned char* stack = nullptr;  // lowest usable byte; a PROT_NONE page lies below it
  std::size_t stack_bytes = 0;
};

// Maps the fiber's stack (with a guard page); throws std::bad_alloc when that fails.
void fiber_allocate(Fiber& f, std::size_t stack_bytes);
void fiber_free(Fiber& f);
// Makes the next switch to f start main(&f) on f's stack (discarding what f was running).
void fiber_reset(Fiber& f, FiberMain main);
// Saves the current context in `from` and resumes `to`.
void switch_context(Context& from, Context& to);

}  // namespace emulation
}  // namespace fastblocks
