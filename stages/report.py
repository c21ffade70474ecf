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
                           {"supervised AT (sampled)": p.train_sup.out_dir,
                            "unsupervised AT encoder + linear probe (sampled)": p.train_unsup.out_dir,
                            "reference classifier (judge)": p.train_ref.out_dir},
                           Path(p.report.out))
        run.log_artifact(out)
        for extra in ("scores.png",):
            if (out.parent / extra).exists():
                run.log_artifact(out.parent / extra)
    log(f"report: {out}")
