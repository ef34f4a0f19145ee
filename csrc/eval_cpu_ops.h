// Entry points of the eval-mode CPU kernels (csrc/eval_cpu.cpp), registered as
// fastblocks_kernels::eval_epilogue_ / dw_eval for the CPU dispatch key in bindings.cpp. CPU only:
// the eval path on other devices runs ATen / cuDNN convs on the folded weights.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/string_view.h>

#include <optional>
#include <tuple>

namespace fastblocks {
namespace cpu {

at::Tensor& eval_epilogue_(at::Tensor& y, const at::Tensor& bias, const std::optional<at::Tensor>& residual,
                           c10::string_view act);
std::tuple<at::Tensor, at::Tensor> dw_eval(const at::Tensor& x, const at::Tensor& taps, const at::Tensor& bias,
                                           int64_t kernel_size, int64_t stride, at::IntArrayRef padding,
                                           c10::string_view act, bool pool);
// A dense conv over few input channels (a stem) on folded weights, taps (K * K * C_in, C_out)
// ordered (kh, kw, c_in); x in any layout, the output channels_last.
at::Tensor direct_conv_eval(const at::Tensor& x, const at::Tensor& taps, const at::Tensor& bias, int64_t kernel_size,
                            int64_t stride, at::IntArrayRef padding, c10::string_view act);

// A channels_last 1x1 conv on folded weights, wt (C_in, C_out), with bias, residual (the output's
// shape, channels_last) and activation fused; scale (N, C_in, optional) multiplies x's channels
// per image (applied to the weight rows). The output channels_last.
at::Tensor pointwise_eval(const at::Tensor& x, const at::Tensor& wt, const at::Tensor& bias,
                          const std::optional<at::Tensor>& residual, c10::string_view act,
                          const std::optional<at::Tensor>& scale);

// A whole inverted-residual block on folded weights, channels_last: [1x1 expansion + act] ->
// depthwise conv + dw_act -> [SE: pool, MLP, gate; gate_act applied after the gate multiply
// (ReXNet: dw_act identity, gate_act relu6)] -> 1x1 projection [+ x on its first C_in channels].
at::Tensor mbconv_eval(const at::Tensor& x, const std::optional<at::Tensor>& expand_wt,
                       const std::optional<at::Tensor>& expand_bias, c10::string_view expand_act,
                       const at::Tensor& dw_taps, const at::Tensor& dw_bias, int64_t kernel_size, int64_t stride,
                       at::IntArrayRef padding, c10::string_view dw_act, const std::optional<at::Tensor>& se_w1,
                       const std::optional<at::Tensor>& se_b1, const std::optional<at::Tensor>& se_w2,
                       const std::optional<at::Tensor>& se_b2, c10::string_view se_act, c10::string_view se_gate,
                       c10::string_view gate_act, const at::Tensor& proj_wt, const at::Tensor& proj_bias,
                       bool residual);

}  // namespace cpu
}  // namespace fastblocks
