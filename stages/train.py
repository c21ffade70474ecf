"""`cem train supervised|reference|unsupervised`: the three training stages."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from pipeline import data as data_mod
from pipeline import train as trainer
from pipeline.locks import exclusive
from pipeline.progress import log
from pipeline.runtime import setup_runtime
from pipeline.tracking import stage_run

from .common import Overrides, ParamsPath, load, user_errors

app = typer.Typer(help="Train the robust models and the reference classifier.", no_args_is_help=True)

Resume = Annotated[Optional[Path], typer.Option(help="Resume from this checkpoint (must match the params).")]
Restart = Annotated[bool, typer.Option("--restart", help="Ignore an existing checkpoint and start over.")]
Epochs = Annotated[Optional[float], typer.Option(help="Override optim.epochs.")]


def _run(section: str, params: Path, overrides, epochs, resume, restart):
    p = load(params, overrides, {f"{section}.optim.epochs": epochs})
    sec = getattr(p, section)
    ds = data_mod.load_dataset(p.data.out_dir)
    manifest = data_mod.read_manifest(p.data.out_dir)
    data_hash = manifest.get("sha256", {}).get("dataset.pt", "")
    stage = {"train_sup": "train_supervised", "train_ref": "train_reference",
             "train_unsup": "train_unsupervised"}[section]
    setup_runtime(sec.runtime)  # a missing CUDA device is an error before any MLflow run opens
    trainer.check_fits(sec, len(ds.train.labels), section)
    # every input this stage reads is checked before a run opens or a byte is written
    if resume is not None:
        from pipeline.checkpoints import load_checkpoint
        load_checkpoint(resume, None)
    kwargs = {"calibrate": True} if section == "train_ref" else {}  # the judge's IS needs calibrated probabilities
    if section == "train_sup" and sec.source != "train":  # downloaded, read and fitted once, here
        from pipeline import model_sources
        kwargs["source_model"] = model_sources.load(model_sources.robustbench_name(sec.source),
                                                    Path(sec.out_dir) / "robustbench")
    with exclusive(sec.out_dir, stage), \
            stage_run(p.experiment, stage, sec, upstream={"prepare": manifest.get("mlflow_run_id", "")},
                      tags={"data.sha256": data_hash}) as run:
        fn = trainer.train_unsupervised if section == "train_unsup" else trainer.train_supervised
        metrics = fn(sec, ds, run, stage, section, Path(p.metrics_dir), resume=resume, restart=restart,
                     data_hash=data_hash, **kwargs)
    if metrics:  # empty on ranks other than 0 under torchrun
        log(f"{stage}: " + json.dumps(metrics))


@app.command("supervised")
@user_errors
def supervised(params: ParamsPath = Path("params.yaml"), overrides: Overrides = None, epochs: Epochs = None,
               resume: Resume = None, restart: Restart = False):
    """PGD adversarial training of the classifier that the TA/Langevin/CS/RCS samplers use."""
    _run("train_sup", params, overrides, epochs, resume, restart)


@app.command("reference")
@user_errors
def reference(params: ParamsPath = Path("params.yaml"), overrides: Overrides = None, epochs: Epochs = None,
              resume: Resume = None, restart: Restart = False):
    """Standard training (eps = 0): the judge for offline IS/FID, never the sampled model."""
    _run("train_ref", params, overrides, epochs, resume, restart)


@app.command("unsupervised")
@user_errors
def unsupervised(params: ParamsPath = Path("params.yaml"), overrides: Overrides = None, epochs: Epochs = None,
                 resume: Resume = None, restart: Restart = False):
    """Contrastive adversarial training of the encoder that the PGD/MaxEnt samplers use."""
    _run("train_unsup", params, overrides, epochs, resume, restart)
