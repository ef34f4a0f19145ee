"""The eager backend is memory-efficient: what it saves for backward, measured."""

import pytest
import torch

import fastblocks as fb
from fastblocks.utils import saved_tensor_bytes


def test_saved_tensor_bytes_counts_each_storage_once():
    x = torch.randn(10, 10, requires_grad=True)
    # x * x saves x twice (self and other): one storage.
    assert saved_tensor_bytes(lambda: x * x) == 400
    assert saved_tensor_bytes(lambda: (x * 2).sin()) == 400  # saves only the sin input
    with torch.no_grad():
        assert saved_tensor_bytes(lambda: x.sin()) == 0


@pytest.mark.parametrize("stride", [1, 2])
def test_dwconv_bn_act_eager_saves_input_and_stats_only(stride):
    n, c, h = 4, 32, 28
    x = torch.randn(n, c, h, h, requires_grad=True)
    w, g, b = torch.randn(c, 1, 3, 3, requires_grad=True), torch.ones(c, requires_grad=True), torch.zeros(c, requires_grad=True)

    def run(backend):
        return lambda: fb.ops.dwconv_bn_act(x, w, g, b, None, None, stride=stride, training=True, backend=backend)

    eager, ref = saved_tensor_bytes(run("eager")), saved_tensor_bytes(run("reference"))
    per_channel = 4 * c * 2 + w.numel() * 4 + 2 * 4 * c
    assert eager == x.numel() * 4 + per_channel
    out_elems = n * c * (h // stride) ** 2
    # reference keeps x, the conv output and the BN output (for SiLU): x + 2 * out.
    assert ref >= x.numel() * 4 + 2 * out_elems * 4


def test_squeeze_excite_and_eca_save_x_plus_n_by_c():
    n, c = 2, 16
    x = torch.randn(n, c, 8, 8, requires_grad=True)
    r, e = torch.randn(4, c, requires_grad=True), torch.randn(c, 4, requires_grad=True)
    se = saved_tensor_bytes(lambda: fb.ops.squeeze_excite(x, r, None, e, None, backend="eager"))
    assert se == x.numel() * 4 + 2 * n * c * 4 + r.numel() * 4 + e.numel() * 4
    k = torch.randn(1, 1, 3, requires_grad=True)
    assert saved_tensor_bytes(lambda: fb.ops.eca(x, k, backend="eager")) == x.numel() * 4 + 2 * n * c * 4 + 12
