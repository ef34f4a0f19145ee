"""The autotuner's config pruning (kernels/_common.autotune): the dW-register configs only where
they apply, and FASTBLOCKS_TRITON_CONFIGS=N limiting every autotuned kernel to its first N configs
(how the GPU tests bound compile time). Needs the kernels imported for a GPU (no interpreter):
building an autotuner compiles nothing."""

from __future__ import annotations

import pytest

pytest.importorskip("triton")

import fastblocks.kernels._common as common  # noqa: E402

pytestmark = pytest.mark.skipif(common.INTERPRET, reason="under TRITON_INTERPRET kernels use one fixed config")


def _kept(tuner, **kwargs):
    return tuner.early_config_prune(tuner.configs, {}, **kwargs)


def test_dw_register_configs_only_for_the_dw_pass(monkeypatch):
    import fastblocks.kernels.dwconv_bn_act as dw

    monkeypatch.delenv(common.CONFIG_LIMIT_ENV, raising=False)
    for tuner in (dw._fused_cl, dw._fused_nchw):
        plain = [c for c in tuner.configs if not c.kwargs["DW_REGS"]]
        assert _kept(tuner, NEED_DW=False, K=3) == plain
        with_regs = _kept(tuner, NEED_DW=True, K=3)
        assert len(with_regs) > len(plain) and with_regs[:len(plain)] == plain


@pytest.mark.parametrize("limit", [1, 2])
def test_config_limit(monkeypatch, limit):
    import fastblocks.kernels.activation as act
    import fastblocks.kernels.dwconv_bn_act as dw

    monkeypatch.setenv(common.CONFIG_LIMIT_ENV, str(limit))
    assert _kept(act._fwd) == act._fwd.configs[:limit]
    assert _kept(dw._fused_cl, NEED_DW=True, K=5) == [c for c in dw._fused_cl.configs if not c.kwargs["DW_REGS"]][:limit]


@pytest.mark.parametrize("value", ["0", "-1", "two"])
def test_config_limit_rejects_bad_values(monkeypatch, value):
    import fastblocks.kernels.activation as act

    monkeypatch.setenv(common.CONFIG_LIMIT_ENV, value)
    with pytest.raises(ValueError, match=common.CONFIG_LIMIT_ENV):
        _kept(act._fwd)


def test_every_autotuned_kernel_uses_the_short_benchmark():
    """Each autotuned kernel times its configs with ``autotune_bench`` (5 + 25 ms), not Triton's
    25 + 100 ms default: that is 0.13 s a config on a first training step."""
    import importlib

    import triton

    mods = [importlib.import_module(f"fastblocks.kernels.{name}") for name in ("activation", "bn_act", "dwconv_bn_act",
                                                                     "gate_scale")]
    tuners = [obj for mod in mods for obj in vars(mod).values() if isinstance(obj, triton.runtime.Autotuner)]
    assert len(tuners) >= 5
    assert all(t.do_bench is common.autotune_bench for t in tuners)
