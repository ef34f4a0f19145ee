// fastblocks_kernels::channel_pool / channel_scale / channel_scale_backward: the full-size passes of
// gate_scale, squeeze_excite and eca (the (N, C) MLP / 1-D conv and the gate stay in ATen).
//  - channel_pool: mean over H, W per (n, c), accumulated in acc dtype over short runs then double.
//  - channel_scale: y = x * scale[n, c] (+ shift[n, c]): the gated output (forward) and, with
//    shift = dpooled / (H * W), SE / ECA's dx = dy * gate + the pooling gradient in one pass.
//  - channel_scale_backward: one pass over dy and x: dx = dy * scale[n, c] and sum_hw dy * x.
// Native channels-last (vectorised over C) and NCHW (vectorised over H * W) loops.
#include "fb_cpu.h"
#include "fb_cpu_ops.h"

namespace fastblocks {
namespace cpu {

namespace {

// An (N, C) tensor (or (N, C, 1, 1)) as contiguous acc dtype.
at::Tensor nc_param(const at::Tensor& t, int64_t N, int64_t C, at::ScalarType acc, const char* op, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), op, ": ", name, " must be a CPU tensor");
  TORCH_CHECK(t.numel() == N * C && t.size(0) == N, op, ": ", name, " must have shape (", N, ", ", C, "), got ",
              t.sizes());
  return t.reshape({N, C}).to(acc).contiguous();
}

// Per-(n, c) sums from per-(n, row block) partials [N][nbh][C], in block order.
at::Tensor sum_row_blocks(const std::vector<double>& part, int64_t N, int64_t nbh, int64_t C) {
  at::Tensor out = at::zeros({N, C}, at::TensorOptions().dtype(at::kDouble));
  double* o = out.data_ptr<double>();
  for (int64_t n = 0; n < N; ++n)
    for (int64_t j = 0; j < nbh; ++j)
      for (int64_t c = 0; c < C; ++c) o[n * C + c] += part[(n * nbh + j) * C + c];
  return out;
}

at::Tensor from_plane_sums(const std::vector<double>& s, int64_t N, int64_t C) {
  at::Tensor out = at::empty({N, C}, at::TensorOptions().dtype(at::kDouble));
  std::memcpy(out.data_ptr<double>(), s.data(), sizeof(double) * N * C);
  return out;
}

}  // namespace

at::Tensor channel_pool(const at::Tensor& x_in) {
  const char* op = "fastblocks_kernels::channel_pool";
  check_x(x_in, op);
  const bool cl = is_channels_last(x_in);
  const at::Tensor x = cl ? x_in : x_in.contiguous();
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  TORCH_CHECK(H * W > 0, op, ": x must have a non-empty spatial extent");
  const auto acc = acc_type_of(x.scalar_type());
  at::Tensor sums;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "channel_pool", [&] {
    const auto* xp = x.const_data_ptr<scalar_t>();
    if (cl) {
      const int64_t R = rows_per_block(W, 64), nbh = (H + R - 1) / R;
      std::vector<double> part(N * nbh * C);
      FB_ISA_CALL(GateScaleKernels<scalar_t>::pool_cl, xp, N, H, W, C, R, part.data());
      sums = sum_row_blocks(part, N, nbh, C);
    } else {
      std::vector<double> s(N * C);
      FB_ISA_CALL(GateScaleKernels<scalar_t>::pool_plane, xp, N * C, H * W, s.data());
      sums = from_plane_sums(s, N, C);
    }
  });
  return (sums / static_cast<double>(H * W)).to(acc);
}

at::Tensor channel_scale(const at::Tensor& x_in, const at::Tensor& scale, const TensorOpt& shift) {
  const char* op = "fastblocks_kernels::channel_scale";
  check_x(x_in, op);
  const bool cl = is_channels_last(x_in);
  const at::Tensor x = cl ? x_in : x_in.contiguous();
  const int64_t N = x.size(0), C = x.size(1), HW = x.size(2) * x.size(3);
  const auto acc = acc_type_of(x.scalar_type());
  const at::Tensor g = nc_param(scale, N, C, acc, op, "scale");
  const at::Tensor b = shift.has_value() && shift->defined() ? nc_param(*shift, N, C, acc, op, "shift")
                                                              : at::zeros({N, C}, at::TensorOptions().dtype(acc));
  at::Tensor y = at::empty_like(x, x.options().memory_format(cl ? at::MemoryFormat::ChannelsLast
                                                               : at::MemoryFormat::Contiguous));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "channel_scale", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    if (cl) {
      FB_ISA_CALL(GateScaleKernels<scalar_t>::scale_cl, x.const_data_ptr<scalar_t>(), N, HW, C, g.const_data_ptr<acc_t>(),
                  b.const_data_ptr<acc_t>(), y.mutable_data_ptr<scalar_t>());
    } else {
      FB_ISA_CALL(GateScaleKernels<scalar_t>::scale_plane, x.const_data_ptr<scalar_t>(), N * C, HW, g.const_data_ptr<acc_t>(),
                  b.const_data_ptr<acc_t>(), y.mutable_data_ptr<scalar_t>());
    }
  });
  return y;
}

std::tuple<at::Tensor, at::Tensor> channel_scale_backward(const at::Tensor& dy_in, const at::Tensor& x_in,
                                                          const at::Tensor& scale, bool compute_dx) {
  const char* op = "fastblocks_kernels::channel_scale_backward";
  check_x(x_in, op);
  check_same(dy_in, x_in, op, "dy");
  const bool cl = is_channels_last(x_in);
  const auto fmt = cl ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  const at::Tensor x = x_in.contiguous(fmt);
  const at::Tensor dy = dy_in.to(x.scalar_type()).contiguous(fmt);
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const auto acc = acc_type_of(x.scalar_type());
  const at::Tensor g = nc_param(scale, N, C, acc, op, "scale");
  at::Tensor dx, sums;
  if (compute_dx) dx = at::empty_like(x, x.options().memory_format(fmt));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "channel_scale_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    scalar_t* dxp = compute_dx ? dx.mutable_data_ptr<scalar_t>() : nullptr;
    if (cl) {
      const int64_t R = rows_per_block(W, 64), nbh = (H + R - 1) / R;
      std::vector<double> part(N * nbh * C);
      FB_ISA_CALL(GateScaleKernels<scalar_t>::scale_backward_cl, dy.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(), N, H, W,
                  C, R, g.const_data_ptr<acc_t>(), dxp, part.data());
      sums = sum_row_blocks(part, N, nbh, C);
    } else {
      std::vector<double> s(N * C);
      FB_ISA_CALL(GateScaleKernels<scalar_t>::scale_backward_plane, dy.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(),
                  N * C, H * W, g.const_data_ptr<acc_t>(), dxp, s.data());
      sums = from_plane_sums(s, N, C);
    }
  });
  return {dx, sums.to(acc)};
}

}  // namespace cpu
}  // namespace fastblocks
