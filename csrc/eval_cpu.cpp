// fastblocks_kernels::eval_epilogue_ and ::dw_eval: the CPU float32 kernels of the eval path
// (fastblocks/inference/), on weights with BatchNorm already folded in. No autograd: the Python
// side calls them only where no gradient is needed. Loops in eval_kernels.h.
#include "eval_cpu_ops.h"
#include "fb_cpu.h"

#include <ATen/ops/from_blob.h>

#include <cstdlib>


namespace fastblocks {
namespace cpu {

namespace {
bool channels_last_dense(const at::Tensor& t) {
  return t.dim() == 4 && t.is_contiguous(at::MemoryFormat::ChannelsLast);
}

at::Tensor float_vector(const at::Tensor& t, int64_t c, const char* op, const char* name) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kFloat, op, ": ", name,
              " must be a float32 CPU tensor, got ", t.scalar_type(), " on ", t.device());
  TORCH_CHECK(t.numel() == c, op, ": ", name, " must have ", c, " elements, got ", t.numel());
  return t.reshape({c}).contiguous();
}
}  // namespace

// y (channels_last or contiguous, float32) = act(y + bias (+ res)) in place; res has y's layout.
void epilogue_inplace(at::Tensor& y, const float* bias, const float* res, Act act) {
  if (y.numel() == 0) return;
  const int64_t N = y.size(0), C = y.size(1), HW = y.size(2) * y.size(3);
  float* yp = y.mutable_data_ptr<float>();
  if (!y.is_contiguous()) {
    FB_ISA_CALL(EvalKernels<float>::epilogue_cl, yp, N * HW, C, bias, res, act);
  } else {
    FB_ISA_CALL(EvalKernels<float>::epilogue_plane, yp, N * C, HW, C, bias, res, act);
  }
}

at::Tensor& eval_epilogue_(at::Tensor& y, const at::Tensor& bias_in, const std::optional<at::Tensor>& residual,
                           c10::string_view act_name) {
  const char* op = "fastblocks_kernels::eval_epilogue_";
  TORCH_CHECK(y.device().is_cpu() && y.scalar_type() == at::kFloat, op, ": y must be a float32 CPU tensor, got ",
              y.scalar_type(), " on ", y.device());
  TORCH_CHECK(y.dim() == 4, op, ": y must be 4-D (N, C, H, W), got ", y.dim(), "-D");
  const bool cl = channels_last_dense(y) && !y.is_contiguous();
  TORCH_CHECK(cl || y.is_contiguous(), op, ": y must be contiguous or channels_last, got strides ", y.strides());
  const Act act = parse_act(act_name);
  const int64_t N = y.size(0), C = y.size(1), HW = y.size(2) * y.size(3);
  const at::Tensor bias = float_vector(bias_in, C, op, "bias");
  const float* res = nullptr;
  if (residual.has_value() && residual->defined()) {
    TORCH_CHECK(residual->scalar_type() == at::kFloat && residual->device().is_cpu(), op,
                ": residual must be a float32 CPU tensor");
    const bool same_layout = cl ? residual->is_contiguous(at::MemoryFormat::ChannelsLast) : residual->is_contiguous();
    TORCH_CHECK(residual->sizes() == y.sizes() && same_layout, op, ": residual must have y's shape ", y.sizes(),
                " and memory layout (", cl ? "channels_last" : "contiguous", "), got sizes ", residual->sizes(),
                " strides ", residual->strides());
    res = residual->const_data_ptr<float>();
  }
  (void)N;
  (void)HW;
  epilogue_inplace(y, bias.const_data_ptr<float>(), res, act);
  return y;
}

namespace {
// Per-thread scratch memory of mbconv_eval: the depthwise output lives only inside one call. At
// batch 8 it passes 32 MB, where glibc serves every allocation by a fresh mmap, and touching its
// pages cost ~12 ms of a 96-channel 112x112 layer that computes in ~2 ms (2 threads). Kept until
// the thread exits: the largest block's depthwise output.
thread_local Scratch depthwise_scratch;

// One depthwise eval call: checks and allocations, the output rows, then the pool.
struct DwRun {
  at::Tensor w, bias, y, rows, pooled;
  ConvGeo g;
  Act act;
  bool pool;

