"""Training checkpoints: everything needed to continue bit-identically, written atomically and
read with `weights_only=True` (plain tensors and containers, never pickled code)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

from .files import atomic_torch_save
from .errors import CemError


def save_checkpoint(path: Path, *, model, optimizer, scheduler, step: int, epoch: int, params_hash: str,
                    run_id: str, history: list[dict]) -> None:
    atomic_torch_save({
        "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
        "step": step, "epoch": epoch, "params_hash": params_hash, "mlflow_run_id": run_id,
        "rng": {"torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
        "history": history,
    }, path)


def load_checkpoint(path: Path, params_hash: Optional[str]) -> dict:
    """Load and check a checkpoint; one made with other params is refused, never silently resumed."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CemError(f"cannot load checkpoint {path}: {exc.__class__.__name__} "
                       "(truncated file, or not a cem checkpoint?)") from None
    if not isinstance(ckpt, dict) or "params_hash" not in ckpt or "model" not in ckpt:
        raise CemError(f"{path} is not a cem training checkpoint")
    if params_hash is not None and ckpt["params_hash"] != params_hash:
        raise CemError(f"checkpoint {path} was made with other params (hash {ckpt['params_hash']}, "
                       f"current {params_hash}); refusing to resume: delete it or pass --restart")
    return ckpt


def restore_rng(ckpt: dict) -> None:
    torch.set_rng_state(ckpt["rng"]["torch"])
    if torch.cuda.is_available() and ckpt["rng"].get("cuda"):
        torch.cuda.set_rng_state_all(ckpt["rng"]["cuda"])


LINEAGE_FILE = "lineage.json"
"""Beside model.pt: which MLflow run made it. Lineage lives beside an artifact, never inside it, so
the same training gives the same model.pt bytes (and DVC's caches work)."""


def write_lineage(model_path: Path, run_id: str, stage: str) -> None:
    import json

    from .files import atomic_write_text
    atomic_write_text(Path(model_path).parent / LINEAGE_FILE,
                      json.dumps({"mlflow_run_id": run_id, "stage": stage}, indent=2) + "\n")


def model_run_id(model_path: Path) -> str:
    """The MLflow run that made a model file ('' when unknown); older model files carried it inside."""
    from .files import read_json_file
    path = Path(model_path).parent / LINEAGE_FILE
    if path.exists():
        return str(read_json_file(path, "model lineage").get("mlflow_run_id", ""))
    try:
        return str(load_model_file(model_path).get("mlflow_run_id", ""))
    except CemError:
        return ""


def load_model_file(path: Path) -> dict:
    """A final model file (`model.pt`) written by a training stage."""
    path = Path(path)
    if not path.exists():
        raise CemError(f"model not found: {path}; run the training stage first")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CemError(f"cannot load model {path}: {exc.__class__.__name__} (corrupt or not a cem model)") from None
    if not isinstance(blob, dict) or not {"state_dict", "arch", "kind"} <= set(blob):
        raise CemError(f"{path} is not a model written by `cem train`")
    return blob


def build_trained_model(blob: dict):
    """Rebuild a network from a model file's architecture record and load its weights (the file's
    model kind knows how: pipeline/model_kinds.py)."""
    from .model_kinds import require_kind
    return require_kind(blob["kind"], "model file").build(blob)
