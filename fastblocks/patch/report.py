"""PatchReport: what fastblocks.patch changed in a model and what it left alone, and why."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


# the replacement named by a folded-report record of a conv with no BatchNorm after it
CONV_ALONE = "eval conv kernel"


@dataclass(frozen=True)
class Replaced:
    path: str          # module path in the model ("blocks.1.0.conv_dw")
    original: str      # original class name(s)
    replacement: str   # fastblocks class
    detail: str = ""   # e.g. "+ bn2 (silu)"


@dataclass(frozen=True)
class Skipped:
    path: str
    original: str
    reason: str


@dataclass
class PatchReport:
    """Returned by :func:`fastblocks.patch`. ``replaced`` / ``skipped`` are lists of records;
    ``str(report)`` is a readable table."""

    model: str = ""
    backend: str = "auto"
    replaced: list = field(default_factory=list)
    skipped: list = field(default_factory=list)
    already_patched: bool = False
    # conv -> BN pairs folded into one conv at eval, and convs with no BN after them that take the
    # same eval path (Replaced records, replacement CONV_ALONE); pairs left unfolded (Skipped)
    folded: list = field(default_factory=list)
    unfolded: list = field(default_factory=list)
    pools: int = 0  # global average pools given the C++ eval pool (fastblocks/inference/pool.py)

    def counts(self) -> dict:
        """Number of replacements per fastblocks class."""
        return dict(Counter(r.replacement for r in self.replaced))

    def __len__(self) -> int:
        return len(self.replaced)

    def __str__(self) -> str:
        head = f"fastblocks.patch({self.model}, backend={self.backend!r}): "
        if self.already_patched and not self.replaced:
            return head + "already patched, nothing new to fuse"
        lines = [head + f"{len(self.replaced)} replaced, {len(self.skipped)} skipped"]
        rows = [(r.path, r.original, r.replacement + (f" {r.detail}" if r.detail else "")) for r in self.replaced]
        rows += [(s.path, s.original, f"skipped: {s.reason}") for s in self.skipped]
        if rows:
            w0 = max(len("module"), *(len(r[0]) for r in rows))
            w1 = max(len("original"), *(len(r[1]) for r in rows))
            lines.append(f"  {'module':<{w0}}  {'original':<{w1}}  result")
            lines += [f"  {a:<{w0}}  {b:<{w1}}  {c}" for a, b, c in rows]
        if self.replaced:
            lines.append("  totals: " + ", ".join(f"{k} x{v}" for k, v in sorted(self.counts().items())))
        else:
            lines.append("  nothing to fuse in this model")
        if self.folded or self.unfolded:
            alone = sum(r.replacement == CONV_ALONE for r in self.folded)
            lines.append(f"  eval: {len(self.folded) - alone} conv + BatchNorm pairs folded into one conv, "
                         + (f"{alone} conv without BatchNorm on the eval path, " if alone else "")
                         + f"{len(self.unfolded)} not foldable"
                         + (f", {self.pools} global average pool{'s' if self.pools != 1 else ''} on the eval kernel"
                            if self.pools else ""))
            lines += [f"    {s.path}  {s.original}  not folded: {s.reason}" for s in self.unfolded]
        elif self.pools:
            lines.append(f"  eval: {self.pools} global average pool{'s' if self.pools != 1 else ''} on the eval kernel")
        return "\n".join(lines)

    __repr__ = __str__