  // y_mem (optional): scratch for the output; else a fresh tensor.
  // channels: the depthwise layer's channels, x's own (or, for run_expanded, its expansion's).
  DwRun(const at::Tensor& x, int64_t channels, const at::Tensor& taps, const at::Tensor& bias_in, int64_t kernel_size,
        int64_t stride, at::IntArrayRef padding, c10::string_view act_name, bool pool_, Scratch* y_mem = nullptr)
      : act(parse_act(act_name)), pool(pool_) {
    const char* op = "fastblocks_kernels::dw_eval";
    TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == at::kFloat, op, ": x must be a float32 CPU tensor, got ",
                x.scalar_type(), " on ", x.device());
    TORCH_CHECK(channels_last_dense(x), op, ": x must be a 4-D channels_last tensor, got sizes ", x.sizes(),
                " strides ", x.strides());
    TORCH_CHECK(kernel_size >= 1 && kernel_size * kernel_size <= kMaxTaps, op,
                ": kernel_size must be in [1, 7], got ", kernel_size);
    TORCH_CHECK(stride >= 1, op, ": stride must be >= 1, got ", stride);
    TORCH_CHECK(padding.size() == 4, op, ": padding must be (top, bottom, left, right), got ", padding.size(),
                " values");
    for (auto p : padding)
      TORCH_CHECK(p >= 0 && p < kernel_size, op, ": padding must be in [0, kernel_size), got ", p);
    const int64_t N = x.size(0), C = channels, H = x.size(2), W = x.size(3), K = kernel_size;
    TORCH_CHECK(H + padding[0] + padding[1] >= K && W + padding[2] + padding[3] >= K, op,
                ": the padded input is smaller than the kernel");
    const int64_t Ho = (H + padding[0] + padding[1] - K) / stride + 1;
    const int64_t Wo = (W + padding[2] + padding[3] - K) / stride + 1;
    TORCH_CHECK(taps.device().is_cpu() && taps.scalar_type() == at::kFloat && taps.dim() == 2 &&
                    taps.size(0) == K * K && taps.size(1) == C,
                op, ": taps must be a float32 CPU tensor of shape (", K * K, ", ", C, "), got ", taps.sizes());
    w = taps.contiguous();
    bias = float_vector(bias_in, C, op, "bias");
    y = y_mem == nullptr ? at::empty({N, C, Ho, Wo}, x.options().memory_format(at::MemoryFormat::ChannelsLast))
                         : at::from_blob(y_mem->get(N * Ho * Wo * C), {N, Ho, Wo, C}, x.options()).permute({0, 3, 1, 2});
    pooled = at::empty({pool ? N : 0, C}, x.options());
    if (pool) rows = at::zeros({N * Ho, C}, x.options());
    g = ConvGeo{N, C, H, W, K, stride, Ho, Wo, padding[0], padding[2]};
  }

  // Output rows [row0, row1) of the N * Ho rows, reading x (x's shape as given to the constructor).
  void run(const at::Tensor& x, int64_t row0, int64_t row1) {
    if (row1 <= row0 || y.numel() == 0) return;
    FB_ISA_CALL(EvalKernels<float>::dw_eval_cl, x.const_data_ptr<float>(), w.const_data_ptr<float>(),
                bias.const_data_ptr<float>(), g, act, y.mutable_data_ptr<float>(),
                pool ? rows.mutable_data_ptr<float>() : nullptr, row0, row1);
  }

  // All output rows from x (N, C_in, H, W) through the expansion 1x1 conv ew / eb / expand_act
  // (pointwise_eval's weight layouts; C_out = this layer's channels), fused (expand_dw_cl).
  void run_expanded(const at::Tensor& x, const at::Tensor& ew, const at::Tensor& eb, Act expand_act) {
    if (y.numel() == 0) return;
    FB_ISA_CALL(EvalKernels<float>::expand_dw_cl, x.const_data_ptr<float>(), x.size(1), ew.const_data_ptr<float>(),
                ew.dim() == 3, eb.const_data_ptr<float>(), expand_act, w.const_data_ptr<float>(),
                bias.const_data_ptr<float>(), g, act, y.mutable_data_ptr<float>(),
                pool ? rows.mutable_data_ptr<float>() : nullptr);
  }

