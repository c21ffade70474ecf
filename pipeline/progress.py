"""Rich progress bars that stay quiet when stdout is not a terminal (CI logs, DVC)."""
from __future__ import annotations

import os
import sys
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)

console = Console(stderr=True)


def interactive() -> bool:
    return sys.stderr.isatty() and not os.environ.get("CI")


@contextmanager
def progress_bar(description: str, total: int):
    """Yield `advance(n=1, **fields)`; draws a bar on a TTY, prints nothing otherwise."""
    if not interactive():
        yield lambda n=1, **_: None
        return
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                  console=console, transient=False) as bar:
        task = bar.add_task(description, total=total, info="")

        def advance(n: int = 1, **fields):
            info = " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in fields.items())
            bar.update(task, advance=n, info=info)

        yield advance


def log(message: str) -> None:
    """One status line on stderr (kept in CI logs); never broken at the console's width, so a log file
    or a grep sees each line whole."""
    console.print(message, highlight=False, markup=False, soft_wrap=True)
