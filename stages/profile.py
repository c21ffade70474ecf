"""`cem profile NAME`: switch params.yaml to a profile from profiles/ (validated first)."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
import yaml

from pipeline import gpu_estimate
from pipeline.errors import CemError
from pipeline.params import apply_overrides, parse_params, read_raw
from pipeline.progress import log

from .common import Overrides, user_errors


BASE = "cpu"


def deep_merge(base: dict, overlay: dict) -> dict:
    """Overlay values win; nested sections merge key by key."""
    out = dict(base)
    for key, value in (overlay or {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


@user_errors
def profile(
    name: Annotated[str, typer.Argument(help="Profile name: a file profiles/NAME.yaml (cpu, smoke, gpu, paper).")],
    overrides: Overrides = None,
    params: Annotated[Path, typer.Option("--params", help="File to write.")] = Path("params.yaml"),
    profiles_dir: Annotated[Path, typer.Option(help="Folder of profiles.")] = Path("profiles"),
    throughput: Annotated[Path, typer.Option(help="GPU throughputs measured by bench.gpu, for the time estimate.")]
    = Path("docs/gpu_throughput.json"),
    stage_times: Annotated[Path, typer.Option(help="Stage times of a GPU acceptance run, for the estimate.")]
    = Path("docs/gpu_stages.json"),
):
    """Write params.yaml from a profile: cpu (the default, complete) or an overlay merged onto it
    (smoke, gpu, paper), plus --set overrides; validated before anything is written. For gpu and paper
    it also prints the GPU time estimated from measured throughputs."""
    src = profiles_dir / f"{name}.yaml"
    if not src.exists():
        known = ", ".join(sorted(f.stem for f in profiles_dir.glob("*.yaml"))) or "none"
        raise CemError(f"no profile '{name}' in {profiles_dir}/ (known: {known})", exit_code=2)
    if name == BASE:
        raw = read_raw(src)
    else:
        raw = deep_merge(read_raw(profiles_dir / f"{BASE}.yaml"), read_raw(src))
    raw = apply_overrides(raw, overrides or [])
    parsed = parse_params(raw, str(src))
    if name == BASE and not overrides:
        text = src.read_text()
    else:
        text = (f"# Profile '{name}': profiles/{BASE}.yaml merged with {src}"
                + (f" and --set {' '.join(overrides)}" if overrides else "")
                + f".\n# Written by `cem profile`; restore the default with `cem profile {BASE}`.\n"
                + yaml.safe_dump(raw, sort_keys=False, default_flow_style=None, width=110))
    tmp = params.with_name(f".{params.name}.tmp")
    tmp.write_text(text)
    tmp.replace(params)
    log(f"{params} is now profile '{name}'" + (f" with {len(overrides)} override(s)" if overrides else ""))
    if name != BASE and "smoke" not in name:
        text = gpu_estimate.summary(parsed, throughput, stage_times, Path.cwd())
        log(text if text else f"(no GPU time estimate: {throughput} not found; `python -m bench.gpu --out {throughput}`)")
