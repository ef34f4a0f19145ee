"""Generate the README's table of supported model families by patching one model of each.

    python docs/model_table.py            # print the table
    python docs/model_table.py --write    # replace the table between the markers in README.md

Every row is measured, not written by hand: the model is built at random init, ``fastblocks.patch``
runs on it, and the row lists what the returned :class:`fastblocks.PatchReport` replaced (fused
module class x count) and how many modules it left alone (with reasons in the report). Libraries
that are not installed are left out, with a line saying so.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
START, END = "<!-- model-table:start -->", "<!-- model-table:end -->"

# (library, family, model name): one representative of each family the patch rules cover.
MODELS = [
    ("timm", "EfficientNet", "efficientnet_b0"),
    ("timm", "EfficientNet (TF SAME padding)", "tf_efficientnet_b0"),
    ("timm", "MobileNetV2", "mobilenetv2_100"),
    ("timm", "MobileNetV3", "mobilenetv3_large_100"),
    ("timm", "MobileNetV1", "mobilenetv1_100"),
    ("timm", "ReXNet", "rexnet_100"),
    ("timm", "MixNet", "mixnet_s"),
    ("timm", "GhostNet", "ghostnet_100"),
    ("timm", "GhostNetV3", "ghostnetv3_050"),
    ("timm", "MobileOne", "mobileone_s0"),
    ("timm", "RepViT", "repvit_m0_9"),
    ("timm", "HGNet / HGNetV2", "hgnetv2_b0"),
    ("timm", "VoVNet (eSE)", "ese_vovnet19b_dw"),
    ("timm", "Xception (aligned)", "xception41"),
    ("timm", "Xception (legacy)", "legacy_xception"),
    ("timm", "ResNet", "resnet50"),
    ("timm", "SE-ResNet", "seresnet18"),
    ("timm", "ECA-ResNet", "ecaresnet26t"),
    ("timm", "SENet (legacy)", "legacy_seresnet18"),
    ("timm", "ResNeSt", "resnest14d"),
    ("timm", "Res2Net", "res2net50_14w_8s"),
    ("timm", "DLA", "dla34"),
    ("timm", "CSPNet / DarkNet", "cspresnet50"),
    ("timm", "HRNet", "hrnet_w18_small"),
    ("timm", "MaxViT", "maxvit_nano_rw_256"),
    ("timm", "EfficientFormer", "efficientformer_l1"),
    ("timm", "EfficientViT (MIT)", "efficientvit_b0"),
    ("timm", "EfficientViT (MSRA)", "efficientvit_m0"),
    ("timm", "Next-ViT", "nextvit_small"),
    ("timm", "TinyViT", "tiny_vit_5m_224"),
    ("timm", "LeViT (conv)", "levit_conv_128s"),
    ("timm", "SHViT", "shvit_s1"),
    ("timm", "EfficientViM", "efficientvim_m1"),
    ("timm", "iFormer", "iformer_s"),
    ("timm", "CPUBone", "cpubone_s0"),
    ("timm", "LowFormer", "lowformer_b0"),
    ("torchvision", "EfficientNet", "efficientnet_b0"),
    ("torchvision", "MobileNetV2", "mobilenet_v2"),
    ("torchvision", "MobileNetV3", "mobilenet_v3_large"),
    ("torchvision", "ResNet", "resnet50"),
    ("torchvision", "DenseNet", "densenet121"),
    ("torchvision", "GoogLeNet", "googlenet"),
    ("torchvision", "Inception v3", "inception_v3"),
    ("efficientnet_pytorch", "EfficientNet", "efficientnet-b0"),
    ("fastblocks.zoo", "ECA-MobileNetV2", "eca_mobilenet_v2"),
    ("fastblocks.zoo", "ECA-ResNet", "eca_resnet50"),
    ("fastblocks.zoo", "ReXNet-lite", "rexnet_lite_1_0"),
    ("fastblocks.zoo", "ShuffleNetV1", "shufflenet_v1_g3"),
    ("fastblocks.zoo", "SE-ResNet (pre-act)", "preact_se_resnet18"),
]

# Short names for the fused module classes, in table order.
SHORT = {"DWConvBNAct": "dw+BN+act", "MixedDWConvBNAct": "mixed dw+BN+act", "BatchNormAct2d": "BN+act",
         "SyncBatchNormAct2d": "SyncBN+act", "SqueezeExcite": "SE", "SqueezeExciteWithNorm": "SE (BN inside)",
         "EffectiveSqueezeExcite": "eSE", "EfficientChannelAttention": "ECA", "MemoryEfficientAct": "act",
         "FusedMBConvBlock": "MBConv blocks (dw+BN+swish, SE, BN+swish)"}


def build(library: str, name: str) -> torch.nn.Module:
    """The model ``name`` of ``library`` at random init (no download)."""
    if library == "timm":
        import timm
        return timm.create_model(name, pretrained=False)
    if library == "torchvision":
        import torchvision
        kwargs = {"aux_logits": False, "init_weights": False} if name in ("googlenet", "inception_v3") else {}
        return torchvision.models.get_model(name, weights=None, **kwargs)
    if library == "efficientnet_pytorch":
        from efficientnet_pytorch import EfficientNet
        return EfficientNet.from_name(name)
    if library == "fastblocks.zoo":
        from fastblocks import zoo
        return zoo.create(name)
    raise ValueError(f"library must be timm, torchvision, efficientnet_pytorch or fastblocks.zoo, got {library!r}")


def fused_summary(counts: dict) -> str:
    order = list(SHORT) + sorted(set(counts) - set(SHORT))
    return ", ".join(f"{counts[k]} {SHORT.get(k, k)}" for k in order if counts.get(k)) or "nothing"


def rows() -> tuple[list, list]:
    """(table rows, notes on libraries left out)."""
    import fastblocks as fb

    out, missing = [], []
    for library, family, name in MODELS:
        top = library.split(".")[0]
        if top != "fastblocks" and importlib.util.find_spec(top) is None:
            if library not in missing:
                missing.append(library)
            continue
        model = build(library, name)
        report = fb.patch(model)
        out.append((library, family, f"`{name}`", fused_summary(report.counts()), str(len(report.skipped))))
    return out, missing


def render(table: list, missing: list) -> str:
    from importlib.metadata import PackageNotFoundError, version

    def ver(pkg):
        try:
            return version(pkg)
        except PackageNotFoundError:
            return "not installed"

    lines = ["| library | family | model | fused by `fb.patch` | left as is |", "|---|---|---|---|---|"]
    lines += ["| " + " | ".join(r) + " |" for r in table]
    libs = ", ".join(f"{p} {ver(p)}" for p in ("timm", "torchvision", "efficientnet_pytorch"))
    lines.append("")
    lines.append(f"Generated by `python docs/model_table.py --write` ({libs}; random init). \"left as is\" counts "
                 "the modules the report skips, each with its reason (`print(fb.patch(model))`).")
    if missing:
        lines.append(f"Not installed when generated: {', '.join(missing)}.")
    return "\n".join(lines)


def write_readme(table_md: str, path: str, start: str = START, end: str = END) -> None:
    """Replace the text between the ``start`` and ``end`` markers of ``path`` by ``table_md``."""
    text = open(path).read()
    if start not in text or end not in text:
        raise ValueError(f"{path} has no {start} ... {end} markers")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    with open(path, "w") as f:
        f.write(head + start + "\n" + table_md + "\n" + end + tail)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="replace the table in README.md")
    parser.add_argument("--readme", default=os.path.join(ROOT, "README.md"))
    args = parser.parse_args(argv)
    t0 = time.time()
    table_md = render(*rows())
    if args.write:
        write_readme(table_md, args.readme)
        print(f"wrote {len(table_md.splitlines())} lines into {args.readme} ({time.time() - t0:.0f} s)", file=sys.stderr)
    else:
        print(table_md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