  // The per-channel means from the row sums, in row order: deterministic whatever the thread count.
  void finish() {
    if (!pool) return;
    if (y.numel() == 0) {
      pooled.zero_();
      return;
    }
    const int64_t N = g.N, C = g.C, Ho = g.Ho;
    const float* rp = rows.const_data_ptr<float>();
    float* out = pooled.mutable_data_ptr<float>();
    const float inv = 1.0f / static_cast<float>(Ho * g.Wo);
    at::parallel_for(0, N * C, std::max<int64_t>(256, (1 << 16) / std::max<int64_t>(Ho, 1)), [&](int64_t j0, int64_t j1) {
      for (int64_t j = j0; j < j1; ++j) {
        const int64_t n = j / C, c = j % C;
        float acc = 0;
        for (int64_t r = 0; r < Ho; ++r) acc += rp[(n * Ho + r) * C + c];
        out[j] = acc * inv;
      }
    });
  }
};

std::tuple<at::Tensor, at::Tensor> dw_eval_into(const at::Tensor& x, const at::Tensor& taps, const at::Tensor& bias,
                                                int64_t kernel_size, int64_t stride, at::IntArrayRef padding,
                                                c10::string_view act, bool pool, Scratch* y_mem) {
  DwRun dw(x, x.size(1), taps, bias, kernel_size, stride, padding, act, pool, y_mem);
  dw.run(x, 0, dw.g.N * dw.g.Ho);
  dw.finish();
  return {dw.y, dw.pooled};
}
}  // namespace

std::tuple<at::Tensor, at::Tensor> dw_eval(const at::Tensor& x, const at::Tensor& taps, const at::Tensor& bias_in,
                                           int64_t kernel_size, int64_t stride, at::IntArrayRef padding,
                                           c10::string_view act_name, bool pool) {
  return dw_eval_into(x, taps, bias_in, kernel_size, stride, padding, act_name, pool, nullptr);
}

at::Tensor direct_conv_eval(const at::Tensor& x, const at::Tensor& taps, const at::Tensor& bias_in,
                            int64_t kernel_size, int64_t stride, at::IntArrayRef padding, c10::string_view act_name) {
  const char* op = "fastblocks_kernels::direct_conv_eval";
  TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == at::kFloat && x.dim() == 4, op,
              ": x must be a 4-D float32 CPU tensor, got ", x.dim(), "-D ", x.scalar_type(), " on ", x.device());
  TORCH_CHECK(kernel_size >= 1 && kernel_size <= 7, op, ": kernel_size must be in [1, 7], got ", kernel_size);
  TORCH_CHECK(stride >= 1, op, ": stride must be >= 1, got ", stride);
  TORCH_CHECK(padding.size() == 4, op, ": padding must be (top, bottom, left, right), got ", padding.size(),
              " values");
  for (auto p : padding) TORCH_CHECK(p >= 0 && p < kernel_size, op, ": padding must be in [0, kernel_size), got ", p);
  const int64_t N = x.size(0), Cin = x.size(1), H = x.size(2), W = x.size(3), K = kernel_size;
  TORCH_CHECK(Cin >= 1 && Cin <= 4, op, ": x must have 1 to 4 channels (a stem's input), got ", Cin);
  TORCH_CHECK(taps.device().is_cpu() && taps.scalar_type() == at::kFloat && taps.dim() == 2 &&
                  taps.size(0) == K * K * Cin,
              op, ": taps must be a float32 CPU tensor of shape (", K * K * Cin, ", C_out), got ", taps.sizes());
  const int64_t Cout = taps.size(1);
  TORCH_CHECK(H + padding[0] + padding[1] >= K && W + padding[2] + padding[3] >= K, op,
              ": the padded input is smaller than the kernel");
  const at::Tensor w = taps.contiguous();
  const at::Tensor bias = float_vector(bias_in, Cout, op, "bias");
  const Act act = parse_act(act_name);
  const int64_t Ho = (H + padding[0] + padding[1] - K) / stride + 1;
  const int64_t Wo = (W + padding[2] + padding[3] - K) / stride + 1;
  at::Tensor y = at::empty({N, Cout, Ho, Wo}, x.options().memory_format(at::MemoryFormat::ChannelsLast));
  if (y.numel() == 0) return y;
  const DirectGeo g{N, Cin, H, W, K, stride, Ho, Wo, padding[0], padding[2], Cout,
                    x.stride(0), x.stride(1), x.stride(2), x.stride(3)};
  FB_ISA_CALL(EvalKernels<float>::direct_conv_cl, x.const_data_ptr<float>(), w.const_data_ptr<float>(),
              bias.const_data_ptr<float>(), g, act, y.mutable_data_ptr<float>());
  return y;
}

