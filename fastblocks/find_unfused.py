"""``python -m fastblocks.find_unfused MODEL ...``: which BN -> act pairs fb.patch leaves unfused in
timm models (:func:`fastblocks.find_unfused_bn_act` on each, randomly initialised)."""

from __future__ import annotations

import torch

from .patch import find_unfused_bn_act, patch


def main(argv=None) -> int:
    """``python -m fastblocks.find_unfused MODEL [MODEL ...] [--size N]``: patch each timm model
    (random init) and print the BN -> act pairs it still runs unfused; exit status 1 if a fusable one
    is left (a rule to add), 0 otherwise."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m fastblocks.find_unfused", description=main.__doc__)
    parser.add_argument("models", nargs="+", help="timm model names")
    parser.add_argument("--size", type=int, default=None,
                        help="input height = width (default: the model's pretrained input size)")
    args = parser.parse_args(argv)
    import timm

    fusable_left = False
    for name in args.models:
        model = timm.create_model(name, pretrained=False)
        patch(model)
        size = args.size or (getattr(model, "pretrained_cfg", None) or {}).get("input_size", (3, 224, 224))[-1]
        pairs = find_unfused_bn_act(model, torch.randn(1, 3, size, size))
        fusable_left |= any(p.fusable for p in pairs)
        print(f"{name}: {len(pairs)} unfused BN -> act pair(s)")
        for p in pairs:
            print(f"  {p.bn} -> {p.act}: {p.activation}{'' if p.fusable else ' (not fusable)'}")
    return 1 if fusable_left else 0


if __name__ == "__main__":
    raise SystemExit(main())
