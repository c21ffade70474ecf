"""One writer per output folder: a second `cem` process on the same folder refuses with one line
instead of interleaving checkpoints or shards with the first."""
from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager
from pathlib import Path

from . import distributed
from .errors import CemError


@contextmanager
def exclusive(folder: str | Path, what: str):
    """Hold an advisory lock beside `folder` (`.<name>.lock` in its parent, so the lock file never
    becomes part of a DVC output). Only rank 0 locks under torchrun."""
    if not distributed.world().main:
        yield
        return
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    path = folder.parent / f".{folder.name}.lock"
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:  # e.g. a directory where the lock file belongs, a read-only folder
        raise CemError(f"{what}: cannot open the lock file {path} ({exc.strerror}): remove or fix it") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise CemError(f"{what}: another cem process is writing {folder} (lock {path}); "
                       "wait for it to finish or stop it") from None
    try:
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
