"""`cem profile NAME`: switch params.yaml to a profile from profiles/ (validated first)."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
import yaml

from pipeline.errors import CemError
from pipeline.params import apply_overrides, parse_params, read_raw
from pipeline.progress import log

from .common import Overrides, user_errors


@user_errors
def profile(
    name: Annotated[str, typer.Argument(help="Profile name: a file profiles/NAME.yaml (cpu, smoke, paper).")],
    overrides: Overrides = None,
    params: Annotated[Path, typer.Option("--params", help="File to write.")] = Path("params.yaml"),
    profiles_dir: Annotated[Path, typer.Option(help="Folder of profiles.")] = Path("profiles"),
):
    """Copy profiles/NAME.yaml (plus --set overrides) over params.yaml, after validating it."""
    src = profiles_dir / f"{name}.yaml"
    if not src.exists():
        known = ", ".join(sorted(f.stem for f in profiles_dir.glob("*.yaml"))) or "none"
        raise CemError(f"no profile '{name}' in {profiles_dir}/ (known: {known})", exit_code=2)
    raw = apply_overrides(read_raw(src), overrides or [])
    parse_params(raw, str(src))
    header = f"# Profile '{name}' (from {src}); restore the default with `cem profile cpu`.\n"
    text = src.read_text() if not overrides else yaml.safe_dump(raw, sort_keys=False)
    if not overrides and text.startswith("#"):
        header = ""
    tmp = params.with_name(f".{params.name}.tmp")
    tmp.write_text(header + text)
    tmp.replace(params)
    log(f"params.yaml is now profile '{name}'" + (f" with {len(overrides)} override(s)" if overrides else ""))
