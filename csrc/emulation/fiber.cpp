#include "fiber.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <cstring>
#include <new>

#if defined(__x86_64__)
extern "C" void fb_emu_switch(void** save_sp, void* load_sp);
extern "C" void fb_emu_fiber_start();

// fb_emu_switch: push the callee-saved registers and MXCSR / x87 control word, store rsp in
// *save_sp, load load_sp, pop the same set, return into the resumed context.
// fb_emu_fiber_start: the first return address of a fresh fiber: main(fiber) from r13 / r12.
asm(R"(
  .text
  .p2align 4
  .globl fb_emu_switch
  .hidden fb_emu_switch
  .type fb_emu_switch, @function
fb_emu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size fb_emu_switch, .-fb_emu_switch

  .p2align 4
  .globl fb_emu_fiber_start
  .hidden fb_emu_fiber_start
  .type fb_emu_fiber_start, @function
fb_emu_fiber_start:
  movq %r12, %rdi
  callq *%r13
  ud2
  .size fb_emu_fiber_start, .-fb_emu_fiber_start
)");
#endif

namespace fastblocks {
namespace emulation {

void fiber_allocate(Fiber& f, std::size_t stack_bytes) {
  const std::size_t page = static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
  stack_bytes = (stack_bytes + page - 1) / page * page;
  void* base = mmap(nullptr, stack_bytes + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                    -1, 0);
  if (base == MAP_FAILED) throw std::bad_alloc();
  mprotect(base, page, PROT_NONE);  // a stack overflow faults instead of corrupting memory
  f.stack = static_cast<unsigned char*>(base) + page;
  f.stack_bytes = stack_bytes;
}

void fiber_free(Fiber& f) {
  if (f.stack == nullptr) return;
  const std::size_t page = static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
  munmap(f.stack - page, f.stack_bytes + page);
  f.stack = nullptr;
}

#if defined(__x86_64__)
void fiber_reset(Fiber& f, FiberMain main) {
  // The frame fb_emu_switch pops, laid out below a 16-byte aligned address A: after the pops and
  // `ret` into fb_emu_fiber_start, rsp == A, so `callq` enters main with the ABI's alignment.
  auto top = reinterpret_cast<std::uintptr_t>(f.stack + f.stack_bytes) & ~std::uintptr_t(15);
  auto* a = reinterpret_cast<std::uint64_t*>(top - 16);
  a[-1] = reinterpret_cast<std::uint64_t>(&fb_emu_fiber_start);  // return address
  a[-2] = 0;                                                       // rbp
  a[-3] = 0;                                                       // rbx
  a[-4] = reinterpret_cast<std::uint64_t>(&f);                     // r12: main's argument
  a[-5] = reinterpret_cast<std::uint64_t>(main);                   // r13: main
  a[-6] = 0;                                                       // r14
  a[-7] = 0;                                                       // r15
  std::uint32_t mxcsr;
  std::uint16_t fcw;
  asm volatile("stmxcsr %0" : "=m"(mxcsr));
  asm volatile("fnstcw %0" : "=m"(fcw));
  std::memcpy(&a[-8], &mxcsr, 4);
  std::memcpy(reinterpret_cast<unsigned char*>(&a[-8]) + 4, &fcw, 2);
  f.context.sp = &a[-8];
}

void switch_context(Context& from, Context& to) { fb_emu_switch(&from.sp, to.sp); }
#else
namespace {
// makecontext passes int arguments only: the fiber pointer and main travel in two halves each.
void start_trampoline(unsigned f_hi, unsigned f_lo, unsigned m_hi, unsigned m_lo) {
  auto* f = reinterpret_cast<Fiber*>((static_cast<std::uintptr_t>(f_hi) << 32) | f_lo);
  auto main = reinterpret_cast<FiberMain>((static_cast<std::uintptr_t>(m_hi) << 32) | m_lo);
  main(f);
}
}  // namespace

void fiber_reset(Fiber& f, FiberMain main) {
  getcontext(&f.context.uc);
  f.context.uc.uc_stack.ss_sp = f.stack;
  f.context.uc.uc_stack.ss_size = f.stack_bytes;
  f.context.uc.uc_link = nullptr;
  const auto fp = reinterpret_cast<std::uintptr_t>(&f), mp = reinterpret_cast<std::uintptr_t>(main);
  makecontext(&f.context.uc, reinterpret_cast<void (*)()>(&start_trampoline), 4, static_cast<unsigned>(fp >> 32),
              static_cast<unsigned>(fp), static_cast<unsigned>(mp >> 32), static_cast<unsigned>(mp));
}

void switch_context(Context& from, Context& to) { swapcontext(&from.uc, &to.uc); }
#endif

}  // namespace emulation
}  // namespace fastblocks
