import os

import pytest
import torch

# Each xdist worker gets its share of the cores: torch's default (all cores in every process)
# oversubscribes `-n 2` on 2 cores, and OpenMP's spin-waiting then slows the model tests several-fold.
# Multi-threaded kernel paths keep their own tests (test_cpu_backend sets the thread count itself).
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // _WORKERS))


def pytest_collection_modifyitems(config, items):
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
