"""Worker side of tests/test_compat.py's FSDP2 check: 2 processes, gloo on loopback.

Each rank shards a patched model with ``fully_shard`` on a CPU device mesh, runs one training step
on its own batch and compares with an unpatched, unsharded copy whose gradients it averages over
the ranks itself (what FSDP2's reduce-scatter computes); it saves both to ``<out_dir>/rank<r>.pt``.
"""

from __future__ import annotations

import copy
import datetime
import os
import traceback

import torch
import torch.distributed as dist
from torch import nn

from tests._dist_worker import free_port, spawn_ranks, tiny_model as _tiny_model

WORLD = 2


def run(out_dir: str) -> None:
    spawn_ranks(_entry, (free_port(), out_dir), WORLD, out_dir)


def tiny_model() -> nn.Module:
    """The distributed tests' tiny model (every fused kind), in float64."""
    return _tiny_model().double()


def _full(t: torch.Tensor) -> torch.Tensor:
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def _flat(tensors) -> torch.Tensor:
    return torch.cat([_full(t).detach().double().flatten() for t in tensors])


def fsdp2_step(rank: int) -> dict:
    import fastblocks as fb
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    ref = tiny_model().train()
    pat = copy.deepcopy(ref)
    fb.patch(pat)
    fully_shard(pat, mesh=init_device_mesh("cpu", (WORLD,)))
    x = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(10 + rank), dtype=torch.float64)
    out = {}
    for key, model in (("", pat), ("_ref", ref)):
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        y = model(x)
        y.square().mean().backward()
        if model is ref:
            for p in ref.parameters():
                dist.all_reduce(p.grad)
                p.grad /= WORLD
        out["output" + key] = y.detach()
        out["grads" + key] = _flat(p.grad for p in model.parameters())
        opt.step()
        out["params" + key] = _flat(model.parameters())
    return out


def _entry(rank: int, port: int, out_dir: str) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD, timeout=datetime.timedelta(seconds=120))
    results: dict = {}
    try:
        results = fsdp2_step(rank)
    except NotImplementedError as e:  # an FSDP2 that cannot run on CPU / gloo here
        results = {"skip": f"FSDP2 on CPU with gloo is not supported by this torch: {e}"}
    except Exception:  # noqa: BLE001 - report it to the test process, which fails with it
        results = {"error": traceback.format_exc()}
    finally:
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
        dist.destroy_process_group()
