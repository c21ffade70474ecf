"""`cem reference-stats`: FID/KID statistics of the reference set, once per dataset and judge."""
from __future__ import annotations

from pathlib import Path

from pipeline.controls import FAILED_LINE
from pipeline.data import read_manifest
from pipeline.locks import exclusive
from pipeline.progress import log
from pipeline.scoring import compute_reference_stats, reference_inputs
from pipeline.tracking import stage_run
from pipeline.runtime import setup_runtime

from .common import Overrides, ParamsPath, load, user_errors


@user_errors
def reference_stats(params: ParamsPath = Path("params.yaml"), overrides: Overrides = None):
    """Write score.reference_dir/<space>.npz (mean, covariance, KID features; no pickle) for the
    classifier space and, with score.inception, the Inception space."""
    p = load(params, overrides)
    device = setup_runtime(p.score.runtime)
    # every input (judge, weights, data, seeds) checked before a run opens
    inputs = reference_inputs(p.data.out_dir, p.score, p.sample.defaults.n)
    with exclusive(Path(p.score.reference_dir), "reference-stats"), \
            stage_run(p.experiment, "reference_stats", p.score,
                   upstream={"prepare": read_manifest(p.data.out_dir).get("mlflow_run_id", "")}) as run:
        summary, controls = compute_reference_stats(p.score, inputs, device, run)
    for space, s in summary.items():
        log(f"reference-stats: {space}: {s['n']} images, {s['dim']}-d features ({s['extractor']})")
    for space, c in controls.items():
        for line in c["checks"]:
            log(f"reference-stats: {space} controls: {line}")
        log(f"reference-stats: {space}: " + ("passed its controls" if c["passed"] else f"**{FAILED_LINE}**"))
