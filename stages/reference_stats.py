"""`cem reference-stats`: FID/KID statistics of the reference set, once per dataset and judge."""
from __future__ import annotations

from pathlib import Path

from pipeline.data import read_manifest
from pipeline.progress import log
from pipeline.scoring import compute_reference_stats
from pipeline.tracking import stage_run
from pipeline.runtime import setup_runtime

from .common import Overrides, ParamsPath, load, user_errors


@user_errors
def reference_stats(params: ParamsPath = Path("params.yaml"), overrides: Overrides = None):
    """Write score.reference_dir/<space>.npz (mean, covariance, KID features; no pickle) for the
    classifier space and, with score.inception, the Inception space."""
    p = load(params, overrides)
    device = setup_runtime(p.sample.runtime)
    with stage_run(p.experiment, "reference_stats", p.score,
                   upstream={"prepare": read_manifest(p.data.out_dir).get("mlflow_run_id", "")}) as run:
        summary = compute_reference_stats(p, device, run)
    for space, s in summary.items():
        log(f"reference-stats: {space}: {s['n']} images, {s['dim']}-d features ({s['extractor']})")
