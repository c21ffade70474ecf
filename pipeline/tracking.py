"""MLflow tracking: one run per stage, its params, metrics, artifacts and lineage.

The store is MLflow's default (sqlite `mlflow.db` in the working directory, i.e. the repo root
under DVC) unless MLFLOW_TRACKING_URI points elsewhere. Lineage: every output records the run id
that made it; a downstream run tags the run ids of its inputs as `upstream.<name>`.
"""
from __future__ import annotations

import logging
import os
import warnings
from contextlib import contextmanager
from typing import Any, Iterator, Optional

from pydantic import BaseModel

from .errors import CemError

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
    for name in ("alembic", "mlflow"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", module="mlflow")


class StageRun:
    """Thin wrapper so stages never touch the MLflow API directly."""

    def __init__(self, run):
        self._run = run
        self.run_id: str = run.info.run_id

    def log_metrics(self, metrics: dict[str, float], step: Optional[int] = None) -> None:
        import mlflow
        clean = {k: float(v) for k, v in metrics.items() if v is not None}
        if clean:
            mlflow.log_metrics(clean, step=step)

    def log_artifact(self, path, artifact_path: Optional[str] = None) -> None:
        import mlflow
        mlflow.log_artifact(str(path), artifact_path=artifact_path)

    def set_tags(self, tags: dict[str, str]) -> None:
        import mlflow
        mlflow.set_tags({k: str(v) for k, v in tags.items()})


@contextmanager
def stage_run(experiment: str, stage: str, params: Any, upstream: Optional[dict[str, str]] = None,
              tags: Optional[dict[str, str]] = None) -> Iterator[StageRun]:
    """Open one MLflow run for a stage; a failing stage ends its run as FAILED. Under torchrun
    only rank 0 opens a run; the other ranks get a run that logs nothing."""
    from .distributed import NullRun, world
    if not world().main:
        yield NullRun()
        return
    _quiet_mlflow()
    import mlflow
    try:
        mlflow.set_experiment(experiment)
    except Exception as exc:
        uri = mlflow.get_tracking_uri()
        raise CemError(f"cannot reach the MLflow tracking store at {uri} ({exc.__class__.__name__}); "
                       "check MLFLOW_TRACKING_URI") from None
    all_tags = {"cem.stage": stage}
    all_tags.update({f"upstream.{k}": v for k, v in (upstream or {}).items() if v})
    all_tags.update(tags or {})
    with mlflow.start_run(run_name=stage, tags=all_tags, log_system_metrics=False) as run:
        flat = flatten(params)
        items = list(flat.items())
        for i in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
            mlflow.log_params(dict(items[i:i + 100]))
        yield StageRun(run)
