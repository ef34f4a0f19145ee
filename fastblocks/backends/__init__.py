"""Backend implementations. ``reference`` is imported by the op files; the others register
themselves with :mod:`fastblocks._dispatch` when imported by :func:`load_all`."""

import importlib
import warnings


def load_all() -> None:
    """Import every backend that can load in this process (missing optional ones are skipped)."""
    from . import eager  # noqa: F401
    for module in ("fastblocks.backends.triton", "fastblocks.backends.native"):
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as err:
            if err.name != module:  # a real import error inside an existing backend module
                warnings.warn(f"fastblocks: backend module {module} failed to import: {err}")
