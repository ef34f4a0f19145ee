"""DDP and SyncBatchNorm: 2 processes, gloo, loopback, torch.multiprocessing spawn.

One spawn (module fixture, tests/_dist_worker.py) runs every distributed scenario; the tests here
build the independent references in this process and compare:

- plain DDP: patched vs unpatched timm model under DDP;
- SyncBatchNorm: convert_sync_batchnorm + patch under DDP (uneven per-rank batches 3 / 5) vs ONE
  process running plain BatchNorm on the concatenated batch (loss = sum of the per-rank losses,
  gradients / world size = what DDP averages);
- the same, torch.compile'd (fullgraph=True, aot_eager) before the DDP wrap.

Single-process tests cover the sync ops without a process group, the patch report and unpatch.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastblocks as fb
from tests import _dist_worker as W
from tests.helpers import check_patch_equivalence, compare_with_reference, dwconv_call, dwconv_inputs, randn, rel_err

pytest.importorskip("timm")
pytest.importorskip("torchvision")
if not torch.distributed.is_available():
    pytest.skip("torch.distributed is not available", allow_module_level=True)

WORLD = 2
LARGEST: dict = {}  # scenario -> largest relative error seen (printed with -s)


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    W.run(str(out), WORLD)
    results = [torch.load(out / f"rank{r}.pt") for r in range(WORLD)]
    for r in results:
        assert "error" not in r, r.get("error")
    return results


def _note(key, err):
    LARGEST[key] = max(LARGEST.get(key, 0.0), err)
    return err


def _check(key, out, ref, tol):
    assert out.shape == ref.shape, f"{key}: shape {tuple(out.shape)} != {tuple(ref.shape)}"
    assert torch.isfinite(out).all(), f"{key}: non-finite values"
    if not ref.is_floating_point():
        assert torch.equal(out, ref), f"{key}: {out} != {ref}"
        return
    err = _note(key.split(":")[0], rel_err(out, ref))
    assert err <= tol, f"{key}: relative error {err:.3e} > {tol:.0e}"


def _flat(tensors) -> torch.Tensor:
    return torch.cat([t.detach().double().flatten() for t in tensors])


def _groups(rec, out_slice=slice(None)) -> dict:
    """The compared quantities of one record, float ones flattened per group (outputs sliced to the
    rank's part of a concatenated-batch reference)."""
    g = {}
    for s in range(W.STEPS):
        g[f"step {s} output"] = rec["out"][s][out_slice]
        g[f"step {s} loss"] = rec["loss"][s]
        g[f"step {s} grads"] = _flat(rec["grads"][s][n] for n in sorted(rec["grads"][s]))
    g["running stats"] = _flat(b for _, b in sorted(rec["buffers"].items()) if b.is_floating_point())
    g["num_batches_tracked"] = _flat(b for _, b in sorted(rec["buffers"].items()) if not b.is_floating_point())
    g[f"params after {W.STEPS} steps"] = _flat(p for _, p in sorted(rec["params"].items()))
    g["eval output"] = rec["eval_out"]
    return g


def _compare_f64(key, rec, ref, out_slice=slice(None), tol=1e-8):
    """float64: every tensor (each gradient, buffer, parameter) equal to ``tol`` (relative)."""
    assert rec["buffers"].keys() == ref["buffers"].keys()
    for s in range(W.STEPS):
        assert rec["grads"][s].keys() == ref["grads"][s].keys()
        for n, g in ref["grads"][s].items():
            _check(f"{key}: step {s} grad {n}", rec["grads"][s][n], g, tol)
    for n, b in ref["buffers"].items():
        _check(f"{key}: buffer {n}", rec["buffers"][n], b, tol)
    got = _groups(rec)
    for what, t in _groups(ref, out_slice).items():
        _check(f"{key}: {what}", got[what], t, tol)


# float32 MobileNets at random init are chaotic: plain (unpatched, single-process) float32 BN runs
# differ from float64 by ~1e-3 in step-0 gradients and by tens of percent after one SGD step. Their
# float32 runs are checked on the step-0 output and loss only; the tiny model (well conditioned) on
# everything. Exactness is shown in float64.
F32_MOBILENET_GROUPS = ("step 0 output", "step 0 loss")


def _compare_f32(key, rec, ref64, out_slice=slice(None), groups=None):
    """float32 against the float64 reference within the conventions' bounds (1e-5 forward, 1e-4
    gradients / parameters), per group (outputs, all gradients of a step, running stats, ...)."""
    got, truth = _groups(rec), _groups(ref64, out_slice)
    assert torch.equal(got["num_batches_tracked"], truth["num_batches_tracked"])
    for what, t in truth.items():
        if what == "num_batches_tracked" or (groups is not None and what not in groups):
            continue
        tol = 1e-4 if ("grads" in what or "params" in what) else 1e-5
        _check(f"{key}: {what}", got[what], t, tol)


# ----------------------------------------------------------------------------- (i) plain DDP

def test_plain_ddp_patched_equals_unpatched(ranks):
    for rank, res in enumerate(ranks):
        f64, f32 = res["plain_f64"], res["plain_f32"]
        assert f64["replaced"] > 30
        _compare_f64(f"plain DDP f64 rank {rank}", f64["patched"], f64["unpatched"])
        # float32 (per-rank BN over 2 samples): as accurate as the unpatched model, both against
        # float64 - the criterion of tests.helpers.check_patch_equivalence - on step 0.
        got, base, truth = _groups(f32["patched"]), _groups(f32["unpatched"]), _groups(f64["unpatched"])
        for what in ("step 0 output", "step 0 loss", "step 0 grads"):
            err, err_u = rel_err(got[what], truth[what]), rel_err(base[what], truth[what])
            if what == "step 0 loss":
                # One scalar: its rounding error is a single draw (seen from 2e-6 to 5e-5 for
                # equally exact kernels), so it is held to the unpatched model's output error too.
                err_u = max(err_u, rel_err(base["step 0 output"], truth["step 0 output"]))
            _note(f"plain DDP f32 (vs f64) {what}", err)
            assert err <= 2 * err_u + 1e-5, f"plain DDP f32 {what}: {err:.2e} vs unpatched {err_u:.2e}"
    # DDP really averaged: both ranks hold the same gradients, from different inputs.
    a, b = (res["plain_f64"]["patched"] for res in ranks)
    assert rel_err(a["out"][0], b["out"][0]) > 1e-2
    for n, g in a["grads"][0].items():
        torch.testing.assert_close(g, b["grads"][0][n], rtol=0, atol=0)


# ----------------------------------------------------------------------------- (ii), (iii) SyncBatchNorm

def sync_reference(name: str, size: int, dtype=torch.float64) -> dict:
    """One process, plain BatchNorm, the concatenated batch; gradients of the sum of the per-rank
    losses divided by the world size (what DDP averages); same SGD steps."""
    model = W.MODELS[name]().to(dtype)
    named = list(model.named_parameters())
    opt = torch.optim.SGD(model.parameters(), lr=W.LR)
    rec = {"out": [], "loss": [], "grads": []}
    for s in range(W.STEPS):
        xs, ys = zip(*(W.batch(r, s, W.SYNC_BATCH[r], size, dtype) for r in range(WORLD)))
        model.train()
        opt.zero_grad(set_to_none=True)
        out = model(torch.cat(xs))
        losses = [F.cross_entropy(o, y) for o, y in zip(out.split(W.SYNC_BATCH), ys)]
        sum(losses).backward()
        for _, p in named:
            p.grad /= WORLD
        rec["out"].append(out.detach())
        rec["loss"].append(torch.stack([loss.detach() for loss in losses]))
        rec["grads"].append({n: p.grad.clone() for n, p in named})
        opt.step()
    rec["buffers"] = {n: b.detach().clone() for n, b in model.named_buffers()}
    rec["params"] = {n: p.detach().clone() for n, p in named}
    model.eval()
    with torch.no_grad():
        rec["eval_out"] = [model(W.batch(r, 0, W.SYNC_BATCH[r], size, dtype)[0]) for r in range(WORLD)]
    return rec


def _rank_view(ref: dict, rank: int) -> dict:
    view = dict(ref)
    view["loss"] = [loss[rank] for loss in ref["loss"]]
    view["eval_out"] = ref["eval_out"][rank]
    return view


def _slice(rank):
    start = sum(W.SYNC_BATCH[:rank])
    return slice(start, start + W.SYNC_BATCH[rank])


@pytest.mark.parametrize("scenario, name, size", [
    ("sync_tv", "tv", W.SIZE),            # torch convert_sync_batchnorm, explicit process group; f64 + f32
    ("sync_timm", "timm", W.SIZE),        # timm convert_sync_batchnorm (SyncBatchNormAct); f64
    ("compiled", "tiny", 16),         # torch.compile(fullgraph=True, aot_eager) + DDP; f64 + f32
])
def test_syncbn_ddp_equals_single_process_bn_on_concatenated_batch(ranks, scenario, name, size):
    ref64 = sync_reference(name, size)
    for rank, res in enumerate(ranks):
        for dtype in ("f64", "f32"):
            rec = res.get(f"{scenario}_{dtype}")
            if rec is None:
                continue
            assert rec.get("leftover", []) == [], "SyncBatchNorm left in the patched model"
            key = f"{scenario} {dtype} rank {rank}"
            if dtype == "f64":
                _compare_f64(key, rec, _rank_view(ref64, rank), _slice(rank))
            else:
                _compare_f32(key, rec, _rank_view(ref64, rank), _slice(rank),
                             None if name == "tiny" else F32_MOBILENET_GROUPS)
    # The reference discriminates: BN on one rank's batch alone gives a clearly different output.
    alone = W.MODELS[name]().double().train()(W.batch(0, 0, W.SYNC_BATCH[0], size, torch.float64)[0])
    assert rel_err(alone, ref64["out"][0][_slice(0)]) > 1e-3


def test_syncbn_report_lists_every_syncbn_fused(ranks):
    text = ranks[0]["sync_tv_f64"]["report"]
    assert "0 skipped" in text and "synchronised" in text and "SyncBatchNormAct2d (act=identity)" in text
    assert "SyncBatchNormAct2d (act=relu6)" in ranks[0]["sync_timm_f64"]["report"]


def test_largest_differences_seen(ranks):
    """Not a check: prints the largest relative error per scenario (run with -s)."""
    print("\nlargest relative errors:", {k: f"{v:.2e}" for k, v in sorted(LARGEST.items())})


# ----------------------------------------------------------------------------- (iv) single process

def sync_tiny():
    return nn.SyncBatchNorm.convert_sync_batchnorm(W.tiny_model())


def test_sync_modules_without_process_group_equal_batchnorm():
    assert not torch.distributed.is_initialized()
    report = check_patch_equivalence(sync_tiny(), (3, 3, 16, 16))
    assert report.counts() == {"DWConvBNAct": 1, "SyncBatchNormAct2d": 2}
    assert report.skipped == []


def test_patch_fuses_syncbn_and_unpatch_restores_it():
    model = sync_tiny()
    before = dict(model.named_modules())
    keys = list(model.state_dict().keys())
    report = fb.patch(model)
    assert not any(isinstance(m, nn.SyncBatchNorm) for m in model.modules())
    assert {r.original for r in report.replaced} == {"SyncBatchNorm", "Conv2d+SyncBatchNorm"}
    assert "synchronised" in str(report)
    assert list(model.state_dict().keys()) == keys
    assert isinstance(model[1], fb.nn.SyncBatchNormAct2d) and isinstance(model[4], fb.nn.AbsorbedSyncBatchNorm2d)
    fb.unpatch(model)
    assert all(before[k] is m for k, m in model.named_modules())
    assert [type(model[i]) for i in (1, 4, 7)] == [nn.SyncBatchNorm] * 3


def test_lone_syncbn_fused_even_without_fuse_lone_bn_and_process_group_kept():
    pg = object()  # any object: only carried to the op (as its group name) when synchronising
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.SyncBatchNorm(4, process_group=pg), nn.BatchNorm2d(4))
    report = fb.patch(model, fuse_lone_bn=False)
    assert type(model[1]) is fb.nn.SyncBatchNormAct2d and model[1].process_group is pg
    assert type(model[2]) is nn.BatchNorm2d  # a plain lone BN is still skipped
    assert [s.path for s in report.skipped] == ["2"]


