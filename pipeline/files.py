"""Reading the small JSON files the stages write (manifest, configs, metrics, scores): a file that is
truncated, edited or not JSON is one line naming it, never a traceback."""
from __future__ import annotations

import json
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
