"""Argument checks shared by every op: clear TypeError / ValueError naming the argument."""

from __future__ import annotations

import numbers
from typing import Sequence

import torch

_FLOATING = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_input(x: object, name: str = "x", ndim: int = 4) -> torch.Tensor:
    """x must be a floating tensor of rank ``ndim`` (N, C, H, W by default) with C >= 1; N may be 0
    (an empty batch, which the ops hand to the reference composition, as PyTorch's layers accept it)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in _FLOATING:
        raise TypeError(f"{name} must be a floating tensor (float16/bfloat16/float32/float64), got {x.dtype}")
    if x.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions (N, C, H, W), got shape {tuple(x.shape)}")
    if x.shape[1] == 0:
        raise ValueError(f"{name} must have at least one channel, got shape {tuple(x.shape)}")
    return x


def check_tensor(t: object, name: str, x: torch.Tensor, shape: Sequence[int] | None,
                 same_dtype: bool = False) -> None:
    """A parameter tensor on x's device with the given shape; dtype x.dtype (or float32 unless same_dtype)."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or None, got {type(t).__name__}")
    if t.device != x.device:
        raise ValueError(f"{name} is on {t.device} but x is on {x.device}; move them to one device")
    allowed = {x.dtype} if same_dtype else {x.dtype, torch.float32}
    if t.dtype not in allowed:
        want = " or ".join(sorted(str(d) for d in allowed))
        raise TypeError(f"{name} must have dtype {want} to match x ({x.dtype}), got {t.dtype}")
    if shape is not None and tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(t.shape)}")


def check_optional(t: object, name: str, x: torch.Tensor, shape: Sequence[int] | None) -> None:
    if t is not None:
        check_tensor(t, name, x, shape)


def check_running_stats(running_mean: object, running_var: object, x: torch.Tensor, channels: int) -> None:
    if (running_mean is None) != (running_var is None):
        raise ValueError("running_mean and running_var must both be tensors or both be None")
    check_optional(running_mean, "running_mean", x, (channels,))
    check_optional(running_var, "running_var", x, (channels,))


def scalar_int(value: object, name: str, allowed: Sequence[int] | None = None, minimum: int | None = None) -> int:
    """An int, or a tuple/list of equal ints (PyTorch-style (s, s)); optionally restricted."""
    if isinstance(value, (tuple, list)):
        if len(value) == 0 or any(v != value[0] for v in value):
            raise ValueError(f"{name} must be an int or a tuple of equal ints, got {value!r}")
        value = value[0]
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    value = int(value)
    if allowed is not None and value not in allowed:
        raise ValueError(f"{name} must be one of {tuple(allowed)}, got {value}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def scalar_float(value: object, name: str, low: float, high: float | None = None, low_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a float, got {type(value).__name__}")
    value = float(value)
    bad_low = value <= low if low_open else value < low
    if bad_low or (high is not None and value > high) or value != value:
        rng = f"({low}, {high}]" if low_open else f"[{low}, {high}]"
        raise ValueError(f"{name} must be in {rng}, got {value}")
    return value


def check_bool(value: object, name: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
    return value


def padding_spec(padding: object) -> tuple[str, int]:
    """Normalise the public ``padding`` argument to the custom-op pair (mode, explicit)."""
    if isinstance(padding, str):
        mode = padding.lower()
        if mode not in ("same", "tf_same"):
            raise ValueError(f"padding must be 'same', 'tf_same' or a non-negative int, got {padding!r}")
        return mode, 0
    return "explicit", scalar_int(padding, "padding", minimum=0)


def conv_pads(mode: str, padding: int, k: int, stride: int, dilation: int, h, w) -> tuple:
    """(top, bottom, left, right) padding of a k x k conv; works with SymInt sizes."""
    span = dilation * (k - 1)
    if mode == "explicit":
        return padding, padding, padding, padding
    if mode == "same":
        p = span // 2
        return p, p, p, p
    # TensorFlow SAME: output ceil(size / stride), the extra pixel on the bottom / right.
    def split(size):
        out = -(-size // stride)
        total = (out - 1) * stride + span + 1 - size
        # torch.sym_max for symbolic sizes only: on plain ints, torch 2.11's dynamo refuses it
        # ("torch.* op returned non-Tensor"), which broke torch.compile(fullgraph=True) there.
        if isinstance(total, int):
            total = max(total, 0)
        elif isinstance(total, torch.Tensor):  # torch.jit.trace (TorchScript ONNX export) traces sizes
            total = total.clamp(min=0)
        else:
            total = torch.sym_max(total, 0)
        return total // 2, total - total // 2
    top, bottom = split(h)
    left, right = split(w)
    return top, bottom, left, right


def conv_out_size(size, before, after, k: int, stride: int, dilation: int):
    return (size + before + after - dilation * (k - 1) - 1) // stride + 1


def conv_out_hw(padding_mode: str, padding: int, k: int, stride: int, dilation: int, h, w) -> tuple:
    """(H_out, W_out) of a k x k conv on an h x w input with the given padding spec."""
    top, bottom, left, right = conv_pads(padding_mode, padding, k, stride, dilation, h, w)
    return conv_out_size(h, top, bottom, k, stride, dilation), conv_out_size(w, left, right, k, stride, dilation)


def memory_format_of(x: torch.Tensor) -> torch.memory_format:
    """The memory format an op's output should have: the input's."""
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format