def test_sync_module_accepts_non_4d_input_like_syncbatchnorm():
    bn = nn.SyncBatchNorm(5).double()
    fused = fb.nn.SyncBatchNormAct2d.from_batchnorm(copy.deepcopy(bn))
    for shape in [(4, 5), (4, 5, 7)]:
        x = randn(*shape, seed=len(shape))
        torch.testing.assert_close(fused(x), bn(x), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(fused.running_var, bn.running_var, rtol=1e-12, atol=1e-12)


def _sync_dwconv(**kw):
    """The sync op, or (under fb.backend("reference")) plain training-mode dwconv_bn_act."""
    if fb.get_backend() == "reference":
        return dwconv_call(training=True, **kw)
    pos = [kw.pop(k) for k in ("x", "weight", "bn_weight", "bn_bias", "running_mean", "running_var")]
    return fb.ops.sync_dwconv_bn_act(*pos, **kw)


def _sync_bn(x, bn_weight, bn_bias, running_mean, running_var, **kw):
    if fb.get_backend() == "reference":
        return fb.ops.bn_act(x, bn_weight, bn_bias, running_mean, running_var, training=True, **kw)
    return fb.ops.sync_bn_act(x, bn_weight, bn_bias, running_mean, running_var, **kw)


@pytest.mark.parametrize("backend", [b for b in ("eager", "cpu") if b in fb.available_backends()])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("fmt", ["nchw", "channels_last"])
def test_sync_ops_without_process_group_match_batchnorm(backend, dtype, fmt):
    inputs = dwconv_inputs(3, 5, 9, 7, 5, seed=3, fmt=fmt, conv_bias=True, stride=2, padding="tf_same",
                           act="silu", momentum=0.2)
    compare_with_reference(_sync_dwconv, inputs, dtype, backend)
    bn_inputs = {k: inputs[k] for k in ("x", "bn_weight", "bn_bias", "running_mean", "running_var")}
    bn_inputs["x"] = bn_inputs["x"] + 3.0  # offset mean: the sum-of-squares path must not cancel
    compare_with_reference(_sync_bn, dict(bn_inputs, act="hardswish"), dtype, backend)


def test_sync_op_gradcheck_and_opcheck():
    x = randn(2, 3, 5, 6, seed=1).requires_grad_()
    w = randn(3, 1, 3, 3, seed=2).requires_grad_()
    g, b = randn(3, seed=3).requires_grad_(), randn(3, seed=4).requires_grad_()
    fn = lambda x, w, g, b: fb.ops.sync_dwconv_bn_act(x, w, g, b, None, None, act="relu6")  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, w, g, b))
    assert torch.autograd.gradcheck(lambda x, g: fb.ops.sync_bn_act(x, g, None, None, None, act="identity"), (x, g))
    op = torch.ops.fastblocks.sync_batch_norm.default
    args = (x.float().detach().requires_grad_(), w.float().detach().requires_grad_(), None, None, None,
            1, "int", 1, 1, 1e-5, "silu", "", "eager")
    torch.library.opcheck(op, args)


