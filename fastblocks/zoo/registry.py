"""Name -> constructor registry for :mod:`fastblocks.zoo`."""

from __future__ import annotations

import fnmatch
from typing import Any, Callable, Dict, List, Optional, TypeVar

import torch.nn as nn

__all__ = ["create", "list_models", "register_model"]

_MODELS: Dict[str, Callable[..., nn.Module]] = {}

F = TypeVar("F", bound=Callable[..., nn.Module])


def register_model(fn: F) -> F:
    """Decorator: register a model constructor under its ``__name__``.

    Raises ``ValueError`` if the name is already taken.
    """
    name = fn.__name__
    if name in _MODELS and _MODELS[name] is not fn:
        raise ValueError(f"zoo model {name!r} is already registered")
    _MODELS[name] = fn
    return fn


def list_models(pattern: Optional[str] = None) -> List[str]:
    """Sorted names of all registered zoo models, optionally filtered by an
    ``fnmatch`` pattern (e.g. ``"eca_*"``)."""
    names = sorted(_MODELS)
    if pattern is not None:
        names = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
    return names


def create(name: str, **kwargs: Any) -> nn.Module:
    """Build the zoo model ``name`` with constructor keyword arguments ``kwargs``
    (e.g. ``num_classes=10``).

    Raises ``ValueError`` naming the unknown model and listing the valid ones.
    """
    if not isinstance(name, str) or name not in _MODELS:
        raise ValueError(
            f"Unknown zoo model {name!r}. Valid models: {', '.join(list_models())}"
        )
    return _MODELS[name](**kwargs)
