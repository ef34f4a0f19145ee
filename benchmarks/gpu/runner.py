"""Runs a suite's steps within a time budget: phases one after another, the chains of a phase side
by side, the steps of a chain one after another; records every step in suite.json / suite.md /
suite.log.

A step still running when its phase must end is stopped (SIGINT to its process group, so pytest
prints its summary; SIGKILL 10 s later). A background step (the last of its chain) runs on through
the later phases until the budget ends; a step can require an earlier one to have succeeded.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Optional

from ..report import write_whole
from .triton_cache import BINARY_SUFFIXES

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TRITON_CACHE = os.path.join(ROOT, ".triton-cache")
INDUCTOR_CACHE = os.path.join(ROOT, ".inductor-cache")
LOG_TAIL_BYTES = 256 * 1024  # of each step's output in suite.log


@dataclass
class Step:
    """One command of the suite and, filled in by the run, how it went."""

    name: str
    argv: list
    env: dict = field(default_factory=dict)
    requires: Optional[str] = None  # a step of an earlier phase that must have succeeded
    deadline_flag: bool = False  # pass --deadline (its stop time less a margin) to the command
    background: bool = False  # runs on through the later phases (until the budget ends)
    # filled in by the run
    status: str = "not run"
    rc: Optional[int] = None
    seconds: float = 0.0
    log: str = ""
    kernels: tuple = ()  # compiled kernels in the Triton cache (before, after): what the step compiled


@dataclass
class Phase:
    """Chains of steps run side by side; it ends after ``cap_s`` or when only ``reserve`` of the
    budget is left, whichever comes first."""

    name: str
    chains: list  # of lists of Step
    cap_s: float  # at most this long
    reserve: float  # share of the budget kept for the later phases


@dataclass
class _Running:
    step: Step
    proc: subprocess.Popen
    started: float
    log: object
    stop_at: float
    chain: list  # the chain it belongs to


class Suite:
    """One run of a suite: ``run_phase`` for each phase in turn, then ``finish``."""

    def __init__(self, out: str, budget_s: float, logs: str):
        self.out, self.logs = out, logs
        self.start = time.time()
        self.budget_s = budget_s
        self.end = self.start + budget_s
        self.steps: list = []
        self.running: list = []  # of _Running, background steps of earlier phases included
        self.meta = dict(date=datetime.datetime.now().isoformat(timespec="seconds"), budget_s=budget_s,
                         command=" ".join(sys.argv), device=device_facts())
        os.makedirs(out, exist_ok=True)
        os.makedirs(logs, exist_ok=True)

    def run_phase(self, phase: Phase, skip: set) -> None:
        """Run the chains side by side, each chain's steps one after another; return when every
        step has ended or was stopped at the phase's end (a background step, last of its chain,
        goes on into the later phases)."""
        stop_at = min(time.time() + phase.cap_s, self.end - phase.reserve * self.budget_s)
        chains = [list(chain) for chain in phase.chains]
        for chain in chains:
            if any(step.background for step in chain[:-1]):
                raise ValueError(f"phase {phase.name!r}: a background step must be the last of its chain")
        self.steps += [s for chain in chains for s in chain]
        waiting = list(chains)  # chains with steps left or running
        while True:
            done = []
            for chain in waiting:
                current = next((r for r in self.running if r.chain is chain), None)
                if current is not None:
                    if current.step.background:
                        done.append(chain)
                    continue
                if not self._start_next(chain, stop_at, skip):
                    done.append(chain)
            # by identity: a chain whose last step runs is an empty list, equal to every other such
            # chain, so list.remove() would drop a chain that is still running
            waiting = [c for c in waiting if not any(c is d for d in done)]
            if not waiting:
                break
            time.sleep(0.5)
            self._poll()
        self.write()

    def finish(self) -> None:
        """Stop the background steps still running (the budget is spent)."""
        for r in list(self.running):
            self._end(r, stopped=True)
        self.write()

    def _start_next(self, chain: list, stop_at: float, skip: set) -> bool:
        """Start the chain's next step that can run; True while the chain waits or runs a step."""
        while chain:
            step = chain[0]
            need = next((s for s in self.steps if s.name == step.requires), None)
            if step.name not in skip and need is not None and need.status == "running":
                if time.time() < stop_at - 1:
                    return True  # wait for it
            chain.pop(0)
            if step.name in skip:
                step.status = "skipped (--skip)"
                continue
            if need is not None and need.status != "ok":
                step.status = f"skipped (--skip, via {step.requires})" if skipped_by_hand(need) else \
                    f"skipped ({step.requires}: {need.status})"
                continue
            if time.time() >= stop_at - 1:
                step.status = "skipped (out of time)"
                continue
            own_stop = self.end if step.background else stop_at
            step.argv = list(step.argv) + (["--deadline", f"{own_stop - 20:.0f}"] if step.deadline_flag else [])
            step.log = os.path.join(self.logs, f"{step.name}.log")
            log = open(step.log, "w")
            env = dict(os.environ, TRITON_CACHE_DIR=TRITON_CACHE, TORCHINDUCTOR_CACHE_DIR=INDUCTOR_CACHE,
                       PYTHONUNBUFFERED="1", **step.env)
            try:
                proc = subprocess.Popen(step.argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                        start_new_session=True)
            except OSError as err:
                log.write(f"could not start: {err}\n")
                log.close()
                step.status = "error"
                continue
            print(f"[{self.clock()}] start {step.name}" + (" (background)" if step.background else ""), flush=True)
            step.status, step.kernels = "running", (compiled_kernels(),)
            self.running.append(_Running(step, proc, time.time(), log, own_stop, chain))
            return True
        return False

    def _poll(self) -> None:
        for r in list(self.running):
            if r.proc.poll() is not None:
                self._end(r, stopped=False)
            elif time.time() >= r.stop_at:
                self._end(r, stopped=True)

    def _end(self, r: _Running, stopped: bool) -> None:
        if stopped and r.proc.poll() is None:
            _stop(r.proc)
            r.step.status = "stopped at the budget's end" if r.step.background else "stopped at the phase's end"
        else:
            r.step.status = "ok" if r.proc.returncode == 0 else "failed"
        r.step.rc, r.step.seconds = r.proc.returncode, time.time() - r.started
        r.step.kernels = (r.step.kernels[0], compiled_kernels())
        r.log.close()
        self.running.remove(r)
        print(f"[{self.clock()}] {r.step.status}: {r.step.name} ({r.step.seconds:.0f} s, rc {r.step.rc})",
              flush=True)
        self.write()

    def clock(self) -> str:
        """Seconds since the suite started, for progress lines."""
        return f"{time.time() - self.start:5.0f} s"

    def write(self) -> None:
        """suite.json, suite.md and suite.log in ``out`` (rewritten after every step)."""
        rows = [dict(name=s.name, status=s.status, rc=s.rc, seconds=round(s.seconds, 1), command=" ".join(s.argv),
                     env=s.env, triton_kernels_cached=list(s.kernels)) for s in self.steps]
        write_whole(os.path.join(self.out, "suite.json"),
                    json.dumps(dict(meta=dict(self.meta, elapsed_s=round(time.time() - self.start, 1)), steps=rows),
                               indent=1))
        facts = ", ".join(f"{k} {v}" for k, v in self.meta["device"].items())
        lines = [f"# GPU suite {self.meta['date']}", "", f"{facts}; budget {self.budget_s:.0f} s", "",
                 "Triton kernels in the cache before / after each step (a step that finds its kernels "
                 "compiled adds none, though steps running beside it may).", "",
                 "| step | status | rc | seconds | Triton kernels cached |", "|---|---|---|---|---|"]
        lines += [f"| {r['name']} | {r['status']} | {r['rc']} | {r['seconds']} | "
                  f"{' -> '.join(map(str, r['triton_kernels_cached'])) or '-'} |" for r in rows]
        write_whole(os.path.join(self.out, "suite.md"), "\n".join(lines) + "\n")
        parts = []
        for s in self.steps:
            if not s.log or not os.path.exists(s.log):
                continue
            parts.append(f"\n===== {s.name}: {s.status} (rc {s.rc}, {s.seconds:.0f} s)\n$ {' '.join(s.argv)}\n")
            with open(s.log, "rb") as g:
                g.seek(max(0, os.path.getsize(s.log) - LOG_TAIL_BYTES))
                parts.append(g.read().decode("utf-8", "replace"))
        write_whole(os.path.join(self.out, "suite.log"), "".join(parts))


