"""Where a stage process's wall time goes: its start-up (interpreter start to the stage body: mostly
importing torch and MLflow) and named phases (runtime set-up, which on a GPU includes creating the CUDA
context; loading; the loop; evaluation; writing; the MLflow run). A `dvc repro` of the GPU profile runs
some 30 stage processes, so their fixed parts decide whether it fits a time budget as much as the loops
do: this is what measures them.

Each stage logs the numbers to its MLflow run (`time.<phase>_seconds`), and when `CEM_STAGE_TIMES` names
a file, appends one JSON line per stage process to it (scripts/gpu_acceptance.sh sets it). They never
go into a DVC output: timings differ from run to run, outputs must not.

One stage runs per process, so the recorder is module state rather than an object passed through every
call. Phases do not nest (an inner one counts toward the outer), so they add up: `other` is the part of
the stage body that none marked.
"""
from __future__ import annotations

import functools
import json
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

STAGE_TIMES_ENV = "CEM_STAGE_TIMES"

_phases: dict[str, float] = {}
_active: list[str] = []  # the phase being timed, if any
_begun: Optional[float] = None  # perf_counter at the stage body's start
_startup: Optional[float] = None


def process_age() -> Optional[float]:
    """Seconds since this process started (Linux /proc, 10-ms ticks); None where that is unknown."""
    try:
        with open("/proc/self/stat") as f:
            after_name = f.read().rsplit(")", 1)[1].split()  # the name may hold spaces and brackets
        started = int(after_name[19]) / os.sysconf("SC_CLK_TCK")  # field 22, starttime, since boot
        age = time.clock_gettime(time.CLOCK_BOOTTIME) - started
    except (OSError, IndexError, ValueError, AttributeError):
        return None
    return age if 0 <= age < 86_400 else None


def begin_stage() -> None:
    """Called as a stage body starts: what elapsed before it is the start-up."""
    global _begun, _startup
    _phases.clear()
    _startup = process_age()
    _begun = time.perf_counter()


@contextmanager
def phase(name: str) -> Iterator[None]:
    """Time a stretch of the stage under `name` (summed if entered again). Inside another phase it
    times nothing: the outer phase has the time (e.g. the dataset load inside a sampler's "load")."""
    if _active:
        yield
        return
    _active.append(name)
    t0 = time.perf_counter()
    try:
        yield
    finally:
        _phases[name] = _phases.get(name, 0.0) + time.perf_counter() - t0
        _active.pop()


def timed(name: str):
    """Decorator: the whole call is phase `name`."""
    def wrap(fn):
        @functools.wraps(fn)
        def timed_call(*args, **kwargs):
            with phase(name):
                return fn(*args, **kwargs)
        return timed_call
    return wrap


def stage_times() -> dict:
    """Seconds so far: start-up, each phase, the rest of the body (`other`) and the total."""
    body = time.perf_counter() - _begun if _begun is not None else sum(_phases.values())
    out = {"startup": None if _startup is None else round(_startup, 3)}
    out.update({k: round(v, 3) for k, v in _phases.items()})
    out["other"] = round(max(body - sum(_phases.values()), 0.0), 3)
    out["total"] = round(body + (_startup or 0.0), 3)
    return out


def tracking_metrics() -> dict[str, float]:
    """stage_times() as MLflow metric names."""
    return {f"time.{k}_seconds": v for k, v in stage_times().items() if v is not None}


FIXED_PHASES = ("startup", "runtime", "mlflow")  # what every stage process pays, whatever its size


def read_stage_times(path: Path) -> list[dict]:
    """The lines of a CEM_STAGE_TIMES file for the DAG's finished stages (not `cem profile` or `cem
    repro`, not failed processes); a line cut short (a process killed while writing) is skipped."""
    rows = []
    for line in (path.read_text().splitlines() if path.exists() else []):
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and isinstance(row.get("seconds"), dict) and row.get("rc") == 0 \
                and str(row.get("command", "")).split()[:1] not in (["profile"], ["repro"]):
            rows.append(row)
    return rows


def phase_table(rows: list[dict]) -> list[str]:
    """Markdown lines: each stage's total, start-up, runtime set-up (CUDA context), MLflow, its own
    phases and the rest, with a sum row; then the share of the whole that the fixed parts take."""
    if not rows:
        return ["No stage wrote its phase times (CEM_STAGE_TIMES).", ""]
    named = sorted({k for r in rows for k in r["seconds"]} - {"total", "other", *FIXED_PHASES})
    cols = ["total", *FIXED_PHASES, *named, "other"]
    lines = ["| stage | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    sums = dict.fromkeys(cols, 0.0)
    for r in rows:
        cells = []
        for c in cols:
            v = r["seconds"].get(c)
            sums[c] += v or 0.0
            cells.append("" if v is None else f"{v:.1f}")
        lines.append(f"| {r['command']} | " + " | ".join(cells) + " |")
    lines.append("| **sum** | " + " | ".join(f"{sums[c]:.1f}" for c in cols) + " |")
    fixed = sum(sums[c] for c in FIXED_PHASES)
    if sums["total"]:
        lines += ["", f"Start-up, runtime set-up and MLflow: {fixed:.1f} s of {sums['total']:.1f} s "
                      f"({100 * fixed / sums['total']:.0f} %) over {len(rows)} stage processes, "
                      f"{fixed / len(rows):.1f} s each on average."]
    return lines + [""]


def main(argv: Optional[list[str]] = None) -> int:
    """`python -m pipeline.timing FILE`: the table of a CEM_STAGE_TIMES file (e.g. after
    `CEM_STAGE_TIMES=times.jsonl dvc repro`)."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or not Path(args[0]).is_file():
        print("usage: python -m pipeline.timing FILE  (a file written with CEM_STAGE_TIMES=FILE)", file=sys.stderr)
        return 2
    print("\n".join(phase_table(read_stage_times(Path(args[0])))))
    return 0


def end_stage(rc: int) -> None:
    """Append this process's line to $CEM_STAGE_TIMES, if set (rank 0 only under torchrun). A failure
    to write it is reported on stderr and never changes the stage's own outcome."""
    path = os.environ.get(STAGE_TIMES_ENV)
    if not path or os.environ.get("RANK", "0") != "0" or _begun is None:
        return
    line = json.dumps({"command": " ".join(sys.argv[1:]), "rc": rc, "seconds": stage_times()})
    try:
        with open(path, "a") as f:
            f.write(line + "\n")
    except OSError as exc:
        print(f"warning: could not append stage times to {path}: {exc.strerror}", file=sys.stderr)


if __name__ == "__main__":
    raise SystemExit(main())
