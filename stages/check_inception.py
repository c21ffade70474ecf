"""`cem check-inception`: FID of real train vs test images in the Inception space, next to the
published 3.15 (50k/10k), to check the offline extractor and the data copy."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from pipeline.files import atomic_write_text
from pipeline.progress import log
from pipeline.scoring import check_inception as run_check
from pipeline.runtime import setup_runtime

from .common import Overrides, ParamsPath, load, user_errors


@user_errors
def check_inception(
    params: ParamsPath = Path("params.yaml"),
    overrides: Overrides = None,
    train_per_class: Annotated[Optional[int], typer.Option(
        help="Training images per class (default: all prepared ones, 5,000 for CIFAR-10).")] = None,
    test_per_class: Annotated[Optional[int], typer.Option(
        help="Test images per class (default: all prepared ones, 1,000 for CIFAR-10).")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Also write the result as JSON here.")] = None,
):
    """Inception FID/KID of prepared train vs test images (a GPU job at full size: 60,000 images)."""
    p = load(params, overrides)
    device = setup_runtime(p.score.runtime)
    res = run_check(p.data.out_dir, p.score, train_per_class, test_per_class, device)
    log(f"check-inception: FID train {res['n_train']} vs test {res['n_test']} = {res['fid']:.2f} "
        f"(published: {res['published_fid_50k_10k']} at 50,000 vs 10,000; FID is biased upwards at small N), "
        f"KID = {res['kid']:.5f} ± {res['kid_std']:.5f}; {res['extractor']}, source {res['data_source']}")
    if out:
        atomic_write_text(out, json.dumps(res, indent=2) + "\n")
