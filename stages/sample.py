"""`cem sample NAME`: generate samples with one registered sampler."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from pipeline import data as data_mod
from pipeline.params import SAMPLER_NAMES
from pipeline.sampler_specs import require_sampler
from pipeline.locks import exclusive
from pipeline.progress import log
from pipeline.checkpoints import load_model_file, model_run_id
from pipeline.sampling import model_path_for, run_sampling
from pipeline.tracking import stage_run
from pipeline.runtime import setup_runtime

from .common import Overrides, ParamsPath, load, user_errors


@user_errors
def sample(
    name: Annotated[str, typer.Argument(help=f"Sampler: {', '.join(SAMPLER_NAMES)}.")],
    params: ParamsPath = Path("params.yaml"),
    overrides: Overrides = None,
    n: Annotated[Optional[int], typer.Option(help="Override sample.NAME.n (number of samples).")] = None,
):
    """Draw samples (uint8 shards + grid.png + meta.json under sample.out_dir/NAME)."""
    require_sampler(name)
    p = load(params, overrides, {f"sample.{name}.n": n})
    rp = p.sample.resolved(name)
    model_path = model_path_for(p, name)
    device = setup_runtime(p.sample.runtime)
    manifest = data_mod.read_manifest(p.data.out_dir)
    load_model_file(model_path)  # a clear error before any run opens
    model_run = model_run_id(model_path)
    with exclusive(Path(p.sample.out_dir) / name, f"sample {name}"), \
            stage_run(p.experiment, f"sample_{name}", rp,
                   upstream={"prepare": manifest.get("mlflow_run_id", ""), "model": model_run},
                   tags={"sampler": name}) as run:
        stats = run_sampling(name, rp, model_path, p.data.out_dir, Path(p.sample.out_dir) / name, device,
                             p.sample.controls, run, p.sample.runtime)
    if not stats:  # ranks other than 0 under torchrun report nothing
        return
    log(f"sample {name}: " + json.dumps({k: stats[k] for k in ("n", "samples_per_second",
                                                                "objective_first_step_mean",
                                                                "objective_last_step_mean")}))
