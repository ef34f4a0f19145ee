// fastblocks_kernels::dwconv_bn_act_{forward,backward}: depthwise k x k conv (k = 3, 5, 7; stride 1
// or 2; padding same / tf_same / explicit computed in the kernel, no padded copy of x) -> BatchNorm
// -> activation, on channels-last data (dwconv_bn_act_kernels.h: vectorised over C) or NCHW data
// (dwconv_bn_act_nchw_kernels.h: one plane at a time, vectorised along W); the result has x's layout.
//
// Forward, eval: BN folded into the conv weights and bias; one pass reads x once, writes y once.
// Forward, training: pass 1 reduces per-channel (mean, M2) of the conv output per block of rows
//   (channels-last) or per plane (NCHW), merged in double in a fixed order (Chan et al.); pass 2
//   recomputes the conv with the folded weights and writes act(BN(z)). The conv output is never stored.
// Backward (memory-efficient, from x and the per-channel mean / var): recompute z, du = act' * dy;
//   training pass 1 reduces sum du, sum du * zhat, sum zhat; pass 2 forms dz and reduces dweight
//   per block, then dx comes from dz through the transposed depthwise conv (channels-last: dz is
//   stored transiently, acc dtype, only when dx is needed, and a third pass gathers dx; NCHW: dz
//   stays in a per-plane scratch buffer and pass 2 also writes dx). dgamma, dbeta, dconv_bias
//   come from the per-channel sums.
#include "fb_cpu.h"
#include "fb_cpu_ops.h"

