"""benchmarks.gpu.triton_cache: a Triton cache packed in one folder is found by Triton where it is
unpacked."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile

import pytest

from benchmarks.gpu import triton_cache

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.tooling


def _entry(cache, key, files, listed=None):
    folder = cache / key
    folder.mkdir(parents=True)
    for name in files:
        (folder / name).write_bytes(b"x" * 10)
    children = {name: str(folder / name) for name in (listed or files)}
    (folder / "__grp___k.json").write_text(json.dumps({"child_paths": children}))


def test_pack_keeps_what_loading_reads_and_unpack_relocates(tmp_path):
    here = tmp_path / "here"
    _entry(here, "AAA", ["_k.json", "_k.cubin", "_k.llir", "_k.ptx", "_k.ttir"])
    _entry(here, "BBB", ["_k.json"], listed=["_k.json", "_k.cubin"])  # a compile killed half way
    _entry(here, "CCC", ["_k.json"])  # no binary
    tarball = tmp_path / "packed" / "cache.tar.gz"
    assert triton_cache.pack(str(here), str(tarball))["entries"] == 1
    with tarfile.open(tarball) as tar:
        names = set(tar.getnames())
    assert names == {"AAA/_k.json", "AAA/_k.cubin", "AAA/__grp___k.json", triton_cache.MANIFEST}
    there = tmp_path / "there"
    info = triton_cache.unpack(str(tarball), str(there))
    assert info["relocated"] == 1 and info["entries"] == 1
    group = json.loads((there / "AAA" / "__grp___k.json").read_text())["child_paths"]
    assert group == {"_k.json": str(there / "AAA" / "_k.json"), "_k.cubin": str(there / "AAA" / "_k.cubin")}
    assert all(os.path.exists(p) for p in group.values())


def test_unpack_without_a_packed_cache_is_a_note(tmp_path, capsys):
    assert triton_cache.main(["unpack", str(tmp_path / "missing.tar.gz"), "--cache", str(tmp_path / "c")]) == 0
    assert "no ahead-of-time compiled cache" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        triton_cache.main(["pack", "--cache", str(tmp_path / "nope"), "--out", str(tmp_path / "x.tar.gz")])


def test_packed_cache_is_found_where_it_is_unpacked(tmp_path):
    """Compile-only warm into one folder, pack, unpack into another: a warm there compiles nothing
    (a plain copy would recompile everything: the group files hold absolute paths)."""
    pytest.importorskip("triton")
    from tests.helpers import gpu_compile_env

    cmd = [sys.executable, "-m", "benchmarks.gpu.triton_warm", "--models", "smoke", "--ops", "activation",
           "--channels-last", "--batch", "2", "--jobs", "2"]

    def warm(cache):
        env = gpu_compile_env(TRITON_CACHE_DIR=str(cache))
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        return {p.name for p in cache.iterdir()}

    first = warm(tmp_path / "a")
    tarball = tmp_path / "cache.tar.gz"
    assert triton_cache.pack(str(tmp_path / "a"), str(tarball))["entries"] == len(first)
    triton_cache.unpack(str(tarball), str(tmp_path / "b"))
    assert warm(tmp_path / "b") == first


def test_unpack_says_when_the_kernels_changed_since_packing(tmp_path, capsys, monkeypatch):
    here = tmp_path / "here"
    _entry(here, "AAA", ["_k.json", "_k.cubin"])
    tarball = str(tmp_path / "cache.tar.gz")
    triton_cache.pack(str(here), tarball)
    assert triton_cache.main(["unpack", tarball, "--cache", str(tmp_path / "a")]) == 0
    assert "STALE" not in capsys.readouterr().out
    monkeypatch.setattr(triton_cache, "kernels_digest", lambda: "edited")
    assert triton_cache.main(["unpack", tarball, "--cache", str(tmp_path / "b")]) == 0
    assert "STALE" in capsys.readouterr().out
