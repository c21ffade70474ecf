"""The `cem` command: one subcommand per DVC stage."""
from __future__ import annotations

import typer

from . import prepare, profile, report, sample, score, train

app = typer.Typer(
    name="cem",
    help="Adversarial training and adversarial sampling (Wang et al., ICLR 2022): "
         "prepare data, train robust models, sample, score, report. Each command reads its section "
         "of params.yaml and logs to MLflow.",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
)
app.command("prepare")(prepare.prepare)
app.add_typer(train.app, name="train")
app.command("sample")(sample.sample)
app.command("score")(score.score)
app.command("report")(report.report)
app.command("profile")(profile.profile)

if __name__ == "__main__":
    app()
