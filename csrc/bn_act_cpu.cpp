// fastblocks_kernels::bn_act_{forward,backward}: BatchNorm -> activation, native channels-last
// (vectorised over C) and NCHW (vectorised over H * W) loops.
//
// Forward: eval one pass (y = act(x * scale + shift)); training: a statistics pass (per-block mean
// and M2 merged in double in a fixed order) and the same normalise pass.
// Backward from x and the per-channel mean / var: training reduces sum du, sum du * zhat (pass 1)
// then writes dx (pass 2); eval does both in one pass.
#include "fb_cpu.h"
#include "fb_cpu_ops.h"

namespace fastblocks {
namespace cpu {

namespace {
constexpr const char* kFwd = "fastblocks_kernels::bn_act_forward";
constexpr const char* kBwd = "fastblocks_kernels::bn_act_backward";

at::Tensor doubles(const std::vector<double>& v, int64_t offset, int64_t n) {
  at::Tensor t = at::empty({n}, at::TensorOptions().dtype(at::kDouble));
  std::memcpy(t.data_ptr<double>(), v.data() + offset, sizeof(double) * n);
  return t;
}
}  // namespace

Tensor3 bn_act_forward(const at::Tensor& x_in, const TensorOpt& bn_weight, const TensorOpt& bn_bias,
                       const TensorOpt& running_mean, const TensorOpt& running_var, bool training, double eps,
                       c10::string_view act_name) {
  check_x(x_in, kFwd);
  const Act act = parse_act(act_name);
  const bool cl = is_channels_last(x_in);
  const at::Tensor x = cl ? x_in : x_in.contiguous();
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), HW = H * W;
  const auto acc = acc_type_of(x.scalar_type());
  const at::Tensor gamma = per_channel(bn_weight, C, acc, 1.0, kFwd, "bn_weight");
  const at::Tensor beta = per_channel(bn_bias, C, acc, 0.0, kFwd, "bn_bias");
  at::Tensor mean, var;
  at::Tensor y = at::empty_like(x, x.options().memory_format(cl ? at::MemoryFormat::ChannelsLast
                                                               : at::MemoryFormat::Contiguous));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "bn_act_forward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto* xp = x.const_data_ptr<scalar_t>();
    if (training) {
      TORCH_CHECK(N * HW > 1, kFwd, ": training needs more than 1 value per channel");
      std::vector<double> m(C), v(C);
      if (cl) {
        const int64_t R = rows_per_block(W), nb = (N * H + R - 1) / R;
        std::vector<double> mean_b(nb * C), m2_b(nb * C);
        std::vector<int64_t> counts(nb);
        FB_ISA_CALL(BnActKernels<scalar_t>::bn_stats_cl, xp, N * H, W, C, R, mean_b.data(), m2_b.data(), counts.data());
        combine_blocks(mean_b, m2_b, counts, C, m.data(), v.data());
      } else {
        std::vector<double> mean_p(N * C), m2_p(N * C);
        FB_ISA_CALL(BnActKernels<scalar_t>::bn_stats_plane, xp, N * C, HW, mean_p.data(), m2_p.data());
        combine_blocks(mean_p, m2_p, std::vector<int64_t>(N, HW), C, m.data(), v.data());
      }
      mean = doubles(m, 0, C).to(acc);
      var = doubles(v, 0, C).to(acc);
    } else {
      TORCH_CHECK(running_mean.has_value() && running_var.has_value(), kFwd,
                  ": training=False needs running_mean and running_var");
      mean = per_channel(running_mean, C, acc, 0.0, kFwd, "running_mean").clone();
      var = per_channel(running_var, C, acc, 1.0, kFwd, "running_var").clone();
    }
    const at::Tensor scale = (gamma * (var + eps).rsqrt()).contiguous();
    const at::Tensor shift = (beta - mean * scale).contiguous();
    auto* yp = y.mutable_data_ptr<scalar_t>();
    if (cl) {
      FB_ISA_CALL(BnActKernels<scalar_t>::bn_apply_cl, xp, N * H, W, C, scale.const_data_ptr<acc_t>(),
                  shift.const_data_ptr<acc_t>(), act, yp);
    } else {
      FB_ISA_CALL(BnActKernels<scalar_t>::bn_apply_plane, xp, N, C, HW, scale.const_data_ptr<acc_t>(),
                  shift.const_data_ptr<acc_t>(), act, yp);
    }
  });
  return {y, mean, var};
}

