"""Activation and gate functions with their derivatives, one table for every backend in Python.

Each entry maps a name to ``(forward(u), backward(u, grad) -> grad_u)``. Backward formulas work
from the pre-activation ``u`` (what the memory-efficient backends recompute) and match ATen's
backward kernels exactly, boundary points included (e.g. hardswish at u == 3).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

# nn.LeakyReLU's default (and timm's "leaky_relu", used by CSPNet / DarkNet). The kernels bake it in
# as a constant: a LeakyReLU with another slope is left unfused by fb.patch, with the reason.
LEAKY_RELU_SLOPE = 0.01

Fn = Callable[[torch.Tensor], torch.Tensor]
Grad = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


# ATen's own backward kernels: one pass each, identical to PyTorch autograd at every point.
def _silu_grad(u: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    return torch.ops.aten.silu_backward(g, u)


def _relu_grad(u: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    return torch.ops.aten.threshold_backward(g, u, 0)


def _relu6_grad(u: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    return torch.ops.aten.hardtanh_backward(g, u, 0.0, 6.0)


def _leaky_relu_grad(u: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    return torch.ops.aten.leaky_relu_backward(g, u, LEAKY_RELU_SLOPE, False)


def _gelu_grad(u: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    return torch.ops.aten.gelu_backward(g, u, approximate="none")


def _gelu_tanh_grad(u: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    return torch.ops.aten.gelu_backward(g, u, approximate="tanh")


def _hardswish_grad(u: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    return torch.ops.aten.hardswish_backward(g, u)


def _sigmoid_grad(u: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    s = torch.sigmoid(u)
    return g * s * (1 - s)


def _hard_sigmoid_grad(u: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    return torch.where((u > -3) & (u < 3), g / 6, torch.zeros_like(g))


ACTIVATIONS: dict[str, tuple[Fn, Grad]] = {
    "silu": (F.silu, _silu_grad),
    "relu": (F.relu, _relu_grad),
    "relu6": (F.relu6, _relu6_grad),
    "hardswish": (F.hardswish, _hardswish_grad),
    "leaky_relu": (lambda u: F.leaky_relu(u, LEAKY_RELU_SLOPE), _leaky_relu_grad),
    # nn.GELU() (erf) and nn.GELU(approximate="tanh"); timm's "gelu" / "gelu_tanh".
    "gelu": (F.gelu, _gelu_grad),
    "gelu_tanh": (lambda u: F.gelu(u, approximate="tanh"), _gelu_tanh_grad),
    "identity": (lambda u: u, lambda u, g: g),
}

GATES: dict[str, tuple[Fn, Grad]] = {
    "sigmoid": (torch.sigmoid, _sigmoid_grad),
    "hard_sigmoid": (F.hardsigmoid, _hard_sigmoid_grad),
}

# Spellings users bring from timm / torchvision / papers.
_ACT_ALIASES = {"swish": "silu", "hard_swish": "hardswish", "leakyrelu": "leaky_relu", "none": "identity",
                "linear": "identity", "gelu_erf": "gelu", "gelutanh": "gelu_tanh"}
_GATE_ALIASES = {"hardsigmoid": "hard_sigmoid"}


def canonical_act(act: object, arg: str = "act") -> str:
    """Validate an activation name and return its canonical spelling."""
    return _canonical(act, arg, ACTIVATIONS, _ACT_ALIASES)


def canonical_gate(gate: object, arg: str = "gate") -> str:
    """Validate a gate name and return its canonical spelling."""
    return _canonical(gate, arg, GATES, _GATE_ALIASES)


def _canonical(name: object, arg: str, table: dict, aliases: dict) -> str:
    if not isinstance(name, str):
        raise TypeError(f"{arg} must be a str, one of {sorted(table)}, got {type(name).__name__}")
    key = aliases.get(name.lower(), name.lower())
    if key not in table:
        raise ValueError(f"{arg} must be one of {sorted(table)}, got {name!r}")
    return key


def act_forward(name: str, u: torch.Tensor) -> torch.Tensor:
    return ACTIVATIONS[name][0](u)


def act_backward(name: str, u: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    return ACTIVATIONS[name][1](u, grad)


def gate_forward(name: str, u: torch.Tensor) -> torch.Tensor:
    return GATES[name][0](u)


def gate_backward(name: str, u: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    return GATES[name][1](u, grad)
