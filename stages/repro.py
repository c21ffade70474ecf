"""`cem repro [STAGE...] --jobs N`: `dvc repro` with independent stages running side by side."""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from pipeline.errors import CemError
from pipeline.progress import log, progress_bar
from pipeline.repro import changed_stages, failure_line, read_dag, run_dag, select, thread_share_note, to_check
from pipeline.tracking import open_store

from .common import ParamsPath, load, user_errors

_MARK = {"ran": "ran", "restored": "restored from DVC's run cache:", "unchanged": "unchanged:"}


@user_errors
def repro(
    jobs: Annotated[int, typer.Option("--jobs", "-j", min=1, help="Stages run side by side (required: 4 on a GPU "
                                      "machine; on a CPU it pays only with runtime.threads = cores / N).")],
    targets: Annotated[Optional[list[str]], typer.Argument(
        help="Stages to bring up to date, with everything upstream of them (default: the whole DAG).")] = None,
    log_dir: Annotated[Path, typer.Option(help="Each stage's output goes to LOG_DIR/STAGE.log.")] = Path("logs/repro"),
    params: ParamsPath = Path("params.yaml"),
):
    """Bring the pipeline up to date like `dvc repro`, running stages whose upstream has finished side
    by side (each through `dvc repro --single-item`, so DVC decides what must run and records it in
    dvc.lock). On a GPU machine with many cores this overlaps the stages' start-up and their GPU work."""
    t0 = time.perf_counter()
    dag = select(read_dag(Path.cwd()), list(targets or []))
    check = to_check(dag, changed_stages(Path.cwd()))
    if not check:
        log(f"repro: all {len(dag)} stage(s) up to date ({time.perf_counter() - t0:.1f} s)")
        return
    if jobs > 1:
        p = load(params, None)
        open_store(p.experiment)  # stages started together must not race to create the MLflow store
        import torch  # already imported with the params
        note = thread_share_note(p, jobs, len(os.sched_getaffinity(0)), torch.cuda.is_available())
        if note:
            log(note)
    log(f"repro: {len(check)} of {len(dag)} stage(s) to check, at most {jobs} at a time "
        f"(the others are up to date); each stage's output in {log_dir}/STAGE.log")
    finished_count = 0

    with progress_bar("stages", len(check)) as advance:
        def started(name: str, running: list[str]) -> None:
            log(f"  start      {name}" + (f"   (running: {', '.join(running)})" if len(running) > 1 else ""))

        def finished(result, running: list[str]) -> None:
            nonlocal finished_count
            finished_count += 1
            head = f"  [{finished_count}/{len(check)}]"
            if result.rc == 0:
                log(f"{head} {_MARK[result.outcome]} {result.name} ({result.seconds:.1f} s)")
            else:
                log(f"{head} FAILED {result.name}: {failure_line(result.log)}")
            advance(1, running=",".join(running) or "-")

        results = run_dag(dag, jobs, Path.cwd(), log_dir, check, on_start=started, on_finish=finished)
    failed = [r for r in results if r.outcome == "failed"]
    counts = {k: sum(r.outcome == k for r in results) for k in ("ran", "restored", "unchanged", "not started")}
    log("repro: " + ", ".join(f"{v} {k}" for k, v in counts.items() if v) + f" in {time.perf_counter() - t0:.1f} s")
    if failed:
        r = failed[0]
        raise CemError(f"stage {r.name} failed: {failure_line(r.log)} "
                       f"(its whole output: {r.log})" + (f"; {len(failed) - 1} more failed" if len(failed) > 1 else ""))
