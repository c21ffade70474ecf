"""Files, one home for every stage: hashing, atomic writes (readers never see half a file, a failed
write leaves no temp file), and reading the small JSON files the stages write (manifest, configs,
metrics, scores), where a file that is truncated, edited or not JSON is one line naming it, never a
traceback. Kept apart from the data code so that a stage's DVC deps do not include how CIFAR is read."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Iterable

from .errors import CemError


def read_json_file(path: Path, what: str) -> dict:
    """A JSON object written by cem, or one line saying the file is not one (truncated, edited)."""
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise CemError(f"{path} is not a readable {what} file ({exc.__class__.__name__}): delete it and rerun "
                       "the stage that writes it") from None
    if not isinstance(doc, dict):
        raise CemError(f"{path} is not a {what} file (its top level is not an object): delete it and rerun "
                       "the stage that writes it")
    return doc


def require_keys(doc: dict, keys: Iterable[str], path: Path, what: str) -> dict:
    """`doc` with every key in `keys`, or one line naming the first missing one."""
    for key in keys:
        if key not in doc:
            raise CemError(f"{path} is not a complete {what} file (no {key!r}): delete it and rerun the stage "
                           "that writes it")
    return doc


def file_digest(path: str | Path, algo: str = "sha256") -> str:
    """Hex digest of a file, read in 1 MiB blocks."""
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def sha256_file(path: str | Path) -> str:
    return file_digest(path, "sha256")


def atomic_torch_save(obj, path: str | Path) -> None:
    """Write to a temp file in the same folder, then rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        import torch  # here, so that reading a JSON file does not import torch
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException as exc:  # a full disk, a vanished folder, Ctrl-C: no half file, no temp left
        tmp.unlink(missing_ok=True)
        if isinstance(exc, (OSError, RuntimeError)):
            raise CemError(f"cannot write {path}: {_write_error(exc)}") from None
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise CemError(f"cannot write {path}: {_write_error(exc)}") from None
        raise


def _write_error(exc: BaseException) -> str:
    """What went wrong while writing, in a few words (torch reports a full disk as a RuntimeError
    about stream positions; the OS error underneath says 'No space left on device')."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
    if "unexpected pos" in text or "file write failed" in text:
        return f"the write failed ({text[:80]}): is the disk full?"
    return text[:200]
