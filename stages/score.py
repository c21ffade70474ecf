"""`cem score NAME`: IS/FID/KID (+ target accuracy, diversity) of one sampler's samples and control rows,
against the reference statistics of `cem reference-stats`."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from pipeline.data import read_manifest
from pipeline.files import atomic_write_text
from pipeline.params import SAMPLER_NAMES
from pipeline.sampler_specs import require_sampler
from pipeline.locks import exclusive
from pipeline.progress import log
from pipeline.scoring import score_inputs, score_samples
from pipeline.tracking import stage_run
from pipeline.runtime import setup_runtime

from .common import Overrides, ParamsPath, load, user_errors


@user_errors
def score(
    name: Annotated[str, typer.Argument(help=f"Sampler whose samples to score: {', '.join(SAMPLER_NAMES)}.")],
    params: ParamsPath = Path("params.yaml"),
    overrides: Overrides = None,
):
    """Write score.out_dir/NAME.json (DVC metrics) and log the same numbers to MLflow."""
    require_sampler(name)
    p = load(params, overrides)
    device = setup_runtime(p.score.runtime)
    # every input checked before an MLflow run opens or a byte is written
    inputs = score_inputs(name, p.sample.out_dir, p.data.out_dir, p.score)
    sample_run = inputs.meta.get("mlflow_run_id", "")
    with exclusive(Path(p.score.out_dir) / name, f"score {name}"), \
            stage_run(p.experiment, f"score_{name}", p.score, tags={"sampler": name},
                   upstream={"prepare": read_manifest(p.data.out_dir).get("mlflow_run_id", ""),
                             "sample": sample_run}) as run:
        result = score_samples(inputs, p.score, device, run)
        result["mlflow_run_id"] = run.run_id
        out = Path(p.score.out_dir) / f"{name}.json"
        atomic_write_text(out, json.dumps(result, indent=2) + "\n")
        run.log_artifact(out)
    for space, row in result["samples"].items():
        if isinstance(row, dict):
            log(f"score {name}: {space} " + " ".join(f"{k}={row[k]:.4g}" for k in ("is", "fid", "kid", "target_acc")
                                                      if isinstance(row.get(k), (int, float))))
