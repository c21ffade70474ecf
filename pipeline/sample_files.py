"""Reading what `cem sample` writes (shards, control rows): apart from the sampling code, so that
scoring depends on the files and not on how they were made."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import torch

from .errors import CemError

CONTROLS_FILE = "controls.pt"
IMAGE_SHAPE = (3, 32, 32)
"""The image shape every sampler draws (the seeds are CIFAR-sized)."""


def shard_expectation(sampler: str, config_hash: str, n: int, shard_size: int, image_shape=IMAGE_SHAPE) -> dict:
    """What every shard of a folder must prove about itself (see `shard_problem`)."""
    return {"sampler": sampler, "config_hash": config_hash, "n": n, "shard_size": shard_size,
            "shards": math.ceil(n / shard_size), "image_shape": list(image_shape)}


def provenance(expect: dict, index: int, images: torch.Tensor, model_sha256: str, seed: int) -> dict:
    """What made a shard, stored in it: identical work gives identical bytes (no run ids, no times)."""
    return {"sampler": expect["sampler"], "config_hash": expect["config_hash"], "model_sha256": model_sha256,
            "seed": seed, "index": index, "shards": expect["shards"], "shape": list(images.shape),
            "dtype": str(images.dtype).replace("torch.", "")}


def _index(path: Path) -> Optional[int]:
    stem = path.stem.rsplit("-", 1)[-1]
    return int(stem) if stem.isdigit() else None


def shard_problem(path: Path, expect: dict, blob: Optional[dict] = None) -> Optional[str]:
    """Why the shard at `path` does not belong to the folder described by `expect`, or None."""
    try:
        blob = blob if blob is not None else load_sample_file(path)
    except CemError as exc:
        return str(exc)
    prov = blob.get("provenance")
    if not isinstance(prov, dict):
        return "it carries no provenance (not written by this version of `cem sample`)"
    for key in ("sampler", "config_hash"):
        if prov.get(key) != expect[key]:
            return f"it was made by {prov.get('sampler')!r} with config {prov.get('config_hash')!r}, " \
                   f"this folder holds {expect['sampler']!r} with config {expect['config_hash']!r}"
    index = _index(path)
    if prov.get("index") != index or index is None or not 0 <= index < expect["shards"]:
        return f"it is shard {prov.get('index')} of its run, named as {index}, of {expect['shards']} expected"
    images, labels = blob.get("images"), blob.get("labels")
    count = min(expect["shard_size"], expect["n"] - index * expect["shard_size"])
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.dim() != 4 \
            or list(images.shape[1:]) != expect["image_shape"]:
        got = f"{images.dtype} {tuple(images.shape)}" if isinstance(images, torch.Tensor) else type(images).__name__
        return f"its images are {got}, expected uint8 (N, {', '.join(map(str, expect['image_shape']))})"
    if len(images) != count or prov.get("shape") != list(images.shape):
        return f"it holds {len(images)} images, expected {count}"
    if not isinstance(labels, torch.Tensor) or labels.dim() != 1 or len(labels) != count:
        return f"its labels do not match its {count} images"
    return None


def shard_paths(folder: Path) -> list[Path]:
    return sorted(Path(folder).glob("shard-*.pt"))


def load_shards(folder: Path, expect: Optional[dict] = None):
    """Yield (uint8 images, labels) per shard, in order. With `expect`, every shard must prove it
    belongs (`shard_problem`) and none may be missing: the first problem is one line naming the file."""
    paths = shard_paths(folder)
    if not paths:
        raise CemError(f"no sample shards in {folder}; run `cem sample` first")
    if expect is not None:
        names = {p.name for p in paths}
        missing = [f"shard-{i:05d}.pt" for i in range(expect["shards"]) if f"shard-{i:05d}.pt" not in names]
        if missing:
            raise CemError(f"{folder}: {len(missing)} of {expect['shards']} shards missing ({', '.join(missing[:3])}"
                           f"{' ...' if len(missing) > 3 else ''}): run `cem sample {expect['sampler']}` to make them")
    for path in paths:
        blob = load_sample_file(path)
        if expect is not None:
            problem = shard_problem(path, expect, blob)
            if problem:
                raise CemError(f"{path} does not belong to this folder: {problem}; delete it and run "
                               f"`cem sample {expect['sampler']}`")
        yield blob["images"], blob["labels"]


def load_sample_file(path: Path) -> dict:
    try:
        blob = torch.load(path, weights_only=True)
    except Exception as exc:
        raise CemError(f"corrupt sample file {path} ({exc.__class__.__name__})") from None
    if not isinstance(blob, dict) or "labels" not in blob or "images" not in blob and "seeds" not in blob:
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
