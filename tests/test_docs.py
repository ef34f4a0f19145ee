"""The user documentation stays true: README links resolve and its generated model table matches
what ``fb.patch`` does now."""

from __future__ import annotations

import importlib.util
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")


def _load_model_table():
    spec = importlib.util.spec_from_file_location("model_table", os.path.join(ROOT, "docs", "model_table.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_links_resolve():
    text = open(README).read()
    targets = [t for t in re.findall(r"\]\(([^)#\s]+)", text) if not t.startswith(("http://", "https://"))]
    assert targets, "the README links no docs"
    missing = [t for t in targets if not os.path.exists(os.path.join(ROOT, t))]
    assert not missing, f"README links to missing files: {missing}"


@pytest.mark.parametrize("library,name", [("timm", "mobilenetv2_100"), ("timm", "efficientnet_b0"),
                                          ("fastblocks.zoo", "eca_mobilenet_v2")])
def test_readme_model_table_rows_match_patch(library, name):
    if library == "timm":
        pytest.importorskip("timm")
    import fastblocks as fb

    table = _load_model_table()
    text = open(README).read()
    start, end = text.index(table.START), text.index(table.END)
    rows = [line for line in text[start:end].splitlines() if f"| `{name}` |" in line and line.startswith(f"| {library} |")]
    assert len(rows) == 1, f"README's model table has no single row for {library} {name}"
    report = fb.patch(table.build(library, name))
    assert f"| {table.fused_summary(report.counts())} | {len(report.skipped)} |" in rows[0], (
        "README's model table is stale: python docs/model_table.py --write")


def test_write_readme_replaces_only_the_marked_table(tmp_path):
    table = _load_model_table()
    path = tmp_path / "README.md"
    path.write_text(f"intro\n{table.START}\nold\n{table.END}\noutro\n")
    table.write_readme("| new |", str(path))
    assert path.read_text() == f"intro\n{table.START}\n| new |\n{table.END}\noutro\n"
    path.write_text("no markers\n")
    with pytest.raises(ValueError, match="markers"):
        table.write_readme("| new |", str(path))
