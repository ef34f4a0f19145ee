"""The user documentation stays true: README links resolve, its generated model table matches what
``fb.patch`` does now, and the project's text describes the software, not how it is developed."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess

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


# Words that describe how the project is developed rather than the software.
PROCESS_WORDS = r"\blent\b|\blend(ing)?\b|give_back|device tool|this vm|\bissues? #?[0-9]|\bborrowed\b|device budget"


def test_project_text_speaks_of_the_software_only():
    tracked = subprocess.run(["git", "ls-files", "README.md", "docs", "fastblocks", "csrc", "benchmarks/*.py",
                              "benchmarks/gpu", "tests", "Makefile", "setup.py", "pyproject.toml"],
                             cwd=ROOT, capture_output=True, text=True)
    if tracked.returncode != 0:
        pytest.skip("not a git checkout")
    this_file = os.path.relpath(__file__, ROOT)
    hits = []
    for rel in tracked.stdout.split():
        if rel == this_file or not rel.endswith((".py", ".md", ".cpp", ".cu", ".h", ".cuh", ".inc", ".toml", "Makefile")):
            continue
        with open(os.path.join(ROOT, rel), errors="replace") as f:
            for number, line in enumerate(f, 1):
                if re.search(PROCESS_WORDS, line, re.IGNORECASE):
                    hits.append(f"{rel}:{number}: {line.strip()[:120]}")
    assert not hits, "development-process wording in the project:\n" + "\n".join(hits)
