"""The patch driver: walks a model, applies the rules of :mod:`fastblocks.patch.rules`, keeps an
undo log on the model so :func:`unpatch` restores the exact original modules."""

from __future__ import annotations

from typing import Optional

from torch import nn

from .. import _dispatch
from .._recompute import recompute_scope
from .report import PatchReport, Replaced, Skipped

_UNDO = "_fastblocks_undo"


class Patcher:
    """State of one ``patch`` call; rules call :meth:`replace`, :meth:`swap_class`, :meth:`skip`."""

    def __init__(self, model: nn.Module, backend: Optional[str], report: PatchReport, fuse_lone_bn: bool):
        self.model = model
        self.backend = backend
        self.report = report
        self.fuse_lone_bn = fuse_lone_bn
        self.claimed: set = set()
        self.undo: list = model.__dict__.setdefault(_UNDO, [])

    def replace(self, parent: nn.Module, name: str, new: nn.Module) -> None:
        old = parent._modules[name]
        self.undo.append(("module", parent, name, old))
        new.train(old.training)
        parent._modules[name] = new
        # The old subtree is gone from the model: none of its modules may be patched later.
        self.claimed.update(id(m) for m in old.modules())
        self.claimed.update(id(m) for m in new.modules())

    def swap_class(self, module: nn.Module, new_cls: type) -> None:
        self.undo.append(("class", module, type(module), None))
        module.__class__ = new_cls

    def claim(self, *modules: nn.Module) -> None:
        self.claimed.update(id(m) for m in modules if m is not None)

    def record(self, path: str, original: str, replacement: str, detail: str = "") -> None:
        self.report.replaced.append(Replaced(path, original, replacement, detail))

    def skip(self, path: str, module: nn.Module, reason: str) -> None:
        self.report.skipped.append(Skipped(path, type(module).__name__, reason))
        self.claimed.add(id(module))


def join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def parent_path(path: str) -> str:
    return path.rsplit(".", 1)[0] if "." in path else ""


_SCOPED: dict = {}


def scoped_class(cls: type) -> type:
    """``cls`` with its forward run inside :func:`fastblocks._recompute.recompute_scope` (created
    once per class; same name, so reprs and type names read as before)."""
    if cls not in _SCOPED:
        def forward(self, *args, **kwargs):
            with recompute_scope():
                return cls.forward(self, *args, **kwargs)

        _SCOPED[cls] = type(cls.__name__, (cls,), {"forward": forward, "__module__": cls.__module__,
                                                   "__qualname__": cls.__qualname__, "_fastblocks_scoped": True})
    return _SCOPED[cls]


def patch(model: nn.Module, backend: str = "auto", *, fuse_lone_bn: bool = False) -> PatchReport:
    """Swap fused fastblocks modules into ``model`` in place and report what changed.

    Recognises timm, torchvision, efficientnet_pytorch and fastblocks.zoo blocks (see
    :mod:`fastblocks.patch.rules`): depthwise conv + BN + act, BN + act, squeeze-excite, ECA and
    SiLU / hard-swish. Only exactly-equivalent patterns are fused; anything else is listed in
    ``report.skipped`` with the reason. Parameter and buffer names (state_dict keys) and tensors
    are unchanged; ``model.training`` is kept. Idempotent. The model's class is swapped for a
    same-named subclass whose forward enables recompute-on-load between fused ops (so a patched
    model pickles by state_dict, not as a whole object). ``backend`` is stored on the fused
    modules (``"auto"`` resolves per call). ``fuse_lone_bn=True`` also replaces BatchNorms with no
    activation after them (no memory gain). nn.SyncBatchNorm / timm SyncBatchNormAct are always
    replaced, lone ones too, by modules that synchronise statistics themselves
    (:mod:`fastblocks.ops.sync_batchnorm`), so the patched model runs under DDP on any device.
    """
    from .rules import RULES

    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    backend = _dispatch._check_name(backend)
    report = PatchReport(model=type(model).__name__, backend=backend)
    already = bool(model.__dict__.get(_UNDO))
    patcher = Patcher(model, None if backend == "auto" else backend, report, fuse_lone_bn)
    snapshot = [(path, module) for path, module in model.named_modules(remove_duplicate=False)]
    index = {}
    for path, module in snapshot:
        for name, child in module._modules.items():
            if child is not None:
                index.setdefault(id(child), (module, name))
    for path, module in snapshot:
        if id(module) in patcher.claimed:
            continue
        parent, name = index.get(id(module), (None, None))
        if parent is not None and parent._modules.get(name) is not module:
            continue  # replaced by a rule that ran on its parent
        for rule in RULES:
            if rule.apply(patcher, path, module, parent, name):
                break
    if report.replaced and not getattr(type(model), "_fastblocks_scoped", False):
        # Recompute-on-load across fused ops needs a scope around the model's forward.
        patcher.swap_class(model, scoped_class(type(model)))
    report.already_patched = already
    return report


def unpatch(model: nn.Module) -> nn.Module:
    """Undo :func:`patch`: the original module objects go back, holding the model's current
    parameter and buffer tensors (so training done while patched is kept). Returns ``model``."""
    undo = model.__dict__.pop(_UNDO, [])
    for kind, target, name, old in reversed(undo):
        if kind == "class":
            target.__class__ = name
            continue
        new = target._modules[name]
        for store in ("_parameters", "_buffers"):
            mine, theirs = getattr(old, store), getattr(new, store)
            for key in list(mine):
                if key in theirs:
                    mine[key] = theirs[key]
        old.train(new.training)
        target._modules[name] = old
    return model
