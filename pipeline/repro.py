"""`cem repro --jobs N`: the DVC pipeline with independent stages running side by side.

`dvc repro` runs one stage at a time, so a machine with many cores and a large GPU sits mostly idle
through ~30 short stage processes, each paying its own start-up (imports, CUDA context, MLflow;
docs/performance.md). DVC itself supports running independent stages from separate `dvc repro`
processes: it releases its repository lock while a stage's command runs, and `dvc --wait-for-lock`
makes another process wait for that lock instead of failing. This module schedules exactly that over
the whole DAG: a stage starts once everything upstream of it has finished, at most N at a time, each as
`dvc repro --single-item STAGE`. DVC still decides whether a stage must run, records it in dvc.lock
and caches its outputs, so the result is what `dvc repro` gives (tests/test_repro.py checks dvc.lock).
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from .errors import CemError
from .interrupts import end_like_ctrl_c, end_with_parent

_NODE = re.compile(r'^\s*"([^"]+)";\s*$')
_EDGE = re.compile(r'^\s*"([^"]+)"\s*->\s*"([^"]+)";\s*$')
# what `dvc repro` prints for each outcome (dvc/stage/run.py, dvc/stage/__init__.py, dvc/stage/cache.py)
_OUTCOMES = (("Running stage '", "ran"), ("is cached - skipping run", "restored"),
             ("didn't change, skipping", "unchanged"))


def dvc_command(*args: str) -> list[str]:
    """DVC from this interpreter's environment (the one `cem` was installed into)."""
    return [sys.executable, "-m", "dvc", *args]


