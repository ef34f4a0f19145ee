"""The depthwise-conv configurations the compiled kernels (cpu / cuda / triton) are written for.
One definition, so that the backends and fb.patch's patch-time check agree."""

from __future__ import annotations

from typing import Optional

KERNEL_SIZES = (3, 5, 7)
STRIDES = (1, 2)


def dwconv_config_problem(backend: str, kernel_size: int, stride: int, dilation: int = 1) -> Optional[str]:
    """None when ``backend``'s depthwise kernels exist for this configuration, else the reason."""
    if kernel_size not in KERNEL_SIZES:
        return f"the {backend} backend's depthwise kernels support k in {KERNEL_SIZES}, got k={kernel_size}"
    if dilation != 1:
        return f"the {backend} backend supports dilation 1 only, got {dilation}"
    if stride not in STRIDES:
        return f"the {backend} backend supports stride in {STRIDES}, got {stride}"
    return None
