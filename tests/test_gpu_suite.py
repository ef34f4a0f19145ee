"""benchmarks.gpu.suite: the time-budgeted GPU suite (phases, chains, stops at a phase's end, the
files it leaves) with stand-in steps, and its real plan's commands against their parsers."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import time

import pytest
import torch

from benchmarks import run
from benchmarks.gpu import inductor_warm, suite, triton_warm
from benchmarks.gpu.runner import ROOT, Phase, Step, Suite

pytestmark = pytest.mark.tooling


def _py(code: str) -> list:
    return [sys.executable, "-c", code]


def _sh(script: str) -> list:
    return ["sh", "-c", script]  # starts in milliseconds even on a loaded machine, unlike python


def test_phases_chains_requirements_and_stops(tmp_path):
    out, logs = tmp_path / "out", tmp_path / "logs"
    suite_run = Suite(str(out), budget_s=120, logs=str(logs))
    # a step that catches the stop signal and prints a summary, as pytest does
    slow = _sh("trap 'echo summary: stopped; kill $!; exit 0' INT; sleep 60 & wait")
    phase = Phase("p", [[Step("ok", _sh("echo hello")), Step("bad", _sh("exit 3")), Step("after-bad", _sh("echo x"))],
                        [Step("slow", slow)]], cap_s=6, reserve=0.0)
    start = time.time()
    suite_run.run_phase(phase, skip=set())
    assert time.time() - start < 30
    suite_run.run_phase(Phase("q", [[Step("needs-bad", _sh("echo y"), requires="bad")]], 10, 0.0), skip=set())
    status = {s.name: s.status for s in suite_run.steps}
    assert status == {"ok": "ok", "bad": "failed", "after-bad": "ok", "slow": "stopped at the phase's end",
                      "needs-bad": "skipped (bad: failed)"}
    rc = {s.name: s.rc for s in suite_run.steps}
    assert rc["bad"] == 3
    log = (out / "suite.log").read_text()
    assert "hello" in log and "summary: stopped" in log  # SIGINT first: the step could still report
    record = json.loads((out / "suite.json").read_text())
    assert [r["name"] for r in record["steps"]] == ["ok", "bad", "after-bad", "slow", "needs-bad"]
    assert "| slow | stopped at the phase's end |" in (out / "suite.md").read_text()
    assert sorted(os.listdir(out)) == ["suite.json", "suite.log", "suite.md"]


def test_deadline_flag_skip_and_budget_share(tmp_path):
    suite_run = Suite(str(tmp_path / "out"), budget_s=100, logs=str(tmp_path / "logs"))
    echo = _py("import sys; print('ARGS', sys.argv[1:])")
    # reserve 0.97 of a 100 s budget: the phase must end 3 s in, so a step's --deadline is in the past
    # of anything longer; the step still gets one (its own end less 20 s)
    first = Phase("a", [[Step("with-deadline", echo, deadline_flag=True), Step("skipped", echo)]],
                  cap_s=60, reserve=0.0)
    suite_run.run_phase(first, skip={"skipped"})
    late = Phase("b", [[Step("too-late", echo)]], cap_s=60, reserve=1.0)
    suite_run.run_phase(late, skip=set())
    status = {s.name: s.status for s in suite_run.steps}
    assert status == {"with-deadline": "ok", "skipped": "skipped (--skip)", "too-late": "skipped (out of time)"}
    step = suite_run.steps[0]
    deadline = float(step.argv[step.argv.index("--deadline") + 1])
    assert suite_run.start < deadline <= suite_run.start + 100 - 20 + 1


def _module_argv(step: Step):
    """(module, args) of a ``python -m module args`` step."""
    argv = step.argv[step.argv.index(sys.executable):] if sys.executable in step.argv else step.argv
    assert argv[1] == "-m", step.argv
    return argv[2], argv[3:]


@pytest.mark.parametrize("smoke", [False, True])
def test_plan_commands_parse(smoke, tmp_path, monkeypatch):
    """Every step of the real plan names an importable module and arguments its parser accepts (a
    typo here would surface only on the GPU machine)."""
    phases = suite.plan(str(tmp_path), device="cpu" if smoke else "cuda", smoke=smoke)
    steps = [s for p in phases for c in p.chains for s in c]
    names = [s.name for s in steps]
    assert len(set(names)) == len(names)
    assert names.index("test-triton") < names.index("bench-ops") < names.index("bench-models")
    parsers = {"benchmarks.run": run.parse_args,
               "benchmarks.gpu.inductor_warm": inductor_warm.build_parser().parse_args,
               "benchmarks.gpu.triton_warm": triton_warm.build_parser().parse_args}
    monkeypatch.setattr(run.torch.cuda, "is_available", lambda: True)  # --device cuda is checked on the GPU
    monkeypatch.setattr(run, "_timed_backends", lambda device: ["eager", "triton", "cuda"])
    for step in steps:
        if step.argv[0] == "nice":
            continue
        module, args = _module_argv(step)
        if module == "pytest":
            assert all(os.path.exists(os.path.join(ROOT, a)) for a in args if a.startswith("tests/"))
            continue
        assert importlib.util.find_spec(module) is not None, module
        if step.deadline_flag:
            args = args + ["--deadline", f"{time.time() + 100:.0f}"]
        assert module in parsers or module == "benchmarks.gpu.triton_cache", module
        if module in parsers:
            parsers[module](args)
    bench = next(s for s in steps if s.name == "bench-ops")
    _, args = _module_argv(bench)
    parsed = run.parse_args(args)
    assert parsed.no_plots and parsed.out == str(tmp_path)  # JSON + markdown only: plots are drawn later
    if not smoke:  # the op benchmark's setup: batch 128, bf16, channels_last, the Triton kernels
        assert (parsed.batch, parsed.dtype, parsed.channels_last) == (128, "bfloat16", True)
        assert parsed.op_backends == ["triton"] and not parsed.no_compile
        assert set(parsed.modes) == {"eval", "train_fwd_bwd"}
    # the warm-up compiles what the benchmark will compile, or its cache serves nothing
    _, args = _module_argv(next(s for s in steps if s.name == "warm-inductor"))
    warm = inductor_warm.build_parser().parse_args(args)
    same = ("batch", "dtype", "channels_last", "modes", "ops", "op_models", "limit")
    assert {k: getattr(warm, k) for k in same} == {k: getattr(parsed, k) for k in same}


def test_cli_rejects_unknown_steps_and_lists_the_plan(capsys):
    with pytest.raises(SystemExit):
        suite.main(["--skip", "no-such-step"])
    assert "unknown step" in capsys.readouterr().err
    assert suite.main(["--list"]) == 0
    assert "bench-ops" in capsys.readouterr().out


def test_a_step_needing_a_skipped_step_counts_as_skipped_by_hand(tmp_path):
    suite_run = Suite(str(tmp_path / "out"), budget_s=100, logs=str(tmp_path / "logs"))
    suite_run.run_phase(Phase("a", [[Step("build", _py("print(1)"))]], 30, 0.0), skip={"build"})
    suite_run.run_phase(Phase("b", [[Step("test", _py("print(2)"), requires="build")]], 30, 0.0), skip=set())
    assert suite_run.steps[1].status == "skipped (--skip, via build)"


def test_background_step_runs_on_and_a_later_step_waits_for_it(tmp_path):
    suite_run = Suite(str(tmp_path / "out"), budget_s=60, logs=str(tmp_path / "logs"))
    build = Step("build", _sh("sleep 5; echo built"), background=True)
    suite_run.run_phase(Phase("a", [[Step("quick", _sh("echo 1"))], [build]], 30, 0.0), skip=set())
    assert build.status == "running"  # the phase did not wait for it
    suite_run.run_phase(Phase("b", [[Step("test", _sh("echo 2"), requires="build")]], 30, 0.0), skip=set())
    assert build.status == "ok" and suite_run.steps[-1].status == "ok"
    hang = Step("hang", _sh("sleep 60"), background=True)
    suite_run.run_phase(Phase("c", [[hang]], 30, 0.0), skip=set())
    suite_run.finish()
    assert hang.status == "stopped at the budget's end"
    with pytest.raises(ValueError, match="last of its chain"):
        suite_run.run_phase(Phase("d", [[Step("bg", _sh("true"), background=True), Step("x", _sh("true"))]], 5, 0.0),
                          skip=set())


def test_a_phase_waits_for_every_running_chain(tmp_path):
    """The real phase 2's shape: single-step chains (their lists are empty while the step runs,
    equal to one another), one skipped and one background: the phase must still wait for both
    foreground steps, not start the next phase beside a running warm-up."""
    suite_run = Suite(str(tmp_path / "out"), budget_s=60, logs=str(tmp_path / "logs"))
    first, second = Step("warm-a", _sh("sleep 2")), Step("warm-b", _sh("sleep 3"))
    phase = Phase("a", [[Step("tests", _sh("true")), Step("more", _sh("true"))], [first], [second],
                        [Step("build", _sh("sleep 20"), background=True)], [Step("skipped", _sh("true"))]],
                  cap_s=30, reserve=0.0)
    suite_run.run_phase(phase, skip={"skipped"})
    assert first.status == "ok" and second.status == "ok"
    suite_run.finish()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour without a GPU (would run the suite)")
def test_without_a_gpu_the_suite_stops_at_once(tmp_path, capsys):
    start = time.time()
    assert suite.main(["--out", str(tmp_path), "--logs", str(tmp_path / "logs")]) == 2
    assert time.time() - start < 60
    assert "no CUDA device" in capsys.readouterr().err
    record = json.loads((tmp_path / "suite.json").read_text())
    assert "no CUDA device" in record["meta"]["aborted"] and record["steps"] == []