namespace fastblocks {
namespace cpu {

namespace {

constexpr const char* kFwd = "fastblocks_kernels::dwconv_bn_act_forward";
constexpr const char* kBwd = "fastblocks_kernels::dwconv_bn_act_backward";

ConvGeo make_geo(const at::Tensor& x, const at::Tensor& weight, int64_t stride, c10::string_view padding_mode,
                 int64_t padding, const char* op) {
  const int64_t C = x.size(1), H = x.size(2), W = x.size(3);
  TORCH_CHECK(weight.dim() == 4 && weight.size(0) == C && weight.size(1) == 1 && weight.size(2) == weight.size(3),
              op, ": weight must be a depthwise kernel (C, 1, k, k) with C = ", C, ", got ", weight.sizes());
  TORCH_CHECK(weight.scalar_type() == x.scalar_type(), op, ": weight must have x's dtype ", x.scalar_type(),
              ", got ", weight.scalar_type());
  const int64_t K = weight.size(2);
  TORCH_CHECK(K == 3 || K == 5 || K == 7, op, ": kernel size must be 3, 5 or 7, got ", K);
  TORCH_CHECK(stride == 1 || stride == 2, op, ": stride must be 1 or 2, got ", stride);
  TORCH_CHECK(padding >= 0, op, ": padding must be >= 0, got ", padding);
  const Pads p = conv_pads(padding_mode, padding, K, stride, H, W);
  const int64_t Ho = (H + p.top + p.bottom - K) / stride + 1;
  const int64_t Wo = (W + p.left + p.right - K) / stride + 1;
  TORCH_CHECK(H + p.top + p.bottom >= K && W + p.left + p.right >= K && Ho > 0 && Wo > 0, op,
              ": input of spatial size (", H, ", ", W, ") is too small for a ", K, "x", K, " kernel");
  return ConvGeo{x.size(0), C, H, W, K, stride, Ho, Wo, p.top, p.left};
}

// The kernels' weight layout in the accumulation dtype: (K * K, C) tap-major for channels-last
// (a row of C weights per tap), (C, K * K) channel-major for NCHW (one plane's taps together).
at::Tensor kernel_weights(const at::Tensor& weight, int64_t C, int64_t K, at::ScalarType acc, bool cl) {
  const at::Tensor w = weight.reshape({C, K * K}).to(acc);
  return cl ? w.t().contiguous() : w.contiguous();
}

// The layout the kernels run on: channels-last or NCHW-contiguous.
at::MemoryFormat kernel_format(bool cl) {
  return cl ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
}

at::Tensor kernel_layout(const at::Tensor& t, bool cl) { return t.contiguous(kernel_format(cl)); }

// Which kernels run an NCHW input: the plane kernels (vectorised along W) when an output row
// fills most of its vectors, else the channels-last kernels (x converted once, the result
// converted back): with rows much shorter than a vector, most lanes of the plane kernels idle.
// FASTBLOCKS_CPU_DW_NCHW=planes | channels_last forces one (read per call: the tests run both).
bool nchw_runs_as_planes(const ConvGeo& g) {
  const char* env = std::getenv("FASTBLOCKS_CPU_DW_NCHW");
  if (env != nullptr && std::string(env) == "planes") return true;
  if (env != nullptr && std::string(env) == "channels_last") return false;
  const int64_t lanes = isa_level() >= 2 ? 16 : 8;  // float lanes of the copy that runs
  const int64_t wv = (g.Wo + lanes - 1) / lanes * lanes;
  return 4 * g.Wo >= 3 * wv;
}

at::Tensor from_doubles(const double* v, int64_t n, at::ScalarType acc) {
  at::Tensor t = at::empty({n}, at::TensorOptions().dtype(at::kDouble));
  std::memcpy(t.data_ptr<double>(), v, sizeof(double) * n);
  return t.to(acc);
}

}  // namespace

Tensor3 dwconv_bn_act_forward(const at::Tensor& x_in, const at::Tensor& weight, const TensorOpt& bn_weight,
                              const TensorOpt& bn_bias, const TensorOpt& running_mean,
                              const TensorOpt& running_var, const TensorOpt& conv_bias, int64_t stride,
                              c10::string_view padding_mode, int64_t padding, bool training, double eps,
                              c10::string_view act_name) {
  check_x(x_in, kFwd);
  const Act act = parse_act(act_name);
  const bool cl_in = is_channels_last(x_in);
  const ConvGeo g = make_geo(x_in, weight, stride, padding_mode, padding, kFwd);
  const bool cl = cl_in || !nchw_runs_as_planes(g);  // the layout the kernels run on
  const at::Tensor x = kernel_layout(x_in, cl);
  const int64_t C = g.C;
  const auto acc = acc_type_of(x.scalar_type());
  const at::Tensor wt = kernel_weights(weight, C, g.K, acc, cl);
  const at::Tensor gamma = per_channel(bn_weight, C, acc, 1.0, kFwd, "bn_weight");
  const at::Tensor beta = per_channel(bn_bias, C, acc, 0.0, kFwd, "bn_bias");
  const at::Tensor cb = per_channel(conv_bias, C, acc, 0.0, kFwd, "conv_bias");
  at::Tensor mean, var;
  at::Tensor y = at::empty({g.N, C, g.Ho, g.Wo}, x.options().memory_format(kernel_format(cl)));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "dwconv_bn_act_forward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    if (training) {
      TORCH_CHECK(g.N * g.Ho * g.Wo > 1, kFwd, ": training needs more than 1 value per channel");
      // Partials per block of output rows (channels-last) or per plane (NCHW: a block is one n).
      const int64_t R = rows_per_block(g.Wo), nb = cl ? (g.N * g.Ho + R - 1) / R : g.N;
      std::vector<double> mean_b(nb * C), m2_b(nb * C), m(C), v(C);
      std::vector<int64_t> counts(nb, g.Ho * g.Wo);
      if (cl) {
        FB_ISA_CALL(DwconvKernels<scalar_t>::dw_stats_pass, x.const_data_ptr<scalar_t>(), wt.const_data_ptr<acc_t>(), g, R,
                    mean_b.data(), m2_b.data(), counts.data());
      } else {
        FB_ISA_CALL(DwconvKernels<scalar_t>::dw_stats_pass_nchw, x.const_data_ptr<scalar_t>(), wt.const_data_ptr<acc_t>(), g,
                    mean_b.data(), m2_b.data());
      }
      combine_blocks(mean_b, m2_b, counts, C, m.data(), v.data());
      mean = (from_doubles(m.data(), C, at::kDouble) + cb.to(at::kDouble)).to(acc);
      var = from_doubles(v.data(), C, acc);
    } else {
      TORCH_CHECK(running_mean.has_value() && running_var.has_value(), kFwd,
                  ": training=False needs running_mean and running_var");
      mean = per_channel(running_mean, C, acc, 0.0, kFwd, "running_mean").clone();
      var = per_channel(running_var, C, acc, 1.0, kFwd, "running_var").clone();
    }
    // u = (conv(x) + cb - mean) * scale + beta = conv(x; w * scale) + shift.
    const at::Tensor scale = gamma * (var + eps).rsqrt();
    const at::Tensor shift = (beta + (cb - mean) * scale).contiguous();
    const at::Tensor wf = (wt * (cl ? scale.unsqueeze(0) : scale.unsqueeze(1))).contiguous();
    if (cl) {
      FB_ISA_CALL(DwconvKernels<scalar_t>::dw_apply_pass, x.const_data_ptr<scalar_t>(), wf.const_data_ptr<acc_t>(),
                  shift.const_data_ptr<acc_t>(), g, act, y.mutable_data_ptr<scalar_t>());
    } else {
      FB_ISA_CALL(DwconvKernels<scalar_t>::dw_apply_pass_nchw, x.const_data_ptr<scalar_t>(), wf.const_data_ptr<acc_t>(),
                  shift.const_data_ptr<acc_t>(), g, act, y.mutable_data_ptr<scalar_t>());
    }
  });
  return {cl_in ? y : y.contiguous(), mean, var};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> dwconv_bn_act_backward(
    const at::Tensor& dy_in, const at::Tensor& x_in, const at::Tensor& weight, const TensorOpt& bn_weight,
    const TensorOpt& bn_bias, const TensorOpt& conv_bias, const at::Tensor& mean_in, const at::Tensor& var_in,
    int64_t stride, c10::string_view padding_mode, int64_t padding, bool training, double eps,
    c10::string_view act_name, std::array<bool, 5> mask) {
  check_x(x_in, kBwd);
  const Act act = parse_act(act_name);
  const bool cl_in = is_channels_last(x_in);
  const ConvGeo g = make_geo(x_in, weight, stride, padding_mode, padding, kBwd);
  const bool cl = cl_in || !nchw_runs_as_planes(g);  // the layout the kernels run on
  const at::Tensor x = kernel_layout(x_in, cl);
  const int64_t C = g.C, KK = g.K * g.K, M = g.N * g.Ho * g.Wo;
  TORCH_CHECK(dy_in.dim() == 4 && dy_in.size(0) == g.N && dy_in.size(1) == C && dy_in.size(2) == g.Ho &&
                  dy_in.size(3) == g.Wo,
              kBwd, ": dy must have shape (", g.N, ", ", C, ", ", g.Ho, ", ", g.Wo, "), got ", dy_in.sizes());
  const at::Tensor dy = kernel_layout(dy_in.to(x.scalar_type()), cl);
  const auto acc = acc_type_of(x.scalar_type());
  const at::Tensor wt = kernel_weights(weight, C, g.K, acc, cl);
  const at::Tensor gamma = per_channel(bn_weight, C, acc, 1.0, kBwd, "bn_weight");
  const at::Tensor beta = per_channel(bn_bias, C, acc, 0.0, kBwd, "bn_bias");
  const at::Tensor cb = per_channel(conv_bias, C, acc, 0.0, kBwd, "conv_bias");
  const at::Tensor mean = per_channel(mean_in, C, acc, 0.0, kBwd, "mean");
  const at::Tensor var = per_channel(var_in, C, acc, 1.0, kBwd, "var");
  const at::Tensor invstd = (var + eps).rsqrt();
  const at::Tensor zinit = (cb - mean).contiguous();
  const at::Tensor k1 = (gamma * invstd).contiguous();
  const bool need_dx = mask[0], need_dw = mask[1], need_bn = mask[2] || mask[3] || mask[4];
  at::Tensor dx, dw, dgamma, dbeta, dcb;
  if (!need_dx && !need_dw && !need_bn) return {dx, dw, dgamma, dbeta, dcb};
  // Partials per block of output rows (channels-last) or per n (NCHW: [N][...][C] per plane).
  const int64_t R = rows_per_block(g.Wo), nb = cl ? (g.N * g.Ho + R - 1) / R : g.N;
  if (need_dx) dx = at::empty({g.N, C, g.H, g.W}, x.options().memory_format(kernel_format(cl)));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "dwconv_bn_act_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto* xp = x.const_data_ptr<scalar_t>();
    const auto* dyp = dy.const_data_ptr<scalar_t>();
    const acc_t* w = wt.const_data_ptr<acc_t>();
    std::vector<double> red(nb * 3 * C), sums(3 * C);
    std::vector<double> dw_part;
    at::Tensor dz;  // channels-last only: dz for the dx pass
    // One pass over (x, dy): sums into red (when given); with form_dz also dw partials and dz / dx.
    auto pass = [&](const acc_t* k1p, const acc_t* k2p, const acc_t* k3p, double* redp, bool form_dz) {
      double* dwp = form_dz && need_dw ? dw_part.data() : nullptr;
      if (cl) {
        acc_t* dzp = form_dz && need_dx ? dz.mutable_data_ptr<acc_t>() : nullptr;
        FB_ISA_CALL(DwconvKernels<scalar_t>::dw_backward_pass, xp, dyp, w, zinit.const_data_ptr<acc_t>(),
                    invstd.const_data_ptr<acc_t>(), gamma.const_data_ptr<acc_t>(), beta.const_data_ptr<acc_t>(),
                    k1p, k2p, k3p, g, act, R, redp, form_dz, dzp, dwp);
      } else {
        scalar_t* dxp = form_dz && need_dx ? dx.mutable_data_ptr<scalar_t>() : nullptr;
        FB_ISA_CALL(DwconvKernels<scalar_t>::dw_backward_pass_nchw, xp, dyp, w, zinit.const_data_ptr<acc_t>(),
                    invstd.const_data_ptr<acc_t>(), gamma.const_data_ptr<acc_t>(), beta.const_data_ptr<acc_t>(),
                    k1p, k2p, k3p, g, act, redp, form_dz, dwp, dxp);
      }
    };
    at::Tensor k2, k3;
    if (training) {
      pass(nullptr, nullptr, nullptr, red.data(), false);
      sum_blocks(red, nb, 3 * C, sums.data());
      dbeta = from_doubles(sums.data(), C, acc);
      dgamma = from_doubles(sums.data() + C, C, acc);
      // sum over the batch of dz = k1 * (du - sum du / M - zhat * sum du zhat / M).
      const at::Tensor sduz = from_doubles(sums.data() + C, C, at::kDouble);
      const at::Tensor sz = from_doubles(sums.data() + 2 * C, C, at::kDouble);
      dcb = (-k1.to(at::kDouble) * sduz * sz / static_cast<double>(M)).to(acc);
      k2 = (dbeta / static_cast<double>(M)).contiguous();
      k3 = (invstd * dgamma / static_cast<double>(M)).contiguous();
    } else {
      k2 = at::zeros({C}, at::TensorOptions().dtype(acc));
      k3 = k2;
    }
    if (training && !need_dx && !need_dw) return;
    if (need_dx && cl) dz = at::empty({M * C}, at::TensorOptions().dtype(acc));
    if (need_dw) dw_part.resize(nb * KK * C);
    pass(k1.const_data_ptr<acc_t>(), k2.const_data_ptr<acc_t>(), k3.const_data_ptr<acc_t>(),
         training ? nullptr : red.data(), need_dx || need_dw);
    if (!training) {
      sum_blocks(red, nb, 3 * C, sums.data());
      dbeta = from_doubles(sums.data(), C, acc);
      dgamma = from_doubles(sums.data() + C, C, acc);
      dcb = k1 * dbeta;
    }
    if (need_dw) {
      std::vector<double> dwsum(KK * C);
      sum_blocks(dw_part, nb, KK * C, dwsum.data());
      const at::Tensor d = from_doubles(dwsum.data(), KK * C, acc);
      dw = (cl ? d.reshape({g.K, g.K, C}).permute({2, 0, 1}) : d).reshape({C, 1, g.K, g.K}).contiguous();
    }
    if (need_dx && cl) {
      // Flipped taps for the stride-1 transposed conv: wflip[kh, kw] = w[K - 1 - kh, K - 1 - kw].
      const at::Tensor wflip = wt.flip({0}).contiguous();
      FB_ISA_CALL(DwconvKernels<scalar_t>::dw_dx_pass, dz.const_data_ptr<acc_t>(), w, wflip.const_data_ptr<acc_t>(), g,
                  dx.mutable_data_ptr<scalar_t>());
    }
  });
  if (need_dx && !cl_in) dx = dx.contiguous();
  if (!mask[2]) dgamma = at::Tensor();
  if (!mask[3]) dbeta = at::Tensor();
  if (!mask[4]) dcb = at::Tensor();
  return {dx, dw, dgamma, dbeta, dcb};
}

}  // namespace cpu
}  // namespace fastblocks