def test_sync_op_rejects_single_value_per_channel():
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        fb.ops.sync_bn_act(torch.randn(1, 3, 1, 1), None, None, None, None)


def test_group_name_resolution_helpers():
    from fastblocks.ops import sync_batchnorm as sb
    assert sb.group_name(None) == "" and sb.resolve_group("") is None and not sb.need_sync()
    assert hasattr(torch.distributed.distributed_c10d, "_resolve_process_group")


def _timm_rexnet():
    import timm
    from timm.layers import convert_sync_batchnorm
    torch.manual_seed(0)
    return convert_sync_batchnorm(timm.create_model("rexnet_100", num_classes=5))  # SE with a BN inside


def _effnet_pytorch():
    ep = pytest.importorskip("efficientnet_pytorch")
    torch.manual_seed(0)
    return nn.SyncBatchNorm.convert_sync_batchnorm(ep.EfficientNet.from_name("efficientnet-b0", num_classes=5))


@pytest.mark.parametrize("build", [_timm_rexnet, _effnet_pytorch])  # torchvision: mobilenet_v2 above
def test_patch_leaves_no_syncbatchnorm_in_any_family(build):
    """Every SyncBatchNorm is replaced (DDP refuses CPU models containing one); without a process
    group the patched model equals the unpatched one (SyncBN then runs as BN)."""
    model = build().double()
    patched = copy.deepcopy(model)
    report = fb.patch(patched)
    assert [n for n, m in patched.named_modules() if isinstance(m, nn.SyncBatchNorm)] == [], str(report)
    assert list(patched.state_dict()) == list(model.state_dict())
    x = randn(3, 3, 64, 64, seed=5)
    torch.manual_seed(1)
    expected = model.train()(x)
    torch.manual_seed(1)
    torch.testing.assert_close(patched.train()(x), expected, rtol=1e-9, atol=1e-10)
    fb.unpatch(patched)
    assert sum(isinstance(m, nn.SyncBatchNorm) for m in patched.modules()) == \
        sum(isinstance(m, nn.SyncBatchNorm) for m in model.modules())
