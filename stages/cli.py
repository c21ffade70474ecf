"""The `cem` command: one subcommand per DVC stage."""
from __future__ import annotations

import os

# No file the pipeline reads may run code, including loads made for us inside libraries
# (torch-fidelity calls torch.load(weights_only=False)): torch then reads plain tensors only.
os.environ.pop("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", None)
os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
# A research pipeline does not phone home: MLflow's usage telemetry is off for every cem command
# (and for the processes it starts), whatever the environment says.
os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
os.environ["DO_NOT_TRACK"] = "1"

import typer  # noqa: E402

from . import (check_inception, evaluate, prepare, profile, reference_stats, report, repro, sample, score,  # noqa: E402
               train, tune)

app = typer.Typer(
    name="cem",
    help="Adversarial training and adversarial sampling (Wang et al., ICLR 2022): "
         "prepare data, train robust models, sample, score, report. Each command reads its section "
         "of params.yaml and logs to MLflow.",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
)
app.command("prepare")(prepare.prepare)
app.add_typer(train.app, name="train")
app.command("evaluate")(evaluate.evaluate)
app.command("sample")(sample.sample)
app.command("reference-stats")(reference_stats.reference_stats)
app.command("score")(score.score)
app.command("tune")(tune.tune)
app.command("check-inception")(check_inception.check_inception)
app.command("report")(report.report)
app.command("profile")(profile.profile)
app.command("repro")(repro.repro)

def main() -> None:
    """The `cem` entry point: a usage error (unknown option, `--n abc`) is one line, exit code 2,
    like every other bad input (click would print a framed box)."""
    import sys
    from pipeline.interrupts import end_with_parent
    end_with_parent()  # `kill -9` of `dvc repro`: this stage gets SIGTERM and ends like Ctrl-C, lock released
    try:  # typer >= 0.20 vendors click
        from typer._click import exceptions as cx
    except ImportError:  # pragma: no cover - older typer with click itself
        from click import exceptions as cx
    try:
        rv = app(standalone_mode=False)
    except cx.UsageError as exc:
        if type(exc).__name__ == "NoArgsIsHelpError" and exc.ctx is not None:  # bare `cem` / `cem train`
            print(exc.ctx.get_help())
            sys.exit(2)
        cmd = exc.ctx.command_path if exc.ctx is not None else "cem"
        print(f"error: {cmd}: {' '.join(exc.format_message().split())}", file=sys.stderr)
        sys.exit(2)
    sys.exit(rv if isinstance(rv, int) else 0)


if __name__ == "__main__":
    main()
