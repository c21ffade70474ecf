"""`cem prepare`: the dataset (data.name) → uint8 tensors, Gaussian seed statistics and a manifest."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from pipeline import data
from pipeline.locks import exclusive
from pipeline.progress import log
from pipeline.tracking import stage_run

from .common import Overrides, ParamsPath, load, user_errors


@user_errors
def prepare(
    params: ParamsPath = Path("params.yaml"),
    overrides: Overrides = None,
    source: Annotated[Optional[str], typer.Option(
        help="'torchvision' (download) or a local ImageFolder dir / .tar / .tar.gz (overrides data.source)")] = None,
    out_dir: Annotated[Optional[str], typer.Option(help="Output folder (overrides data.out_dir)")] = None,
):
    """Read the dataset (data.name, from data.source) and write dataset.pt, seeds.pt and manifest.json."""
    p = load(params, overrides, {"data.source": source, "data.out_dir": out_dir})
    d = p.data
    ds, seeds = data.load_and_fit(d.source, d.download_dir, d.train_per_class, d.test_per_class, d.cov_ridge, d.seed,
                                  d.name)
    with exclusive(d.out_dir, "prepare"), stage_run(p.experiment, "prepare", d) as run:
        manifest = data.write_prepared(ds, seeds, d.source, d.out_dir, d.train_per_class, d.test_per_class, d.seed,
                                       run_id=run.run_id, name=d.name)
        run.log_metrics({"n_train": manifest["n_train"], "n_test": manifest["n_test"]})
        run.log_artifact(Path(d.out_dir) / "manifest.json")
        run.set_tags({"data.sha256": manifest["sha256"]["dataset.pt"]})
    log(f"prepare: {manifest['n_train']} train / {manifest['n_test']} test images, "
        f"{len(manifest['classes'])} classes -> {d.out_dir}")