Tensor3 bn_act_backward(const at::Tensor& dy_in, const at::Tensor& x_in, const TensorOpt& bn_weight,
                        const TensorOpt& bn_bias, const at::Tensor& mean_in, const at::Tensor& var_in, bool training,
                        double eps, c10::string_view act_name, std::array<bool, 3> mask) {
  check_x(x_in, kBwd);
  check_same(dy_in, x_in, kBwd, "dy");
  const Act act = parse_act(act_name);
  const bool cl = is_channels_last(x_in);
  const auto fmt = cl ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  const at::Tensor x = x_in.contiguous(fmt);
  const at::Tensor dy = dy_in.to(x.scalar_type()).contiguous(fmt);
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), HW = H * W, M = N * HW;
  const auto acc = acc_type_of(x.scalar_type());
  const at::Tensor gamma = per_channel(bn_weight, C, acc, 1.0, kBwd, "bn_weight");
  const at::Tensor beta = per_channel(bn_bias, C, acc, 0.0, kBwd, "bn_bias");
  const at::Tensor mean = per_channel(mean_in, C, acc, 0.0, kBwd, "mean");
  const at::Tensor var = per_channel(var_in, C, acc, 1.0, kBwd, "var");
  const at::Tensor invstd = (var + eps).rsqrt();
  const at::Tensor k1 = (gamma * invstd).contiguous();
  const bool need_dx = mask[0], need_bn = mask[1] || mask[2];
  at::Tensor dx, dgamma, dbeta;
  if (!need_dx && !need_bn) return {dx, dgamma, dbeta};
  const int64_t R = rows_per_block(W), nb = cl ? (N * H + R - 1) / R : N * C;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "bn_act_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto* xp = x.const_data_ptr<scalar_t>();
    const auto* dyp = dy.const_data_ptr<scalar_t>();
    std::vector<double> red(nb * 3);
    if (cl) red.resize(nb * 3 * C);
    // Per-channel (sum du, sum du * zhat) from the partials, in a fixed order.
    auto reduce = [&]() {
      std::vector<double> s(3 * C, 0.0);
      if (cl) {
        sum_blocks(red, nb, 3 * C, s.data());
      } else {
        for (int64_t n = 0; n < N; ++n)
          for (int64_t c = 0; c < C; ++c)
            for (int64_t j = 0; j < 3; ++j) s[j * C + c] += red[(n * C + c) * 3 + j];
      }
      dbeta = doubles(s, 0, C).to(acc);
      dgamma = doubles(s, C, C).to(acc);
    };
    auto run = [&](double* r, scalar_t* out, const at::Tensor& k2, const at::Tensor& k3) {
      const acc_t* k2p = k2.defined() ? k2.const_data_ptr<acc_t>() : nullptr;
      const acc_t* k3p = k3.defined() ? k3.const_data_ptr<acc_t>() : nullptr;
      if (cl) {
        FB_ISA_CALL(BnActKernels<scalar_t>::bn_backward_cl, xp, dyp, N * H, W, C, R, mean.const_data_ptr<acc_t>(),
                    invstd.const_data_ptr<acc_t>(), gamma.const_data_ptr<acc_t>(), beta.const_data_ptr<acc_t>(),
                    k1.const_data_ptr<acc_t>(), k2p, k3p, act, r, out);
      } else {
        FB_ISA_CALL(BnActKernels<scalar_t>::bn_backward_plane, xp, dyp, N, C, HW, mean.const_data_ptr<acc_t>(),
                    invstd.const_data_ptr<acc_t>(), gamma.const_data_ptr<acc_t>(), beta.const_data_ptr<acc_t>(),
                    k1.const_data_ptr<acc_t>(), k2p, k3p, act, r, out);
      }
    };
    if (need_dx) dx = at::empty_like(x, x.options().memory_format(fmt));
    scalar_t* dxp = need_dx ? dx.mutable_data_ptr<scalar_t>() : nullptr;
    if (training) {
      run(red.data(), nullptr, at::Tensor(), at::Tensor());
      reduce();
      if (need_dx) {
        const at::Tensor k2 = (dbeta / static_cast<double>(M)).contiguous();
        const at::Tensor k3 = (invstd * dgamma / static_cast<double>(M)).contiguous();
        run(nullptr, dxp, k2, k3);
      }
    } else {
      const at::Tensor zero = at::zeros({C}, at::TensorOptions().dtype(acc));
      run(need_bn ? red.data() : nullptr, dxp, zero, zero);
      if (need_bn) reduce();
    }
  });
  if (!mask[1]) dgamma = at::Tensor();
  if (!mask[2]) dbeta = at::Tensor();
  return {dx, dgamma, dbeta};
}

}  // namespace cpu
}  // namespace fastblocks
