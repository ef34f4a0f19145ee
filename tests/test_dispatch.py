import os
import subprocess
import sys

import pytest
import torch

import fastblocks as fb
from fastblocks import _dispatch


def test_available_backends_lists_reference_and_eager():
    names = fb.available_backends()
    assert names[:2] == ["reference", "eager"]
    assert set(names) <= set(_dispatch.BACKENDS)


def test_set_backend_and_context_manager_nest():
    fb.set_backend("eager")
    assert fb.get_backend() == "eager"
    with fb.backend("reference"):
        assert fb.get_backend() == "reference"
        with fb.backend("auto"):
            assert fb.get_backend() == "auto"
        assert fb.get_backend() == "reference"
    assert fb.get_backend() == "eager"


def test_context_manager_restores_on_error():
    fb.set_backend("auto")
    with pytest.raises(KeyError):
        with fb.backend("eager"):
            raise KeyError
    assert fb.get_backend() == "auto"


@pytest.mark.parametrize("bad,exc", [("tritonn", ValueError), (3, TypeError)])
def test_bad_backend_names(bad, exc):
    with pytest.raises(exc, match="backend"):
        fb.set_backend(bad)
    with pytest.raises(exc, match="backend"):
        fb.ops.silu(torch.randn(3), backend=bad)
    with pytest.raises(TypeError, match="backend"):
        fb.set_backend(None)


def _fused_op_calls(fn, x):
    gm = torch.fx.experimental.proxy_tensor.make_fx(fn)(x)
    return [str(n.target) for n in gm.graph.nodes if "fastblocks" in str(n.target)]


def test_explicit_argument_beats_context():
    x = torch.randn(2, 3)
    with fb.backend("reference"):
        assert _fused_op_calls(lambda t: fb.ops.silu(t, backend="eager"), x)
        assert not _fused_op_calls(lambda t: fb.ops.silu(t), x)
    with fb.backend("eager"):
        assert _fused_op_calls(lambda t: fb.ops.silu(t), x)
        assert not _fused_op_calls(lambda t: fb.ops.silu(t, backend="reference"), x)


def test_unavailable_backend_is_an_error_not_a_fallback():
    missing = [b for b in _dispatch.BACKENDS if b not in fb.available_backends()]
    if not missing:
        pytest.skip("every backend is available here")
    with pytest.raises(fb.BackendUnavailableError, match=missing[0]):
        fb.ops.silu(torch.randn(4), backend=missing[0])


def test_auto_runs_inside_the_custom_op():
    x = torch.randn(2, 3, 4, 4)
    assert any("fastblocks.activation" in t for t in _fused_op_calls(lambda t: fb.ops.silu(t, backend="auto"), x))


def test_env_var_sets_the_default():
    code = "import fastblocks as fb; print(fb.get_backend())"
    env = dict(os.environ, FASTBLOCKS_BACKEND="eager")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "eager"
    env["FASTBLOCKS_BACKEND"] = "bogus"
    bad = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert bad.returncode != 0 and "FASTBLOCKS_BACKEND" in bad.stderr


def test_config_problem_names_what_a_backend_cannot_run():
    """Static configuration checks are declared whether or not the kernels are built (patch-time use)."""
    for backend in ("cpu", "cuda", "triton"):
        assert _dispatch.config_problem("dwconv_bn_act", backend, kernel_size=3, stride=2, dilation=1) is None
        reason = _dispatch.config_problem("dwconv_bn_act", backend, kernel_size=9, stride=1, dilation=1)
        assert reason is not None and "9" in reason
    assert "k=1" in _dispatch.config_problem("dwconv_bn_act", "cpu", kernel_size=1, stride=1, dilation=1)
    assert _dispatch.config_problem("dwconv_bn_act", "eager", kernel_size=1, stride=1, dilation=1) is None
    assert _dispatch.config_problem("bn_act", "cpu") is None
    with pytest.raises(ValueError, match="reference"):
        _dispatch.register_config_check("dwconv_bn_act", "reference", lambda **c: None)