def skipped_by_hand(step: Step) -> bool:
    """Skipped by --skip, or because a step it needs was (not a failure of the suite)."""
    return step.status.startswith("skipped (--skip")


def compiled_kernels(cache: str = TRITON_CACHE) -> int:
    """Entries of the Triton cache that hold a compiled kernel binary."""
    if not os.path.isdir(cache):
        return 0
    return sum(any(f.endswith(BINARY_SUFFIXES) for f in os.listdir(os.path.join(cache, key)))
               for key in os.listdir(cache) if os.path.isdir(os.path.join(cache, key)))


def _stop(proc: subprocess.Popen) -> None:
    """SIGINT to the step's process group (pytest prints its summary), SIGKILL 10 s later."""
    for sig, wait in ((signal.SIGINT, 10), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def device_facts() -> dict:
    """GPU (nvidia-smi), Python, torch and Triton versions, CPU count of this machine."""
    facts = {}
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
        facts["nvidia_smi"] = out.stdout.strip() or out.stderr.strip()
    except (OSError, subprocess.TimeoutExpired) as err:
        facts["nvidia_smi"] = f"unavailable: {err}"
    facts["python"] = sys.version.split()[0]
    for package in ("torch", "triton"):
        try:
            facts[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            facts[package] = None
    facts["cpus"] = os.cpu_count()
    return facts


def gpu_problem() -> Optional[str]:
    """Why no step could use a GPU here (None when torch sees one)."""
    probe = subprocess.run([sys.executable, "-c", "import torch; print(torch.cuda.is_available(), torch.version.cuda)"],
                           capture_output=True, text=True, timeout=120)
    if probe.returncode != 0:
        return f"python3 cannot import torch: {probe.stderr.strip().splitlines()[-1:]}"
    if not probe.stdout.startswith("True"):
        return f"torch sees no CUDA device (torch.cuda.is_available(), torch.version.cuda: {probe.stdout.strip()})"
    return None
