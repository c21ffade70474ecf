"""What every stage command shares: params options, and turning user errors into one line."""
from __future__ import annotations

import functools
import signal
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from pipeline import distributed, interrupts, timing
from pipeline.errors import CemError
from pipeline.params import Params, load_params

ParamsPath = Annotated[Path, typer.Option("--params", help="Params file; each stage reads its own section.")]
Overrides = Annotated[Optional[list[str]], typer.Option(
    "--set", help="Override one param for this run, e.g. --set train_sup.optim.epochs=2 (repeatable).")]


def load(params_path: Path, overrides: Optional[list[str]], extra: Optional[dict] = None) -> Params:
    """Load params.yaml plus --set overrides plus explicit options (None values are ignored)."""
    sets = list(overrides or [])
    for key, value in (extra or {}).items():
        if value is not None:
            sets.append(f"{key}={value}")
    return load_params(params_path, sets)


def user_errors(fn):
    """A CemError becomes `error: <one line>` on stderr and its exit code, with no traceback."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        interrupts.end_like_ctrl_c(signal.SIGTERM)  # SIGTERM ends like Ctrl-C: outputs stay whole, run KILLED
        timing.begin_stage()
        rc = 1  # an unexpected exception
        try:
            result = fn(*args, **kwargs)
            rc = 0
            return result
        except CemError as exc:  # one line, bounded: a message never echoes a huge input
            text = " ".join(str(exc).split())
            print(f"error: {text if len(text) <= 2000 else text[:2000] + ' ...'}", file=sys.stderr)
            rc = exc.exit_code
            raise typer.Exit(exc.exit_code)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            rc = 130
            raise typer.Exit(130)
        except typer.Exit as exc:
            rc = exc.exit_code
            raise
        finally:
            distributed.shutdown()
            timing.end_stage(rc)
    return wrapper
