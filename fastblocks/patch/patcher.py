"""The patch driver: walks a model, applies the rules of :mod:`fastblocks.patch.rules`, keeps an
undo log on the model so :func:`unpatch` restores the exact original modules."""

from __future__ import annotations

import copyreg
import functools
import hashlib
import inspect
from typing import Optional

from torch import nn

from .. import _dispatch
from .._recompute import check_level, recompute_scope
from .report import PatchReport, Replaced, Skipped

_UNDO = "_fastblocks_undo"
# On a patched model: what its forward recomputes in backward (fastblocks._recompute.LEVELS)
_RECOMPUTE = "_fastblocks_recompute"
# On a re-parameterisable block with fused modules inside: the model's undo log (see reparam_class)
_ROOT_UNDO = "_fastblocks_root_undo"
# Methods timm's reparameterize_model (and RepVGG-style code) call to fold a block's branches for
# inference; they read the original conv / BN modules.
REPARAM_METHODS = ("fuse", "reparameterize", "switch_to_deploy")


class Patcher:
    """State of one ``patch`` call; rules call :meth:`replace`, :meth:`swap_class`, :meth:`skip`."""

    def __init__(self, model: nn.Module, backend: Optional[str], report: PatchReport, fuse_lone_bn: bool):
        self.model = model
        self.backend = backend
        self.report = report
        self.fuse_lone_bn = fuse_lone_bn
        self.claimed: set = set()
        self.undo: list = model.__dict__.setdefault(_UNDO, [])
        # (holder, path, conv name, BN name) of every conv -> BN the rules know: folded at eval
        self.fold_pairs: list = []

    def replace(self, parent: nn.Module, name: str, new: nn.Module, owner: Optional[nn.Module] = None) -> None:
        """parent.<name> = new. ``owner``: the module whose fusion this belongs to when that is not
        ``parent`` (an act one level up, taken by a BN inside a conv-norm module): restoring the
        owner's subtree (before a re-parameterisation) restores this too."""
        old = parent._modules[name]
        self.undo.append(("module", parent, name, old, parent if owner is None else owner))
        new.train(old.training)
        parent._modules[name] = new
        # The old subtree is gone from the model: none of its modules may be patched later.
        self.claimed.update(id(m) for m in old.modules())
        self.claimed.update(id(m) for m in new.modules())

    def swap_class(self, module: nn.Module, new_cls: type) -> None:
        self.undo.append(("class", module, type(module), None, module))
        module.__class__ = new_cls

    def set_attr(self, module: nn.Module, name: str, value: object) -> None:
        """module.__dict__[name] = value (outside the module's state), removed by unpatch."""
        self.undo.append(("attr", module, name, None, module))
        module.__dict__[name] = value

    def pair(self, holder: nn.Module, path: str, conv_name: str, bn_name: Optional[str]) -> None:
        """holder.<conv_name>'s output feeds holder.<bn_name> and nothing else: fold it at eval
        (bn_name None: no BN, the conv alone takes the eval path)."""
        self.fold_pairs.append((holder, path, conv_name, bn_name))

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


class PatchedClass(type):
    """Metaclass of the classes ``patch`` makes (:func:`scoped_class`, :func:`fused_class`,
    :func:`reparam_class`). They exist only once ``patch`` has run, so pickle cannot import them by
    name; instead (copyreg) one pickles as its recipe: the importable class it derives from and the
    steps that made it, rebuilt on load. So ``torch.save(model)`` of a patched model loads in a
    fresh process, and as the same class in this one (the makers cache their classes)."""


_METACLASSES: dict = {type: PatchedClass}


def _patched_metaclass(meta: type) -> type:
    if issubclass(meta, PatchedClass):
        return meta
    if meta not in _METACLASSES:  # a base with its own metaclass (e.g. ABCMeta): derive from both
        _METACLASSES[meta] = PatchedClass("Patched" + meta.__name__, (PatchedClass, meta), {})
        copyreg.pickle(_METACLASSES[meta], _reduce_class)
    return _METACLASSES[meta]


def _make_class(base: type, step: tuple, name: str, bases: tuple, namespace: dict) -> type:
    """A class made by ``patch`` from ``base`` (one of ``bases``) by ``step`` = (maker, *args)."""
    parent = vars(base).get("_fastblocks_recipe")
    recipe = (parent[0], parent[1] + (step,)) if parent else (base, (step,))
    meta = _patched_metaclass(type(base))
    return meta(name, bases, {**namespace, "_fastblocks_recipe": recipe})


