// Host-side definitions shared by the CPU (csrc/*_cpu.cpp) and CUDA (csrc/*.cu) kernels: the
// activation codes, padding arithmetic and memory-format rule. Device-independent on purpose:
// one definition of each, so the two backends cannot disagree on what "tf_same" means.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <c10/util/string_view.h>

#include <algorithm>
#include <cstdint>
#include <string>

namespace fastblocks {

// Accumulation / statistics type of the kernels: float, double for double inputs (CPU and CUDA).
template <typename T>
struct AccOf {
  using type = float;
};
template <>
struct AccOf<double> {
  using type = double;
};
template <typename T>
using acc_of = typename AccOf<T>::type;

// Activation codes (the kernels switch on them; CUDA device code includes this enum too).
enum class Act : int { Identity = 0, Silu = 1, Relu = 2, Relu6 = 3, Hardswish = 4, LeakyRelu = 5,
                        Gelu = 6, GeluTanh = 7 };

// Negative slope of Act::LeakyRelu: nn.LeakyReLU's default, as fastblocks._act.LEAKY_RELU_SLOPE
// (written as a double literal: ATen multiplies float inputs by 0.01f and double inputs by 0.01).
constexpr double kLeakyReluSlope = 0.01;

// Act::GeluTanh: u * sigmoid(2 z), z = sqrt(2 / pi) * (u + kappa u^3) (nn.GELU(approximate="tanh")).
constexpr double kGeluTanhTwoBeta = 1.59576912160573071;  // 2 sqrt(2 / pi)
constexpr double kGeluTanhKappa = 0.044715;

inline Act parse_act(c10::string_view name) {
  if (name == "silu") return Act::Silu;
  if (name == "relu") return Act::Relu;
  if (name == "relu6") return Act::Relu6;
  if (name == "hardswish") return Act::Hardswish;
  if (name == "leaky_relu") return Act::LeakyRelu;
  if (name == "gelu") return Act::Gelu;
  if (name == "gelu_tanh") return Act::GeluTanh;
  if (name == "identity") return Act::Identity;
  TORCH_CHECK(false, "fastblocks_kernels: act must be one of silu, relu, relu6, hardswish, leaky_relu, gelu, gelu_tanh, identity; got '",
              std::string(name), "'");
}

// Memory format contract of the package: channels_last iff not contiguous but channels_last
// contiguous (fastblocks._validate.memory_format_of).
inline bool is_channels_last(const at::Tensor& x) {
  return x.dim() == 4 && !x.is_contiguous() && x.is_contiguous(at::MemoryFormat::ChannelsLast);
}

// float accumulation for float32 / float16 / bfloat16, double for float64.
inline at::ScalarType acc_type_of(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

struct Pads {
  int64_t top, bottom, left, right;
};

// (top, bottom, left, right) of a k x k conv (dilation 1), as fastblocks._validate.conv_pads.
inline Pads conv_pads(c10::string_view mode, int64_t padding, int64_t k, int64_t stride, int64_t h, int64_t w) {
  if (mode == "explicit") return {padding, padding, padding, padding};
  if (mode == "same") return {(k - 1) / 2, (k - 1) / 2, (k - 1) / 2, (k - 1) / 2};
  TORCH_CHECK(mode == "tf_same", "fastblocks_kernels: padding_mode must be same, tf_same or explicit, got '",
              std::string(mode), "'");
  auto split = [&](int64_t size, int64_t& before, int64_t& after) {
    int64_t out = (size + stride - 1) / stride;
    int64_t total = std::max<int64_t>((out - 1) * stride + k - size, 0);
    before = total / 2;
    after = total - total / 2;
  };
  Pads p{};
  split(h, p.top, p.bottom);
  split(w, p.left, p.right);
  return p;
}

}  // namespace fastblocks
