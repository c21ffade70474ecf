"""MLflow tracking: one run per stage, its params, metrics, artifacts and lineage.

The store is MLflow's default (sqlite `mlflow.db` in the working directory, i.e. the repo root
under DVC) unless MLFLOW_TRACKING_URI points elsewhere; a sqlite store keeps its artifacts in `mlruns/`
beside its database file. Lineage: every output records the run id
that made it; a downstream run tags the run ids of its inputs as `upstream.<name>`.
"""
from __future__ import annotations

import logging
import os
import re
import socket
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional
from urllib.parse import urlparse

from pydantic import BaseModel

from .errors import CemError
from .timing import phase, tracking_metrics

MAX_PARAM_LEN = 500


def flatten(data: Any, prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    if isinstance(data, BaseModel):
        data = data.model_dump()
    if isinstance(data, dict):
        for key, value in data.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    out[prefix.rstrip(".")] = str(data)[:MAX_PARAM_LEN]
    return out


def _quiet_mlflow() -> None:
    os.environ.setdefault("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "false")
    # An unreachable server must fail within seconds, not after MLflow's ~4 minutes of retries.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    for name in ("alembic", "mlflow"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # it logs a full traceback before re-raising; we report the raised error in one line instead
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
    warnings.filterwarnings("ignore", module="mlflow")


class TrackingError(CemError):
    """The MLflow store failed (unreachable, read-only, full...): one line, never a traceback."""


def _store_error(exc: Exception, doing: str) -> TrackingError:
    import mlflow
    root = exc  # the innermost cause says what happened (e.g. sqlite3's "attempt to write a readonly database")
    while (root.__cause__ or root.__context__) is not None and root is not (root.__cause__ or root.__context__):
        root = root.__cause__ or root.__context__
    first = (str(root).strip().splitlines() or [""])[0][:200]
    return TrackingError(f"MLflow tracking store {mlflow.get_tracking_uri()} failed while {doing}: "
                         f"{root.__class__.__name__}: {first} (check MLFLOW_TRACKING_URI / the store's permissions)")


@contextmanager
def _store(doing: str):
    try:
        yield
    except CemError:
        raise
    except Exception as exc:  # MlflowException, sqlalchemy/sqlite, requests, OSError: all one line
        raise _store_error(exc, doing) from None


class StageRun:
    """Thin wrapper so stages never touch the MLflow API directly; store failures become one line."""

    def __init__(self, run):
        self._run = run
        self.run_id: str = run.info.run_id

    def log_metrics(self, metrics: dict[str, float], step: Optional[int] = None) -> None:
        import mlflow
        clean = {k: float(v) for k, v in metrics.items() if v is not None}
        if clean:
            with _store("logging metrics"):
                mlflow.log_metrics(clean, step=step)

    def log_artifact(self, path, artifact_path: Optional[str] = None) -> None:
        import mlflow
        with _store(f"storing {path}"):
            mlflow.log_artifact(str(path), artifact_path=artifact_path)

    def set_tags(self, tags: dict[str, str]) -> None:
        import mlflow
        with _store("setting tags"):
            mlflow.set_tags({k: str(v) for k, v in tags.items()})


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def end_stale_runs(experiment_id: str, stage: str) -> list[str]:
    """Runs of this stage left RUNNING by a process of this host that no longer exists (SIGKILL,
    SIGTERM, power loss) are marked KILLED, so the MLflow UI does not show them running forever."""
    from mlflow.tracking import MlflowClient
    client = MlflowClient()
    runs = client.search_runs([experiment_id], filter_string=f"tags.`cem.stage` = '{stage}' and "
                              "attributes.status = 'RUNNING'", max_results=100)
    ended = []
    for r in runs:
        host, pid = r.data.tags.get("cem.host"), r.data.tags.get("cem.pid", "")
        if host == socket.gethostname() and pid.isdigit() and not _alive(int(pid)):
            client.set_terminated(r.info.run_id, "KILLED")
            ended.append(r.info.run_id)
    return ended


@contextmanager
def stage_run(experiment: str, stage: str, params: Any, upstream: Optional[dict[str, str]] = None,
              tags: Optional[dict[str, str]] = None) -> Iterator[StageRun]:
    """Open one MLflow run for a stage; a failing stage ends its run as FAILED. Under torchrun
    only rank 0 opens a run; the other ranks get a run that logs nothing."""
    from .distributed import NullRun, world
    if not world().main:
        yield NullRun()
        return
    with phase("mlflow"):  # importing MLflow included
        active = _open_run(experiment, stage, upstream, tags)
    import mlflow
    status = "FAILED"
    try:
        with phase("mlflow"), _store("logging params"):
            items = list(flatten(params).items())
            for i in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
                mlflow.log_params(dict(items[i:i + 100]))
        yield StageRun(active)
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        with phase("mlflow"):
            _close_run(status)


def _close_run(status: str) -> None:
    """The stage's time so far (pipeline.timing) goes on the run, then the run ends with `status`."""
    import mlflow
    try:
        mlflow.log_metrics(tracking_metrics())
        mlflow.end_run(status)
    except Exception:
        pass  # the store is what failed: the stage's own error is the one to report


def _open_run(experiment: str, stage: str, upstream: Optional[dict[str, str]], tags: Optional[dict[str, str]]):
    exp = open_store(experiment)
    import mlflow
    with _store("opening the experiment"):
        stale = end_stale_runs(exp.experiment_id, stage)
    all_tags = {"cem.stage": stage, "cem.host": socket.gethostname(), "cem.pid": str(os.getpid())}
    if stale:  # recorded on the new run (a stderr line would mix with a stage's one-line errors)
        all_tags["cem.marked_killed"] = ",".join(stale)
    all_tags.update({f"upstream.{k}": v for k, v in (upstream or {}).items() if v})
    all_tags.update(tags or {})
    with _store("starting a run"):
        return mlflow.start_run(run_name=stage, tags=all_tags, log_system_metrics=False)


def open_store(experiment: str):
    """The experiment, created with the store if need be. `cem repro --jobs` calls it once before
    starting stages side by side: they would otherwise race to create the sqlite schema and the
    experiment, which MLflow does not guard against."""
    _quiet_mlflow()
    import mlflow
    _quiet_mlflow()  # again: importing mlflow resets its loggers to INFO
    with _store("opening the experiment"):
        location = artifacts_beside(mlflow.get_tracking_uri(), experiment)
        if location and mlflow.get_experiment_by_name(experiment) is None:
            from mlflow.exceptions import MlflowException
            try:
                mlflow.create_experiment(experiment, artifact_location=location)
            except MlflowException as exc:  # another process created it first
                if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
        return mlflow.set_experiment(experiment)


def artifacts_beside(uri: str, experiment: str) -> Optional[str]:
    """Where a new experiment of a sqlite store keeps its artifacts: `mlruns/<experiment>` beside the
    database file (a file URI). MLflow's own default is `./mlruns` of whichever folder the first process
    ran in, so a store at `sqlite:////data/cem.db` would keep its grids in some checkout (and a test's
    temporary store in the checkout that ran the tests). Beside the database the store is one folder that
    moves as a whole; the default store (`mlflow.db` in the repo root) keeps them in the repo's `mlruns/`,
    where MLflow's default puts them too. None for other stores: a server or a file store decides for itself."""
    if not uri.startswith("sqlite:"):
        return None
    from sqlalchemy.engine import make_url
    database = make_url(uri).database
    if not database or database == ":memory:":
        return None
    if database.startswith("file:"):  # an SQLite URI filename, e.g. sqlite:///file:/data/cem.db?mode=ro&uri=true
        database = urlparse(database).path
    folder = re.sub(r"[^A-Za-z0-9._-]", "_", experiment)
    return (Path(database).resolve().parent / "mlruns" / folder).as_uri()