def thread_share_note(params, jobs: int, cores: int, cuda: bool = False) -> Optional[str]:
    """Stages side by side on the CPU each start a thread pool as large as the machine
    (`runtime.threads: null`); N such pools on the same cores slow every stage down (the smoke DAG on
    2 cores, `--jobs 2`: 243 s, against 150 s with one thread per stage; docs/performance.md). Which
    sections would, and what to set: a note, since the thread count is a param (it can change the bytes
    of a CPU run), which a scheduler must not change behind DVC's back. `cuda`: whether a GPU is usable
    (then `device: auto` runs there, and its CPU threads mostly wait)."""
    if jobs < 2:
        return None
    from .params import RUNTIME_SECTIONS, runtime_section
    loose = [name for name in RUNTIME_SECTIONS if (rt := runtime_section(params, name).runtime).threads is None
             and (rt.device == "cpu" or rt.device == "auto" and not cuda)]
    if not loose:
        return None
    share = max(1, cores // jobs)
    verb = "uses" if len(loose) == 1 else "use"
    return (f"note: {jobs} stages at once on {cores} CPU cores, and {', '.join(loose)} {verb} every core "
            f"(runtime.threads: null), so they contend for them; give each its share with runtime.threads: "
            f"{share} in those sections (e.g. `cem profile NAME --set {loose[0]}.runtime.threads={share} ...`)")


def parse_dot(text: str) -> dict[str, list[str]]:
    """`dvc dag --dot` → {stage: the stages it depends on directly}, stages in DVC's order."""
    upstream: dict[str, list[str]] = {}
    for line in text.splitlines():
        if m := _EDGE.match(line):
            src, dst = m.groups()
            upstream.setdefault(src, [])
            upstream.setdefault(dst, []).append(src)
        elif m := _NODE.match(line):
            upstream.setdefault(m.group(1), [])
    return upstream


def read_dag(cwd: Path) -> dict[str, list[str]]:
    proc = subprocess.run(dvc_command("dag", "--dot"), cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        lines = [ln for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip()]
        raise CemError(f"dvc dag failed in {cwd}: {lines[-1] if lines else f'exit code {proc.returncode}'}")
    dag = parse_dot(proc.stdout)
    if not dag:
        raise CemError(f"dvc dag found no stages in {cwd} (is this the project's root, with dvc.yaml?)")
    return dag


def changed_stages(cwd: Path) -> set[str]:
    """The stages `dvc status` finds out of date by themselves (changed deps, params or outputs)."""
    proc = subprocess.run(dvc_command("status", "--json"), cwd=cwd, capture_output=True, text=True)
    try:
        status = json.loads(proc.stdout) if proc.returncode == 0 else None
    except ValueError:
        status = None
    if not isinstance(status, dict):
        lines = [ln for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip()]
        raise CemError(f"dvc status failed in {cwd}: {lines[-1] if lines else f'exit code {proc.returncode}'}")
    return {name.split(":")[-1] for name in status}  # `dvc.yaml:stage` for a dvc.yaml elsewhere


def _reachable(edges: dict[str, list[str]], starts) -> set[str]:
    """Every stage reachable from `starts` along `edges` (starts included)."""
    seen: set[str] = set()
    todo = list(starts)
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(edges[name])
    return seen


def _downstream(dag: dict[str, list[str]]) -> dict[str, list[str]]:
    """{stage: the stages that depend on it directly}."""
    below: dict[str, list[str]] = {name: [] for name in dag}
    for name, ups in dag.items():
        for up in ups:
            below[up].append(name)
    return below


def to_check(dag: dict[str, list[str]], changed: set[str]) -> set[str]:
    """The stages DVC must look at: those out of date and everything downstream of them. Any other
    stage is up to date and stays so, since nothing upstream of it will run: no DVC process is spent
    on it (each costs ~1 s of start-up and index loading)."""
    return _reachable(_downstream(dag), [n for n in dag if n in changed])


def select(dag: dict[str, list[str]], targets: list[str]) -> dict[str, list[str]]:
    """The targets and everything upstream of them (all stages when no target is given)."""
    if not targets:
        return dag
    unknown = [t for t in targets if t not in dag]
    if unknown:
        raise CemError(f"no stage {', '.join(unknown)} in dvc.yaml (stages: {', '.join(dag)})", exit_code=2)
    keep = _reachable(dag, targets)
    return {name: [u for u in ups if u in keep] for name, ups in dag.items() if name in keep}


def downstream_counts(dag: dict[str, list[str]]) -> dict[str, int]:
    """How many stages wait (directly or not) on each stage: the scheduler starts those first, so
    training starts before reference statistics and the long chains are not left for last."""
    below = _downstream(dag)
    return {name: len(_reachable(below, below[name])) for name in dag}


@dataclass
class StageResult:
    name: str
    outcome: str          # ran, restored (DVC's run cache), unchanged, failed, not started
    seconds: float = 0.0
    rc: Optional[int] = None
    log: Optional[Path] = None


def _outcome(log: Path) -> str:
    text = log.read_text(errors="replace") if log.exists() else ""
    for marker, outcome in _OUTCOMES:
        if marker in text:
            return outcome
    return "ran"


def failure_line(log: Optional[Path]) -> str:
    """What to say of a failed stage: its own one-line error (`error: ...`, every `cem` stage's
    convention, without the prefix) if it printed one, else the last line DVC printed."""
    lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()] \
        if log is not None and log.exists() else []
    ours = [ln for ln in lines if ln.startswith("error:")]
    return ours[-1].removeprefix("error:").strip() if ours else (lines or ["no output"])[-1]


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def _group_members(pgid: int) -> Optional[set[int]]:
    """The processes of group `pgid` other than its leader (Linux: from /proc); None where /proc is missing."""
    if not os.path.isdir("/proc/self"):
        return None
    members = set()
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and int(entry.name) != pgid:
            try:
                with open(f"/proc/{entry.name}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()  # after the command name: state, ppid, pgrp
            except (OSError, IndexError):
                continue
            if int(fields[2]) == pgid:
                members.add(int(entry.name))
    return members


def _group_alive(pgid: int) -> bool:
    """Whether any process of the group still exists (its leader, DVC, already reaped)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class _Running:
    name: str
    proc: subprocess.Popen
    started: float
    log: Path


def run_dag(dag: dict[str, list[str]], jobs: int, cwd: Path, log_dir: Path, check: Optional[set[str]] = None,
            on_start: Callable[[str, list[str]], None] = lambda name, running: None,
            on_finish: Callable[[StageResult, list[str]], None] = lambda result, running: None,
            poll_seconds: float = 0.2) -> list[StageResult]:
    """Run `dag`'s stages through DVC, at most `jobs` at a time, each once everything upstream of it
    has finished; a stage not in `check` (default: all) is up to date without asking DVC. After a
    failure no new stage starts; those running finish (a stage cut short would only be re-run next
    time). Ctrl-C / SIGTERM stop the running stages (each ends like Ctrl-C: its MLflow run KILLED, its
    outputs whole) and raise KeyboardInterrupt."""
    if jobs < 1:
        raise CemError(f"--jobs must be at least 1 (got {jobs})", exit_code=2)
    log_dir.mkdir(parents=True, exist_ok=True)
    order = {name: i for i, name in enumerate(dag)}
    weight = downstream_counts(dag)
    done: dict[str, StageResult] = {name: StageResult(name, "unchanged", rc=0) for name in dag
                                    if check is not None and name not in check}
    running: dict[str, _Running] = {}
    failed = False

    def ready() -> list[str]:
        names = [n for n in dag if n not in done and n not in running and all(u in done for u in dag[n])]
        return sorted(names, key=lambda n: (-weight[n], order[n]))

    def start(name: str) -> None:
        log = log_dir / f"{name}.log"
        with open(log, "w") as out:  # the child holds its own descriptor
            proc = subprocess.Popen(dvc_command("--wait-for-lock", "repro", "--single-item", name), cwd=cwd,
                                    stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True,  # Ctrl-C reaches the stage through us only
                                    preexec_fn=end_with_parent)  # we die: each `dvc repro` child gets SIGTERM
        running[name] = _Running(name, proc, time.perf_counter(), log)
        on_start(name, sorted(running))

    previous = end_like_ctrl_c(signal.SIGTERM)
    try:
        while True:
            if not failed:
                for name in ready():
                    if len(running) >= jobs:
                        break
                    start(name)
            if not running:
                break
            time.sleep(poll_seconds)
            for name, r in list(running.items()):
                rc = r.proc.poll()
                if rc is None:
                    continue
                del running[name]
                result = StageResult(name, _outcome(r.log) if rc == 0 else "failed",
                                     time.perf_counter() - r.started, rc, r.log)
                done[name] = result
                failed = failed or rc != 0
                on_finish(result, sorted(running))
    except KeyboardInterrupt:
        # Each stage's command (everything in its `dvc repro`'s group but DVC) ends like Ctrl-C (its run
        # marked KILLED, its lock released); DVC itself is not signalled: it sees its command fail and
        # exits without recording the stage, or, had the command already finished, finishes writing
        # dvc.lock (killed mid-write, it lost the record of stages finished before: they ran again). A
        # command DVC starts after this is stopped the same way. Everything is waited for, so a `cem
        # repro` or `dvc repro` started right after this one returns never meets a stage still holding
        # its output folder. Without /proc, the whole group is signalled (DVC too).
        signalled: dict[int, set[int]] = {r.proc.pid: set() for r in running.values()}
        deadline = time.perf_counter() + 10  # a stage winds down in ~1-2 s; `timeout -k 15` must not beat us
        for r in running.values():
            while r.proc.poll() is None or _group_alive(r.proc.pid):
                if time.perf_counter() > deadline:
                    _signal_group(r.proc.pid, signal.SIGKILL)
                    r.proc.wait()
                    break
                for other in running.values():  # every group, while waiting for any of them
                    members = _group_members(other.proc.pid)
                    if members is None:
                        if not signalled[other.proc.pid]:
                            _signal_group(other.proc.pid, signal.SIGTERM)
                            signalled[other.proc.pid].add(other.proc.pid)
                        continue
                    for pid in members - signalled[other.proc.pid]:
                        try:
                            os.kill(pid, signal.SIGTERM)
                        except ProcessLookupError:
                            pass
                        signalled[other.proc.pid].add(pid)
                time.sleep(0.05)
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
    return [done.get(name) or StageResult(name, "not started") for name in dag]
