"""Reading what `cem sample` writes (shards, control rows): apart from the sampling code, so that
scoring depends on the files and not on how they were made."""
from __future__ import annotations

from pathlib import Path

import torch

from .errors import CemError

CONTROLS_FILE = "controls.pt"


def shard_paths(folder: Path) -> list[Path]:
    return sorted(Path(folder).glob("shard-*.pt"))


def load_shards(folder: Path):
    """Yield (uint8 images, labels) per shard, in order."""
    paths = shard_paths(folder)
    if not paths:
        raise CemError(f"no sample shards in {folder}; run `cem sample` first")
    for path in paths:
        blob = load_sample_file(path)
        yield blob["images"], blob["labels"]


def load_sample_file(path: Path) -> dict:
    try:
        blob = torch.load(path, weights_only=True)
    except Exception as exc:
        raise CemError(f"corrupt sample file {path} ({exc.__class__.__name__})") from None
    if not isinstance(blob, dict) or "labels" not in blob:
        raise CemError(f"{path} is not a sample file written by `cem sample`")
    return blob


def load_controls(folder: Path) -> dict:
    path = Path(folder) / CONTROLS_FILE
    if not path.exists():
        raise CemError(f"no control rows at {path}; run `cem sample` (it writes them) first")
    blob = load_sample_file(path)
    if not {"seeds", "stepped", "labels", "steps"} <= set(blob):
        raise CemError(f"{path} is not a control-row file written by `cem sample`")
    return blob
