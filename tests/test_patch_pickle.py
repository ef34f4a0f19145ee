"""A patched model pickles whole (torch.save(model)): the classes patch makes are pickled as their
recipe (fastblocks.patch.patcher.PatchedClass) and rebuilt on load, in this process or a fresh one."""
import io
import subprocess
import sys
import textwrap

import pytest
import torch

import fastblocks as fb

timm = pytest.importorskip("timm")
tv = pytest.importorskip("torchvision")


def round_trip(model):
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)


@pytest.mark.parametrize("make", [
    lambda: timm.create_model("mixnet_s", num_classes=5),  # scoped root, MixedDWConvBNAct groups
    lambda: tv.models.resnet18(num_classes=5),  # FusedBasicBlock (swapped forward)
], ids=["mixnet_s", "torchvision.resnet18"])
def test_patched_model_round_trips_with_the_same_classes(make):
    torch.manual_seed(0)
    model = make().eval()
    original_classes = {path: type(m) for path, m in model.named_modules()}
    report = fb.patch(model, backend="eager")
    x = torch.randn(2, 3, 32, 32)
    expected = model(x)
    loaded = round_trip(model)
    assert [type(m) for m in loaded.modules()] == [type(m) for m in model.modules()]
    assert torch.equal(loaded(x), expected)
    assert fb.patch(loaded).already_patched
    loaded.train()(x).sum().backward()  # the recompute scope of the rebuilt root class works
    fb.unpatch(loaded.eval())
    assert {path: type(m) for path, m in loaded.named_modules()} == original_classes
    assert report.replaced


def test_reparameterisable_blocks_keep_restoring_after_a_round_trip():
    from timm.utils.model import reparameterize_model

    torch.manual_seed(0)
    model = timm.create_model("repvit_m0_9", num_classes=5).eval()
    x = torch.randn(2, 3, 64, 64)
    expected = reparameterize_model(model)(x)
    fb.patch(model, backend="eager")
    deployed = reparameterize_model(round_trip(model))
    assert ((deployed(x) - expected).norm() / expected.norm()).item() < 1e-5


def test_a_fresh_process_loads_a_patched_model(tmp_path):
    """No class made by patch exists in the loading process before torch.load rebuilds it."""
    torch.manual_seed(0)
    model = tv.models.resnet18(num_classes=5).eval()
    fb.patch(model, backend="eager")
    x = torch.randn(1, 3, 32, 32)
    torch.save({"model": model, "x": x, "y": model(x)}, tmp_path / "patched.pt")
    script = textwrap.dedent(f"""
        import torch
        torch.set_num_threads({torch.get_num_threads()})  # oneDNN's conv rounding depends on it
        saved = torch.load({str(tmp_path / "patched.pt")!r}, weights_only=False)
        model = saved["model"]
        assert type(model).__name__ == "ResNet" and type(model.layer1[0]).__name__ == "FusedBasicBlock"
        assert torch.equal(model(saved["x"]), saved["y"])
        import fastblocks as fb
        fb.unpatch(model)
        assert type(model.layer1[0]) is __import__("torchvision").models.resnet.BasicBlock
        print("loaded")
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "loaded" in proc.stdout, proc.stderr[-3000:]
