// Element-wise activation kernels (forward and backward from x): ActKernels (fb_cpu_kernels.h).
// NO include guard: included once per ISA namespace, after fb_cpu_math.h, by activation_cpu_<isa>.cpp
// (fb_cpu_isa_copy.h). Flat loops over dense memory.

constexpr int64_t kActGrain = 32768;

template <typename scalar_t>
void ActKernels<scalar_t>::act_forward_flat(const scalar_t* x, int64_t n, Act act, scalar_t* y) {
  dispatch_act(act, [&](auto tag) {
    constexpr Act A = decltype(tag)::value;
    at::parallel_for(0, n, kActGrain, [&](int64_t i0, int64_t i1) { act_row<A, acc_t>(x + i0, i1 - i0, y + i0); });
  });
}

template <typename scalar_t>
void ActKernels<scalar_t>::act_backward_flat(const scalar_t* dy, const scalar_t* x, int64_t n, Act act, scalar_t* dx) {
  dispatch_act(act, [&](auto tag) {
    constexpr Act A = decltype(tag)::value;
    at::parallel_for(0, n, kActGrain, [&](int64_t i0, int64_t i1) {
      act_grad_row<A, acc_t>(x + i0, dy + i0, i1 - i0, dx + i0);
    });
  });
}