def _reduce_class(cls: type):
    return _rebuild_class, (vars(cls)["_fastblocks_recipe"],)


def _rebuild_class(recipe: tuple) -> type:
    cls, steps = recipe
    for maker, *args in steps:
        cls = _MAKERS[maker](cls, *args)
    return cls


copyreg.pickle(PatchedClass, _reduce_class)

_SCOPED: dict = {}


def scoped_class(cls: type) -> type:
    """``cls`` with its forward run inside :func:`fastblocks._recompute.recompute_scope` (created
    once per class; same name, so reprs and type names read as before)."""
    if cls not in _SCOPED:
        # wraps: inspect.signature sees cls.forward's parameters, which torch.export matches
        # dynamic_shapes / the ONNX exporters' input names against.
        @functools.wraps(cls.forward)
        def forward(self, *args, **kwargs):
            with recompute_scope(self.__dict__.get(_RECOMPUTE, "elementwise")):
                return cls.forward(self, *args, **kwargs)

        _SCOPED[cls] = _make_class(cls, ("scoped",), cls.__name__, (cls,),
                                   {"forward": forward, "__module__": cls.__module__,
                                    "__qualname__": cls.__qualname__, "_fastblocks_scoped": True})
    return _SCOPED[cls]


def forward_fingerprint(cls: type) -> Optional[str]:
    """A short hash of the source of ``cls.forward`` (comments, blank lines and indentation
    dropped), or None when the source cannot be read. A forward-swapping mixin lists the
    fingerprints of the original forwards it mirrors (``MIRRORS``): another library version whose
    forward differs is not swapped (see :func:`forward_mismatch`)."""
    try:
        source = inspect.getsource(cls.forward)
    except (OSError, TypeError):
        return None
    lines = (line.split("#", 1)[0].strip() for line in source.splitlines())
    return hashlib.sha256("\n".join(line for line in lines if line).encode()).hexdigest()[:16]


def forward_mismatch(cls: type, forward_mixin: type) -> Optional[str]:
    """None when ``forward_mixin`` mirrors this version of ``cls.forward``, else the reason."""
    fingerprint = forward_fingerprint(cls)
    if fingerprint is None:
        return f"the source of {cls.__name__}.forward cannot be read, so it cannot be checked"
    if fingerprint not in forward_mixin.MIRRORS:
        return (f"{cls.__name__}.forward (fingerprint {fingerprint}) is not the version fastblocks mirrors "
                f"({', '.join(sorted(forward_mixin.MIRRORS))}): the installed library changed it")
    return None


_FUSED: dict = {}


def fused_class(cls: type, forward_mixin: type) -> type:
    """``Fused<cls>``: ``cls`` with the forward of ``forward_mixin`` (a block whose children cannot be
    replaced one by one, e.g. one activation module used in several places), created once."""
    if (cls, forward_mixin) not in _FUSED:
        _FUSED[cls, forward_mixin] = _make_class(cls, ("fused", forward_mixin), "Fused" + cls.__name__,
                                                 (forward_mixin, cls), {})
    return _FUSED[cls, forward_mixin]


_REPARAM: dict = {}


def reparam_class(cls: type) -> type:
    """``cls`` whose re-parameterisation methods (:data:`REPARAM_METHODS`: ``fuse``,
    ``reparameterize``, ``switch_to_deploy``) first put the block's original modules back (its
    part of the model's undo log), then run as written: they fold the original conv / BN weights,
    which the fused modules hold under other structure. Same name, like :func:`scoped_class`."""
    if cls not in _REPARAM:
        def restoring(method_name):
            def method(self, *args, **kwargs):
                _restore_subtree(self)
                self.__class__ = cls  # already so, unless the undo log was lost (never recurse)
                return getattr(self, method_name)(*args, **kwargs)
            method.__name__ = method_name
            return method

        overrides = {n: restoring(n) for n in REPARAM_METHODS if callable(getattr(cls, n, None))}
        _REPARAM[cls] = _make_class(cls, ("reparam",), cls.__name__, (cls,),
                                    {**overrides, "__module__": cls.__module__, "__qualname__": cls.__qualname__})
    return _REPARAM[cls]


_MAKERS = {"scoped": scoped_class, "fused": fused_class, "reparam": reparam_class}


def _restore_subtree(block: nn.Module) -> None:
    """Undo the patch inside ``block`` (its own class swap included), leaving the rest of the model
    patched; the entries leave the model's undo log."""
    undo = block.__dict__.pop(_ROOT_UNDO, None)
    if undo is None:
        return
    inside = {id(m) for m in block.modules()}
    mine, rest = [], []
    for entry in undo:
        (mine if id(entry[4]) in inside else rest).append(entry)
    _apply_undo(mine)
    undo[:] = rest


