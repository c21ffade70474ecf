"""Where the supervised samplers' classifier comes from: trained here (`train_sup.source: train`) or a
public robust model from RobustBench's model zoo (`robustbench:<name>`, CIFAR-10, L2 threat model),
which needs no training and shows the samplers at their best.

The zoo gives the architecture (its code, from the `robustbench` package); the checkpoint is read
by us with `torch.load(weights_only=True)` — a pickle payload is refused, never run — from
`<train_sup.out_dir>/robustbench/cifar10/L2/<name>.pt`, downloaded there first if missing (one clear
line when the download host is unreachable). RobustBench models take [0,1] inputs and normalise
inside, which is what our energies expect: f(x, ·) = the model's logits.
"""
from __future__ import annotations

import os
import socket
import sys
import types
from pathlib import Path

import torch
from torch import nn

from .errors import CemError

PREFIX = "robustbench:"
DATASET, THREAT = "cifar10", "L2"


def robustbench_name(source: str) -> str | None:
    """The zoo name of a `robustbench:<name>` source, None for `train`."""
    return source[len(PREFIX):] if source.startswith(PREFIX) else None


def _zoo() -> dict:
    """RobustBench's CIFAR-10 L2 model dictionary. robustbench 1.1.1 imports, at package import,
    `autoattack.state` (fra31's package, published on PyPI as `pyautoattack`; torchattacks 3.3 ships
    an unrelated top-level `autoattack`) and `pkg_resources` (gone from setuptools >= 81), both for
    parts we do not use (its own evaluation, ImageNet loaders): alias the first, stub the second."""
    try:
        import pyautoattack
        import pyautoattack.state
    except ImportError:
        raise CemError("RobustBench models need the optional dependencies: pip install -e '.[robustbench]'") from None
    if not hasattr(sys.modules.get("autoattack"), "state"):
        sys.modules["autoattack"] = pyautoattack
        sys.modules["autoattack.state"] = pyautoattack.state
    try:
        import pkg_resources  # noqa: F401
    except ImportError:
        stub = types.ModuleType("pkg_resources")

        def resource_filename(*_a, **_k):
            raise CemError("pkg_resources is not available (setuptools >= 81): RobustBench's data loaders are unsupported")
        stub.resource_filename = resource_filename
        sys.modules["pkg_resources"] = stub
    try:
        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from robustbench.model_zoo import model_dicts
            from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel
    except ImportError as exc:
        raise CemError(f"cannot import robustbench ({exc}); pip install -e '.[robustbench]'") from None
    return model_dicts[BenchmarkDataset.cifar_10][ThreatModel.L2]


def architecture(name: str) -> nn.Module:
    zoo = _zoo()
    if name not in zoo:
        raise CemError(f"'{name}' is not a RobustBench CIFAR-10 L2 model; known: {', '.join(zoo)}")
    return zoo[name]["model"]()


def checkpoint_path(name: str, folder: Path) -> Path:
    return Path(folder) / DATASET / THREAT / f"{name}.pt"


def fetch(name: str, folder: Path, timeout_s: float = 30.0) -> Path:
    """The checkpoint on disk, downloaded from RobustBench's host first if missing (atomically)."""
    path = checkpoint_path(name, folder)
    if path.exists():
        return path
    gdrive = _zoo().get(name, {}).get("gdrive_id")
    if not isinstance(gdrive, str):
        raise CemError(f"RobustBench model '{name}' has no single checkpoint to download; place it at {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.download{os.getpid()}")
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(timeout_s)
    try:
        from robustbench.utils import download_gdrive
        download_gdrive(gdrive, tmp)
        os.replace(tmp, path)
    except CemError:
        raise
    except Exception as exc:
        tmp.unlink(missing_ok=True)
        raise CemError(f"cannot download RobustBench model '{name}' ({exc.__class__.__name__}; offline?): "
                       f"place its checkpoint at {path}") from None
    finally:
        socket.setdefaulttimeout(previous)
    return path


def read_checkpoint(path: Path) -> dict:
    """A RobustBench checkpoint's state dict, read weights-only ({'state_dict': ...} or the bare dict;
    'module.' / 'model.' prefixes removed as RobustBench does)."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CemError(f"refusing {path}: not a plain weights file ({exc.__class__.__name__}; a pickle that "
                       "would run code is never loaded)") from None
    state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CemError(f"{path} is not a RobustBench checkpoint (no state dict of tensors)")
    out = {}
    for key, value in state.items():
        for prefix in ("module.", "model."):
            if key.startswith(prefix):
                key = key[len(prefix):]
        out[key] = value
    return out


class RobustBenchClassifier(nn.Module):
    """A zoo network as our classifier: forward(x in [0,1]) -> logits (it normalises inside). It has
    no features/head split, so it can be sampled from but not serve as the scoring judge."""

    def __init__(self, name: str):
        super().__init__()
        self.zoo_name = name
        self.net = architecture(name)

    def forward(self, x):
        return self.net(x)


def load(name: str, folder: Path) -> tuple[RobustBenchClassifier, Path]:
    path = fetch(name, folder)
    model = RobustBenchClassifier(name)
    try:
        model.net.load_state_dict(read_checkpoint(path))
    except RuntimeError as exc:
        raise CemError(f"{path} does not fit RobustBench's '{name}': {str(exc).splitlines()[0]}") from None
    return model.eval(), path
