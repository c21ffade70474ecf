"""`cem report`: reports/results.md, our table beside the paper's."""
from __future__ import annotations

from pathlib import Path

from pipeline.progress import log
from pipeline.report import write_report
from pipeline.tracking import stage_run

from .common import Overrides, ParamsPath, load, user_errors


@user_errors
def report(params: ParamsPath = Path("params.yaml"), overrides: Overrides = None):
    """Write the results report (table, control rows, claims, accuracies, grids, plot)."""
    p = load(params, overrides)
    with stage_run(p.experiment, "report", p.report) as run:
        out = write_report(Path(p.score.out_dir), Path(p.sample.out_dir),
                           {"supervised AT (sampled)": Path(p.metrics_dir) / "train_sup.json",
                            "unsupervised AT encoder + linear probe (sampled)": Path(p.metrics_dir) / "train_unsup.json",
                            "reference classifier (judge)": Path(p.metrics_dir) / "train_ref.json"},
                           Path(p.report.out))
        run.log_artifact(out)
        for extra in ("scores.png",):
            if (out.parent / extra).exists():
                run.log_artifact(out.parent / extra)
    log(f"report: {out}")