def _guard_reparam_blocks(patcher: Patcher) -> None:
    """Blocks with re-parameterisation methods and fused modules inside get :func:`reparam_class`,
    so ``timm.utils.reparameterize_model`` on a patched model folds the original weights."""
    # fused modules and eval folds (a conv / BN given a folding class) alike
    targets = {id(entry[4]) for entry in patcher.undo if entry[0] == "module" or entry[4] is not patcher.model}
    for module in patcher.model.modules():
        cls = type(module)
        if module is patcher.model or _ROOT_UNDO in module.__dict__ or \
                not any(callable(getattr(cls, n, None)) for n in REPARAM_METHODS):
            continue
        if any(id(m) in targets for m in module.modules()):
            patcher.swap_class(module, reparam_class(cls))
            module.__dict__[_ROOT_UNDO] = patcher.undo


def _check_model(model: object) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")


def patch(model: nn.Module, backend: str = "auto", *, fuse_lone_bn: bool = False,
          recompute: str = "elementwise") -> PatchReport:
    """Swap fused fastblocks modules into ``model`` in place and report what changed.

    Recognises timm, torchvision, efficientnet_pytorch and fastblocks.zoo blocks (see
    :mod:`fastblocks.patch.rules`): depthwise conv + BN + act, BN + act, squeeze-excite, ECA and
    SiLU / hard-swish. Only exactly-equivalent patterns are fused; anything else is listed in
    ``report.skipped`` with the reason. Parameter and buffer names (state_dict keys) and tensors
    are unchanged; ``model.training`` is kept. Idempotent. The model's class is swapped for a
    same-named subclass whose forward enables recompute-on-load between fused ops (a patched model
    pickles whole too: ``torch.save(model)``; see :class:`PatchedClass`). ``backend`` is stored on the fused
    modules (``"auto"`` resolves per call). ``fuse_lone_bn=True`` also replaces BatchNorms with no
    activation after them (no memory gain). nn.SyncBatchNorm / timm SyncBatchNormAct are always
    replaced, lone ones too, by modules that synchronise statistics themselves
    (:mod:`fastblocks.ops.sync_batchnorm`), so the patched model runs under DDP on any device.
    ``recompute="depthwise"`` also recomputes each fused depthwise output in backward (from its
    input, which it saves anyway, by the one-pass eval form of the op) instead of letting the next
    layer keep it: fewer bytes saved for backward, a depthwise forward more per block in backward.
    """
    from ..inference.pairing import install_folds
    from .rules import RULES

    _check_model(model)
    if not isinstance(fuse_lone_bn, bool):
        raise TypeError(f"fuse_lone_bn must be a bool, got {type(fuse_lone_bn).__name__}")
    backend = _dispatch._check_name(backend)
    check_level(recompute)
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
    install_folds(patcher, patcher.fold_pairs)
    _guard_reparam_blocks(patcher)
    if report.replaced and not getattr(type(model), "_fastblocks_scoped", False):
        # Recompute-on-load across fused ops needs a scope around the model's forward.
        patcher.swap_class(model, scoped_class(type(model)))
    if report.replaced or already:
        model.__dict__[_RECOMPUTE] = recompute
    report.already_patched = already
    return report


def unpatch(model: nn.Module) -> nn.Module:
    """Undo :func:`patch`: the original module objects go back, holding the model's current
    parameter and buffer tensors (so training done while patched is kept). Returns ``model``."""
    _check_model(model)
    _apply_undo(model.__dict__.pop(_UNDO, []))
    model.__dict__.pop(_RECOMPUTE, None)
    return model


def _apply_undo(undo: list) -> None:
    for kind, target, name, old, _owner in reversed(undo):
        if kind == "class":
            target.__class__ = name
            target.__dict__.pop(_ROOT_UNDO, None)
            continue
        if kind == "attr":
            target.__dict__.pop(name, None)
            continue
        new = target._modules[name]
        # Same state_dict keys by design: every tensor the fused module holds under a name the
        # original has (at any depth: MixNet's groups, SE convs) goes back to that name.
        fused = dict(new.named_modules())
        for path, original in old.named_modules():
            holder = fused.get(path)
            if holder is None:
                continue
            for store in ("_parameters", "_buffers"):
                mine, theirs = getattr(original, store), getattr(holder, store)
                for key in list(mine):
                    if key in theirs:
                        mine[key] = theirs[key]
        old.train(new.training)
        target._modules[name] = old