namespace {
// A channels_last 1x1 conv with its epilogue fused (pointwise_cl): x (N, C_in, H, W), wt (C_in, C_out);
// `scale` ((N, C_in) floats, optional) scales x's channels per image (an SE gate), applied to the
// weights inside the kernel's tiles; `res` (channels_last, res_channels <= C_out channels) is added
// to the first res_channels output channels. Returns a fresh tensor.
at::Tensor pointwise_into(const at::Tensor& x, const at::Tensor& wt, const at::Tensor& bias, const float* res,
                          int64_t res_channels, Act act, const float* scale) {
  const int64_t N = x.size(0), Cin = x.size(1), H = x.size(2), W = x.size(3), Cout = bias.numel();
  at::Tensor y = at::empty({N, Cout, H, W}, x.options().memory_format(at::MemoryFormat::ChannelsLast));
  if (y.numel() == 0) return y;
  // 1x1 maps without a per-image scale: the N images are the pixels of one, so each weight vector
  // is loaded once for a tile of images instead of once per image
  const bool images_as_pixels = H * W == 1 && scale == nullptr;
  FB_ISA_CALL(EvalKernels<float>::pointwise_cl, x.const_data_ptr<float>(), images_as_pixels ? 1 : N,
              images_as_pixels ? N : H * W, Cin, wt.const_data_ptr<float>(), wt.dim() == 3, scale, Cout,
              bias.const_data_ptr<float>(), res, res_channels, act, y.mutable_data_ptr<float>());
  return y;
}

// The output channels of 1x1 conv weights `wt` for C_in input channels, checked: (C_in, C_out)
// row-major, or packed [ceil(C_out / 64)][C_in][64] (C_out then = bias_numel), contiguous float32 CPU.
int64_t pointwise_channels(const at::Tensor& wt, int64_t cin, int64_t bias_numel, const char* op, const char* name) {
  TORCH_CHECK(wt.device().is_cpu() && wt.scalar_type() == at::kFloat && wt.is_contiguous() &&
                  ((wt.dim() == 2 && wt.size(0) == cin) ||
                   (wt.dim() == 3 && wt.size(0) == (bias_numel + 63) / 64 && wt.size(1) == cin && wt.size(2) == 64)),
              op, ": ", name, " must be a contiguous float32 CPU tensor of shape (", cin,
              ", C_out) or packed (ceil(C_out / 64), ", cin, ", 64) with C_out = the bias' ", bias_numel,
              " elements, got ", wt.scalar_type(), " ", wt.sizes(), wt.is_contiguous() ? "" : " (not contiguous)");
  return wt.dim() == 2 ? wt.size(1) : bias_numel;
}

void check_block_tensor(const at::Tensor& t, const char* name, int64_t dim0, int64_t dim1) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kFloat && t.is_contiguous(), "fastblocks_kernels::",
              "mbconv_eval: ", name, " must be a contiguous float32 CPU tensor");
  TORCH_CHECK(t.dim() == (dim1 < 0 ? 1 : 2) && t.size(0) == dim0 && (dim1 < 0 || t.size(1) == dim1),
              "fastblocks_kernels::mbconv_eval: ", name, " has shape ", t.sizes(), ", expected (", dim0,
              dim1 < 0 ? "" : ", ", dim1 < 0 ? "" : std::to_string(dim1), ")");
}
}  // namespace

