"""Worker side of tests/test_distributed.py: 2 processes, gloo on loopback, torch.multiprocessing spawn.

One spawn runs every scenario (spawning and importing torch + timm per process is the slow part);
each rank saves what it saw (losses, outputs, DDP-averaged gradients, buffers, parameters) to
``<out_dir>/rank<r>.pt``; the test process builds the independent references and compares.
"""

from __future__ import annotations

import copy
import datetime
import os
import socket
import traceback

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

STEPS = 2
LR = 0.01  # small steps: random-init nets amplify any difference after a large SGD step
SYNC_BATCH = (3, 5)  # uneven per-rank batch sizes for the SyncBatchNorm scenarios
# 64x64: the last stages of MobileNetV2 run at 2x2, so BN never sees only a couple of values per
# channel (BN over 2 values is so ill-conditioned that even float64 runs differ by 1e-5 after a step).
SIZE = 64


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn_ranks(entry, args: tuple, world: int, out_dir: str) -> None:
    """Run ``entry(rank, *args)`` in ``world`` processes; each writes ``<out_dir>/rank<r>.pt``."""
    import torch.multiprocessing as mp
    try:
        mp.spawn(entry, args=args, nprocs=world, join=True)
    except mp.ProcessExitedException:
        # A rank that wrote its results and then died on a signal tearing down its process group
        # (gloo's threads abort now and then at exit: "terminate called without an active
        # exception") has still reported; a rank without its results file failed.
        if not all(os.path.exists(os.path.join(out_dir, f"rank{r}.pt")) for r in range(world)):
            raise


def run(out_dir: str, world: int = 2) -> None:
    spawn_ranks(_entry, (world, free_port(), out_dir), world, out_dir)


# ----------------------------------------------------------------------------- models and data

def tiny_model() -> nn.Module:
    """conv+BN+ReLU6, depthwise conv+BN+SiLU, pointwise conv+lone BN, head: every fused kind."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU6(),
        nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False), nn.BatchNorm2d(8), nn.SiLU(),
        nn.Conv2d(8, 6, 1, bias=False), nn.BatchNorm2d(6),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 5))


def timm_model() -> nn.Module:
    import timm
    torch.manual_seed(0)
    return timm.create_model("mobilenetv2_050", num_classes=5)


def tv_model() -> nn.Module:
    import torchvision
    torch.manual_seed(0)
    return torchvision.models.mobilenet_v2(width_mult=0.25, num_classes=5, dropout=0.0)  # no random masks


MODELS = {"tiny": tiny_model, "timm": timm_model, "tv": tv_model}


def batch(rank: int, step: int, n: int, size: int, dtype):
    """Rank- and step-specific input and labels (same on every process that asks)."""
    gen = torch.Generator().manual_seed(1000 * step + rank)
    x = torch.randn(n, 3, size, size, generator=gen, dtype=torch.float64).to(dtype)
    y = torch.randint(0, 5, (n,), generator=gen)
    return x, y


def train(model: nn.Module, inputs, step_fn=None):
    """STEPS SGD steps of mean cross-entropy; records per step the output, loss and gradients (as
    the optimizer sees them), then buffers, parameters and an eval-mode output."""
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    rec = {"out": [], "loss": [], "grads": []}
    named = [(n, p) for n, p in _inner(model).named_parameters()]
    for x, y in inputs:
        model.train()
        opt.zero_grad(set_to_none=True)
        out = model(x)
        loss = F.cross_entropy(out, y)
        loss.backward()
        rec["out"].append(out.detach().clone())
        rec["loss"].append(loss.detach().clone())
        rec["grads"].append({n: p.grad.detach().clone() for n, p in named})
        opt.step()
    rec["buffers"] = {n: b.detach().clone() for n, b in _inner(model).named_buffers()}
    rec["params"] = {n: p.detach().clone() for n, p in named}
    model.eval()
    with torch.no_grad():
        rec["eval_out"] = model(inputs[0][0]).clone()
    return rec


def _inner(model):
    model = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    return getattr(model, "_orig_mod", model)


def ddp(model):
    return nn.parallel.DistributedDataParallel(model)  # buffers broadcast from rank 0 (default)


# ----------------------------------------------------------------------------- scenarios

def plain_ddp(rank, dtype):
    """(i) plain BatchNorm, DDP: unpatched vs patched timm model, per-rank batch 2x3x64x64."""
    import fastblocks as fb
    base = timm_model().to(dtype)
    patched = copy.deepcopy(base)
    report = fb.patch(patched)
    inputs = [batch(rank, s, 2, SIZE, dtype) for s in range(STEPS)]
    return {"unpatched": train(ddp(base), inputs), "patched": train(ddp(patched), inputs),
            "replaced": len(report.replaced)}


def sync_ddp(rank, dtype, name, explicit_group=False):
    """(ii) convert_sync_batchnorm + patch + DDP, uneven per-rank batches (3 and 5)."""
    import fastblocks as fb
    model = MODELS[name]().to(dtype)
    group = dist.new_group([0, 1]) if explicit_group else None
    if name == "timm":
        from timm.layers import convert_sync_batchnorm
        model = convert_sync_batchnorm(model, group)
    else:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model, group)
    report = fb.patch(model)
    leftover = [n for n, m in model.named_modules() if isinstance(m, nn.SyncBatchNorm)]
    inputs = [batch(rank, s, SYNC_BATCH[rank], SIZE, dtype) for s in range(STEPS)]
    rec = train(ddp(model), inputs)
    rec["report"] = str(report)
    rec["leftover"] = leftover
    return rec


def sync_compiled(rank, dtype):
    """(iii) convert_sync_batchnorm + patch, torch.compile(fullgraph=True, aot_eager), then DDP."""
    import fastblocks as fb
    torch._dynamo.reset()
    model = nn.SyncBatchNorm.convert_sync_batchnorm(tiny_model().to(dtype))
    fb.patch(model)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    inputs = [batch(rank, s, SYNC_BATCH[rank], 16, dtype) for s in range(STEPS)]
    return train(ddp(compiled), inputs)


def _entry(rank, world, port, out_dir):
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=120))
    results = {}
    try:
        results["plain_f64"] = plain_ddp(rank, torch.float64)
        results["plain_f32"] = plain_ddp(rank, torch.float32)
        results["sync_tv_f64"] = sync_ddp(rank, torch.float64, "tv", explicit_group=True)
        results["sync_tv_f32"] = sync_ddp(rank, torch.float32, "tv")
        results["sync_timm_f64"] = sync_ddp(rank, torch.float64, "timm")
        results["compiled_f64"] = sync_compiled(rank, torch.float64)
        results["compiled_f32"] = sync_compiled(rank, torch.float32)
    except Exception:  # noqa: BLE001 - report it to the test process, which fails with it
        results["error"] = traceback.format_exc()
        raise
    finally:
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
        dist.destroy_process_group()
