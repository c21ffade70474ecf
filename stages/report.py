"""`cem report`: reports/results.md, our table beside the paper's."""
from __future__ import annotations

from pathlib import Path

from pipeline.controls import FAILED_LINE, read_controls
from pipeline.datasets import require_dataset
from pipeline.params import EVALUATED
from pipeline.progress import log
from pipeline.report import write_report
from pipeline.tracking import stage_run

from .common import Overrides, ParamsPath, load, user_errors


@user_errors
def report(params: ParamsPath = Path("params.yaml"), overrides: Overrides = None):
    """Write the results report (table, control rows, claims, accuracies, grids, plot)."""
    p = load(params, overrides)
    with stage_run(p.experiment, "report", p.report) as run:
        m = Path(p.metrics_dir)
        out = write_report(Path(p.score.out_dir), Path(p.sample.out_dir),
                           {label: (m / f"{EVALUATED[name]}.json", m / f"evaluate_{name}.json") for name, label in
                            (("sup", "supervised AT (sampled)"),
                             ("unsup", "unsupervised AT encoder + linear probe (sampled)"),
                             ("ref", "reference classifier (judge)"))},
                           Path(p.report.out), controls=read_controls(Path(p.score.reference_dir)),
                           dataset=require_dataset(p.data.name), tune_dir=Path(p.tune.out_dir))
        run.log_artifact(out)
        controls = read_controls(Path(p.score.reference_dir)) or {"spaces": {}}
        run.set_tags({f"instrument.{k}": "passed its controls" if c["passed"] else FAILED_LINE
                      for k, c in controls["spaces"].items()} or {"instrument": f"no controls: {FAILED_LINE}"})
        for extra in ("scores.png",):
            if (out.parent / extra).exists():
                run.log_artifact(out.parent / extra)
    for k, c in controls["spaces"].items():
        if not c["passed"]:
            log(f"report: {k} space: {FAILED_LINE}")
    log(f"report: {out}")