at::Tensor pointwise_eval(const at::Tensor& x, const at::Tensor& wt, const at::Tensor& bias_in,
                          const std::optional<at::Tensor>& residual, c10::string_view act_name,
                          const std::optional<at::Tensor>& scale_in) {
  const char* op = "fastblocks_kernels::pointwise_eval";
  TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == at::kFloat && channels_last_dense(x), op,
              ": x must be a 4-D channels_last float32 CPU tensor, got ", x.scalar_type(), " sizes ", x.sizes(),
              " strides ", x.strides());
  const at::Tensor w = wt.dim() == 2 ? wt.contiguous() : wt;
  const int64_t Cout = pointwise_channels(w, x.size(1), bias_in.numel(), op, "wt");
  const at::Tensor bias = float_vector(bias_in, Cout, op, "bias");
  const Act act = parse_act(act_name);
  const float* res = nullptr;
  if (residual.has_value() && residual->defined()) {
    const std::vector<int64_t> shape{x.size(0), Cout, x.size(2), x.size(3)};
    TORCH_CHECK(residual->device().is_cpu() && residual->scalar_type() == at::kFloat &&
                    residual->sizes() == at::IntArrayRef(shape) && channels_last_dense(*residual),
                op, ": residual must be a channels_last float32 CPU tensor of shape ", at::IntArrayRef(shape),
                ", got ", residual->scalar_type(), " sizes ", residual->sizes(), " strides ", residual->strides());
    res = residual->const_data_ptr<float>();
  }
  if (!(scale_in.has_value() && scale_in->defined())) return pointwise_into(x, w, bias, res, Cout, act, nullptr);
  TORCH_CHECK(scale_in->device().is_cpu() && scale_in->scalar_type() == at::kFloat &&
                  scale_in->numel() == x.size(0) * x.size(1),
              op, ": scale must be a float32 CPU tensor of (N, C_in) = (", x.size(0), ", ", x.size(1), ") values, got ",
              scale_in->scalar_type(), " ", scale_in->sizes());
  const at::Tensor scale = scale_in->reshape({x.size(0), x.size(1)}).contiguous();
  return pointwise_into(x, w, bias, res, Cout, act, scale.const_data_ptr<float>());
}

namespace {
// Output rows per work item of mbconv_rows_cl for an SE-free block, or 0 where the separate
// passes serve better: maps of the depthwise input up to 256 KB an image (they stay in cache
// between the passes; 7x7x960 blocks at batch 8 ran 2-3% slower in one pass); bands only split
// images where images alone would leave threads unevenly loaded, and with an expansion a band
// must be long enough that the K - S input rows it expands again (shared with the next band)
// stay under 1/8 of its own.
int64_t rows_band(const ConvGeo& g, bool expand) {
  if (g.H * g.W * g.C <= (int64_t{1} << 16)) return 0;
  const int64_t nt = at::get_num_threads();
  int64_t bands = 1;
  while ((g.N * bands) % nt != 0 && g.N * bands < 4 * nt) ++bands;
  bands = std::min(bands, std::max<int64_t>(g.Ho, 1));
  const int64_t band = (g.Ho + bands - 1) / bands;
  if (bands > 1 && expand && 8 * (g.K - g.S) > band * g.S) return 0;
  return std::max<int64_t>(band, 1);
}
}  // namespace

