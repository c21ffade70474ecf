"""`cem evaluate NAME`: the final evaluation of a trained model (clean, PGD, AutoAttack)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from pipeline import data as data_mod
from pipeline.checkpoints import load_model_file, model_run_id
from pipeline.errors import CemError
from pipeline.final_evaluation import evaluate_model, threat_model
from pipeline.files import atomic_write_text
from pipeline.locks import exclusive
from pipeline.params import EVALUATED
from pipeline.progress import log
from pipeline.runtime import setup_runtime
from pipeline.timing import phase
from pipeline.tracking import stage_run

from .common import Overrides, ParamsPath, load, user_errors


@user_errors
def evaluate(
    name: Annotated[str, typer.Argument(help=f"Which model: {', '.join(f'{k} ({v})' for k, v in EVALUATED.items())}.")],
    params: ParamsPath = Path("params.yaml"),
    overrides: Overrides = None,
):
    """Write metrics_dir/evaluate_NAME.json: clean and PGD accuracy, and AutoAttack with evaluate.NAME.autoattack."""
    if name not in EVALUATED:
        raise CemError(f"unknown model {name!r}; evaluate one of: {', '.join(EVALUATED)}")
    p = load(params, overrides)
    fp, section = getattr(p.evaluate, name), EVALUATED[name]
    model_path = Path(getattr(p, section).out_dir) / "model.pt"
    with phase("load"):  # every input checked before a run opens or a byte is written
        blob = load_model_file(model_path)
        threat_model(blob, model_path)
        ds = data_mod.load_dataset(p.data.out_dir)
    device = setup_runtime(fp.runtime)
    metrics_path = Path(p.metrics_dir) / f"evaluate_{name}.json"
    with exclusive(Path(p.metrics_dir) / f"evaluate_{name}", f"evaluate {name}"), \
            stage_run(p.experiment, f"evaluate_{name}", fp, tags={"model": str(model_path)},
                      upstream={"model": model_run_id(model_path)}) as run:
        metrics = evaluate_model(blob, model_path, ds, fp, device, name)
        run.log_metrics({k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
        run.set_tags({"threat_model": metrics["threat_model"]})
        atomic_write_text(metrics_path, json.dumps({k: round(v, 4) if isinstance(v, float) else v
                                                    for k, v in metrics.items()}, indent=2, sort_keys=True) + "\n")
        run.log_artifact(metrics_path)
    log(f"evaluate {name}: " + json.dumps(metrics))
