"""Move a Triton cache compiled ahead of time on one machine to the GPU machine: what it needs to
load the kernels, relocated.

``python -m benchmarks.gpu.triton_cache pack --cache DIR --out FILE.tar.gz``
``python -m benchmarks.gpu.triton_cache unpack FILE.tar.gz --cache DIR``

A cache entry is a folder named by the kernel's cache key, with the compiled binary, its metadata
JSON, the intermediate IRs and a ``__grp__<kernel>.json`` listing the entry's files by *absolute*
path: an entry copied to another folder is not found (Triton checks that the listed files exist)
and the kernel is compiled again. ``pack`` keeps what loading a kernel reads (group file, metadata
JSON, binary: about an eighth of the bytes) with the group's paths made relative, plus a manifest
(Triton / Python version, target); ``unpack`` writes the group files with absolute paths under the
new folder. The cache key covers Triton's own files (``libtriton`` differs between Python
versions), the kernel source, the target and the options, not the folder, so an entry compiled
with the GPU machine's Triton and Python for its target (``benchmarks.gpu.triton_warm`` through a
stand-in driver) is the one its autotuner looks up.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import platform
import sys
import tarfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MANIFEST = "fastblocks-manifest.json"
BINARY_SUFFIXES = (".cubin", ".hsaco")
GROUP_PREFIX = "__grp__"


def kernels_digest() -> str:
    """sha256 of the Triton kernel sources (fastblocks/kernels/*.py). Triton's cache keys cover each kernel's
    source *and its line numbers*, so any edit there, even above a kernel, makes a packed cache stale."""
    folder = os.path.join(ROOT, "fastblocks", "kernels")
    digest = hashlib.sha256()
    for name in sorted(f for f in os.listdir(folder) if f.endswith(".py")):
        with open(os.path.join(folder, name), "rb") as f:
            digest.update(name.encode() + b"\0" + f.read())
    return digest.hexdigest()


def _manifest(entries: int) -> dict:
    try:
        import triton

        version = triton.__version__
    except ImportError:
        version = None
    return dict(triton=version, python=platform.python_version(), entries=entries, kernels=kernels_digest(),
                date=time.strftime("%Y-%m-%d %H:%M:%S"))


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime = len(data), int(time.time())
    tar.addfile(info, io.BytesIO(data))


def pack(cache: str, out: str) -> dict:
    """Write the loadable part of every complete entry of ``cache`` to the tarball ``out``."""
    entries = 0
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with tarfile.open(out, "w:gz") as tar:
        for key in sorted(os.listdir(cache)):
            folder = os.path.join(cache, key)
            groups = [f for f in os.listdir(folder) if f.startswith(GROUP_PREFIX)] if os.path.isdir(folder) else []
            for group in groups:
                with open(os.path.join(folder, group)) as f:
                    children = json.load(f).get("child_paths") or {}
                keep = {name: name for name in children
                        if name.endswith(".json") or name.endswith(BINARY_SUFFIXES)}
                if not all(os.path.exists(os.path.join(folder, name)) for name in keep):
                    continue  # an entry a killed compile left half written
                if not any(name.endswith(BINARY_SUFFIXES) for name in keep):
                    continue
                for name in keep:
                    tar.add(os.path.join(folder, name), arcname=f"{key}/{name}")
                _add_bytes(tar, f"{key}/{group}", json.dumps({"child_paths": keep}).encode())
                entries += 1
        manifest = _manifest(entries)
        _add_bytes(tar, MANIFEST, json.dumps(manifest, indent=1).encode())
    return manifest


def unpack(tarball: str, cache: str) -> dict:
    """Extract ``tarball`` into ``cache`` and point its group files at the extracted files."""
    cache = os.path.abspath(cache)
    os.makedirs(cache, exist_ok=True)
    with tarfile.open(tarball, "r:gz") as tar:
        members = [m for m in tar.getmembers() if m.isfile() and not m.name.startswith(("/", ".."))
                   and ".." not in m.name.split("/")]
        manifest = json.load(tar.extractfile(MANIFEST)) if MANIFEST in tar.getnames() else {}
        for m in members:
            if m.name != MANIFEST:
                tar.extract(m, cache, filter="data") if sys.version_info >= (3, 12) else tar.extract(m, cache)
    relocated = 0
    for key in os.listdir(cache):
        folder = os.path.join(cache, key)
        if not os.path.isdir(folder):
            continue
        for group in (f for f in os.listdir(folder) if f.startswith(GROUP_PREFIX)):
            path = os.path.join(folder, group)
            with open(path) as f:
                children = json.load(f).get("child_paths") or {}
            fixed = {name: os.path.join(folder, os.path.basename(p)) for name, p in children.items()}
            fixed = {name: p for name, p in fixed.items() if os.path.exists(p)}
            if fixed != children:
                with open(path, "w") as f:
                    json.dump({"child_paths": fixed}, f)
                relocated += 1
    return dict(manifest, relocated=relocated)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pack", help="cache folder -> tarball")
    p.add_argument("--cache", default=os.environ.get("TRITON_CACHE_DIR"), help="default $TRITON_CACHE_DIR")
    p.add_argument("--out", required=True)
    u = sub.add_parser("unpack", help="tarball -> cache folder")
    u.add_argument("tarball")
    u.add_argument("--cache", default=os.environ.get("TRITON_CACHE_DIR"), help="default $TRITON_CACHE_DIR")
    args = parser.parse_args(argv)
    if not args.cache:
        parser.error("--cache: give the cache folder (or set TRITON_CACHE_DIR)")
    if args.command == "pack":
        if not os.path.isdir(args.cache):
            parser.error(f"--cache: {args.cache!r} is not a folder")
        info = pack(args.cache, args.out)
        print(f"triton_cache: packed {info['entries']} entries (Triton {info['triton']}, Python {info['python']}) "
              f"into {args.out} ({os.path.getsize(args.out) / 2**20:.1f} MiB)")
        return 0
    if not os.path.exists(args.tarball):
        print(f"triton_cache: no ahead-of-time compiled cache at {args.tarball}: "
              "every kernel is compiled on this machine")
        return 0
    info = unpack(args.tarball, args.cache)
    try:
        import triton

        here = (triton.__version__, platform.python_version().rsplit(".", 1)[0])
        made = (info.get("triton"), str(info.get("python", "")).rsplit(".", 1)[0])
        note = "" if here == made else f" - made with Triton {made[0]} / Python {made[1]}, here {here[0]} / {here[1]}: " \
                                        "its keys will not match"
    except ImportError:
        note = ""
    if info.get("kernels") != kernels_digest():
        note += " - STALE: fastblocks/kernels/ changed since it was packed (make gpu-carry): edited kernels compile here"
    print(f"triton_cache: unpacked {info.get('entries')} entries into {args.cache} "
          f"({info['relocated']} relocated){note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