at::Tensor mbconv_eval(const at::Tensor& x, const std::optional<at::Tensor>& expand_wt,
                       const std::optional<at::Tensor>& expand_bias, c10::string_view expand_act,
                       const at::Tensor& dw_taps, const at::Tensor& dw_bias, int64_t kernel_size, int64_t stride,
                       at::IntArrayRef padding, c10::string_view dw_act, const std::optional<at::Tensor>& se_w1,
                       const std::optional<at::Tensor>& se_b1, const std::optional<at::Tensor>& se_w2,
                       const std::optional<at::Tensor>& se_b2, c10::string_view se_act, c10::string_view se_gate,
                       c10::string_view gate_act, const at::Tensor& proj_wt, const at::Tensor& proj_bias,
                       bool residual) {
  const char* op = "fastblocks_kernels::mbconv_eval";
  TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == at::kFloat && channels_last_dense(x), op,
              ": x must be a 4-D channels_last float32 CPU tensor, got ", x.scalar_type(), " sizes ", x.sizes(),
              " strides ", x.strides());
  const int64_t N = x.size(0), Cin = x.size(1);
  const bool expand = expand_wt.has_value() && expand_wt->defined();
  const bool se = se_w1.has_value() && se_w1->defined();
  int64_t E = Cin;
  if (expand) {
    TORCH_CHECK(expand_bias.has_value() && expand_bias->defined(), op, ": expand_bias is required with expand_wt");
    E = pointwise_channels(*expand_wt, Cin, expand_bias->numel(), op, "expand_wt");
    check_block_tensor(*expand_bias, "expand_bias", E, -1);
  }
  DwRun dw(x, E, dw_taps, dw_bias, kernel_size, stride, padding, dw_act, se, &depthwise_scratch);
  const ConvGeo& g = dw.g;
  const int64_t Cout = pointwise_channels(proj_wt, E, proj_bias.numel(), op, "proj_wt");
  check_block_tensor(proj_bias, "proj_bias", Cout, -1);
  if (residual) {
    TORCH_CHECK(Cout >= Cin && g.Ho == g.H && g.Wo == g.W, op,
                ": residual needs an output as large as x (C_out >= C_in, same H, W), got ", Cout, " channels ",
                g.Ho, "x", g.Wo, " vs ", x.sizes());
  }
  const float* res = residual ? x.const_data_ptr<float>() : nullptr;
  const Act after_gate = parse_act(gate_act);
  TORCH_CHECK(se || after_gate == Act::Identity, op, ": gate_act needs the SE (se_w1), got ", std::string(gate_act));
  // SE-free blocks: no intermediate map stored whole (mbconv_rows_cl), mobilenetv2 blocks
  // 1.02-1.14x at batch 8 and 1.02-1.09x at batch 1 (112x112 to 28x28 maps)
  const int64_t band = se ? 0 : rows_band(g, expand);
  if (band > 0) {
    at::Tensor y = at::empty({N, Cout, g.Ho, g.Wo}, x.options().memory_format(at::MemoryFormat::ChannelsLast));
    if (y.numel() == 0) return y;
    FB_ISA_CALL(EvalKernels<float>::mbconv_rows_cl, x.const_data_ptr<float>(), Cin,
                expand ? expand_wt->const_data_ptr<float>() : nullptr, expand && expand_wt->dim() == 3,
                expand ? expand_bias->const_data_ptr<float>() : nullptr, parse_act(expand_act),
                dw.w.const_data_ptr<float>(), dw.bias.const_data_ptr<float>(), g, dw.act,
                proj_wt.const_data_ptr<float>(), proj_wt.dim() == 3, proj_bias.const_data_ptr<float>(), Cout,
                residual, band, y.mutable_data_ptr<float>());
    return y;
  }
  if (expand) {
    // the expanded map is never stored whole (expand_dw_cl): mobilenetv2 blocks 1.03-1.5x at
    // batch 8, mobilenetv3 1.0-1.2x at batch 1
    dw.run_expanded(x, *expand_wt, *expand_bias, parse_act(expand_act));
  } else {
    dw.run(x, 0, g.N * g.Ho);
  }
  dw.finish();
  at::Tensor z = dw.y, pooled = dw.pooled;
  const int64_t C = E, P = g.Ho * g.Wo;
  if (!se) return pointwise_into(z, proj_wt, proj_bias, res, Cin, Act::Identity, nullptr);
  TORCH_CHECK(se_w2.has_value() && se_w2->defined(), op, ": se_w2 is required with se_w1");
  TORCH_CHECK(se_w1->dim() == 2, op, ": se_w1 must be (R, C), got ", se_w1->sizes());
  const int64_t R = se_w1->size(0);
  check_block_tensor(*se_w1, "se_w1", R, C);
  check_block_tensor(*se_w2, "se_w2", C, R);
  const bool has_b1 = se_b1.has_value() && se_b1->defined(), has_b2 = se_b2.has_value() && se_b2->defined();
  if (has_b1) check_block_tensor(*se_b1, "se_b1", R, -1);
  if (has_b2) check_block_tensor(*se_b2, "se_b2", C, -1);
  TORCH_CHECK(se_gate == "sigmoid" || se_gate == "hard_sigmoid", op,
              ": se_gate must be 'sigmoid' or 'hard_sigmoid', got ", std::string(se_gate));
  at::Tensor gate = at::empty({N, C}, x.options());
  FB_ISA_CALL(EvalKernels<float>::se_mlp, pooled.const_data_ptr<float>(), N, C, R, se_w1->const_data_ptr<float>(),
              has_b1 ? se_b1->const_data_ptr<float>() : nullptr, se_w2->const_data_ptr<float>(),
              has_b2 ? se_b2->const_data_ptr<float>() : nullptr, parse_act(se_act), se_gate == "hard_sigmoid",
              gate.mutable_data_ptr<float>());
  if (after_gate != Act::Identity) {  // act(z * gate): the gate cannot move into the weights
    FB_ISA_CALL(EvalKernels<float>::scale_act_cl, z.mutable_data_ptr<float>(), N, P, C, gate.const_data_ptr<float>(),
                after_gate);
    return pointwise_into(z, proj_wt, proj_bias, res, Cin, Act::Identity, nullptr);
  }
  // The gate scales the projection's weight vectors inside its tiles: z is never rewritten.
  return pointwise_into(z, proj_wt, proj_bias, res, Cin, Act::Identity, gate.const_data_ptr<float>());
}

}  // namespace cpu
}  // namespace fastblocks
