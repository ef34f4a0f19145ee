// The entry points of the CPU kernel loops, per kernel family, as static members of a class
// template over the input dtype (float, double, c10::BFloat16, c10::Half; acc_t: float, double
// for double). What each one computes is documented at its definition in csrc/<family>_kernels.h.
//
// NO include guard: declared once per ISA namespace (fastblocks::cpu::isa_default / isa_avx2 /
// isa_avx512). The host code (csrc/<family>_cpu.cpp, through fb_cpu.h) sees only these
// declarations; each csrc/<family>_cpu_<isa>.cpp defines one ISA's copy and instantiates the class
// for the four dtypes (fb_cpu_isa_copy.h), so every copy is its own translation unit.

template <typename scalar_t>
struct ActKernels {
  using acc_t = acc_of<scalar_t>;
  static void act_forward_flat(const scalar_t* x, int64_t n, Act act, scalar_t* y);
  static void act_backward_flat(const scalar_t* dy, const scalar_t* x, int64_t n, Act act, scalar_t* dx);
};

template <typename scalar_t>
struct BnActKernels {
  using acc_t = acc_of<scalar_t>;
  static void bn_stats_cl(const scalar_t* x, int64_t rows, int64_t W, int64_t C, int64_t R, double* mean_b,
                          double* m2_b, int64_t* counts);
  static void bn_apply_cl(const scalar_t* x, int64_t rows, int64_t W, int64_t C, const acc_t* scale,
                          const acc_t* shift, Act act, scalar_t* y);
  static void bn_backward_cl(const scalar_t* x, const scalar_t* dy, int64_t rows, int64_t W, int64_t C, int64_t R,
                             const acc_t* mean, const acc_t* invstd, const acc_t* gamma, const acc_t* beta,
                             const acc_t* k1, const acc_t* k2, const acc_t* k3, Act act, double* red, scalar_t* dx);
  static void bn_stats_plane(const scalar_t* x, int64_t planes, int64_t HW, double* mean_p, double* m2_p);
  static void bn_apply_plane(const scalar_t* x, int64_t N, int64_t C, int64_t HW, const acc_t* scale,
                             const acc_t* shift, Act act, scalar_t* y);
  static void bn_backward_plane(const scalar_t* x, const scalar_t* dy, int64_t N, int64_t C, int64_t HW,
                                const acc_t* mean, const acc_t* invstd, const acc_t* gamma, const acc_t* beta,
                                const acc_t* k1, const acc_t* k2, const acc_t* k3, Act act, double* red,
                                scalar_t* dx);
};

template <typename scalar_t>
struct DwconvKernels {
  using acc_t = acc_of<scalar_t>;
  // Channels-last (dwconv_bn_act_kernels.h).
  static void dw_stats_pass(const scalar_t* x, const acc_t* wt, const ConvGeo& g, int64_t R, double* mean_b,
                            double* m2_b, int64_t* counts);
  static void dw_apply_pass(const scalar_t* x, const acc_t* wt, const acc_t* shift, const ConvGeo& g, Act act,
                            scalar_t* y);
  static void dw_backward_pass(const scalar_t* x, const scalar_t* dy, const acc_t* wt, const acc_t* zinit,
                               const acc_t* invstd, const acc_t* gamma, const acc_t* beta, const acc_t* k1,
                               const acc_t* k2, const acc_t* k3, const ConvGeo& g, Act act, int64_t R, double* red,
                               bool form_dz, acc_t* dz_full, double* dw_part);
  static void dw_dx_pass(const acc_t* dz, const acc_t* wt, const acc_t* wflip, const ConvGeo& g, scalar_t* dx);
  // NCHW (dwconv_bn_act_nchw_kernels.h).
  static void dw_stats_pass_nchw(const scalar_t* x, const acc_t* w, const ConvGeo& g, double* mean_p,
                                 double* m2_p);
  static void dw_apply_pass_nchw(const scalar_t* x, const acc_t* wf, const acc_t* shift, const ConvGeo& g, Act act,
                                 scalar_t* y);
  static void dw_backward_pass_nchw(const scalar_t* x, const scalar_t* dy, const acc_t* w, const acc_t* zinit,
                                    const acc_t* invstd, const acc_t* gamma, const acc_t* beta, const acc_t* k1,
                                    const acc_t* k2, const acc_t* k3, const ConvGeo& g, Act act, double* red,
                                    bool form_dz, double* dw_part, scalar_t* dx);
};

template <typename scalar_t>
struct GateScaleKernels {
  using acc_t = acc_of<scalar_t>;
  static void pool_cl(const scalar_t* x, int64_t N, int64_t H, int64_t W, int64_t C, int64_t R, double* part);
  static void pool_plane(const scalar_t* x, int64_t planes, int64_t HW, double* out);
  static void scale_cl(const scalar_t* x, int64_t N, int64_t HW, int64_t C, const acc_t* g, const acc_t* b,
                       scalar_t* y);
  static void scale_plane(const scalar_t* x, int64_t planes, int64_t HW, const acc_t* g, const acc_t* b,
                          scalar_t* y);
  static void scale_backward_cl(const scalar_t* dy, const scalar_t* x, int64_t N, int64_t H, int64_t W, int64_t C,
                                int64_t R, const acc_t* g, scalar_t* dx, double* part);
  static void scale_backward_plane(const scalar_t* dy, const scalar_t* x, int64_t planes, int64_t HW,
                                   const acc_t* g, scalar_t* dx, double* out);
};

// Eval-mode loops on folded float32 weights (eval_kernels.h); instantiated for float only.
template <typename scalar_t>
struct EvalKernels {
  static void epilogue_cl(float* y, int64_t rows, int64_t C, const float* bias, const float* res, Act act);
  static void epilogue_plane(float* y, int64_t planes, int64_t HW, int64_t C, const float* bias, const float* res,
                             Act act);
  static void dw_eval_cl(const float* x, const float* w, const float* bias, const ConvGeo& g, Act act, float* y,
                         float* pool_rows, int64_t row0, int64_t row1);
  static void direct_conv_cl(const float* x, const float* w, const float* bias, const DirectGeo& g, Act act,
                             float* y);
  static void pointwise_cl(const float* x, int64_t N, int64_t P, int64_t Cin, const float* w, bool packed,
                           const float* scale, int64_t Cout, const float* bias, const float* res,
                           int64_t res_channels, Act act, float* y);
  static void expand_dw_cl(const float* x, int64_t Cin, const float* ew, bool packed, const float* eb, Act expand_act,
                           const float* dw_w, const float* dw_b, const ConvGeo& g, Act dw_act, float* z,
                           float* pool_rows);
  static void mbconv_rows_cl(const float* x, int64_t Cin, const float* ew, bool epacked, const float* eb,
                             Act expand_act, const float* dw_w, const float* dw_b, const ConvGeo& g, Act dw_act,
                             const float* pw, bool ppacked, const float* pb, int64_t Cout, bool residual,
                             int64_t band, float* y);
  static void scale_act_cl(float* z, int64_t N, int64_t P, int64_t C, const float* gate, Act act);
  static void se_mlp(const float* pooled, int64_t N, int64_t C, int64_t R, const float* w1, const float* b1,
                     const float* w2, const float* b2, Act act, bool hard_gate, float* gate);
};
