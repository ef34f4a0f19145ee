import os
import re

import pytest
import torch

# Each xdist worker gets its share of the cores: torch's default (all cores in every process)
# oversubscribes `-n 2` on 2 cores, and OpenMP's spin-waiting then slows the model tests several-fold.
# Multi-threaded kernel paths keep their own tests (test_cpu_backend sets the thread count itself).
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // _WORKERS))


# Op markers: `pytest -m dwconv_bn_act` runs one op's tests on every backend - its own module
# (tests/test_<op>.py) and the op's cases in the backend modules, named after the op (test
# functions "test_<op>_...", interpreter / GPU case ids "<prefix>-...").
OP_PATTERNS = {
    "dwconv_bn_act": r"dwconv|(^|\[)dw-",
    "bn_act": r"(?<!dwconv_)bn_act|(^|\[)bn-",
    "squeeze_excite": r"squeeze_excite|(^|\[)se-",
    "eca": r"(?<![a-z])eca(?![a-z])|(^|\[)eca-",
    "gate_scale": r"gate_scale|gating|(^|\[)gate-",
    "activation": r"activation|silu|hard_swish|(^|\[)act-",
}
BACKEND_MODULES = ("test_cpu_backend", "test_cuda_backend", "test_triton_interpreter", "test_triton_gpu")


def _op_markers(item) -> list:
    module = item.module.__name__.rsplit(".", 1)[-1] if item.module else ""
    if module.startswith("test_") and module[5:] in OP_PATTERNS:
        return [module[5:]]
    if module not in BACKEND_MODULES:
        return []
    return [op for op, pattern in OP_PATTERNS.items() if re.search(pattern, item.name)]


def pytest_collection_modifyitems(config, items):
    for item in items:
        for op in _op_markers(item):
            item.add_marker(getattr(pytest.mark, op))
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _default_backend():
    """Every test starts (and ends) with the default backend setting."""
    import fastblocks as fb
    before = fb.get_backend()
    yield
    fb.set_backend(before)
