"""Model kinds: what a trained model *is*, one registry entry per kind (docs/science.md §1, §3).

A kind is recorded in every model file (`model.pt`'s "kind") and answers, in one place, what the
rest of the pipeline asks of a model: which params section trains it (and so where its file lives),
how the report labels its training, how its network is rebuilt from a model file, whether sampling
needs a bank of embedded training images (the contrastive energy's importance sample), whether it may
judge samples, whether its training curves are the linear probe's, and which network classifies test
images when `cem evaluate` measures it. Samplers name the kind they
draw from (`sampler_specs`), and `spec()` refuses an unregistered one.

To add a kind: one `kind(...)` entry here (its `build` reads what its recipe's `model_blob` writes) and
its tests; a new training recipe and params section come with it when it is trained here. Torch-free at
import, so the params schema can read the entries.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional


@dataclass(frozen=True)
class ModelKind:
    name: str
    training: str                      # the report's label: "supervised" / "unsupervised"
    section: Optional[str]             # the params section that trains it (its out_dir holds model.pt)
    build: Callable[[dict], object]    # (model-file blob) -> network with weights loaded, in eval mode
    sampling_bank: bool = False        # samplers embed a bank of training images with it
    can_judge: bool = False            # may score samples (a classifier's features and logits)
    probe_curves: bool = False         # its training curves plot a linear probe's accuracies
    classify: Optional[Callable[[dict], object]] = None
    """(model-file blob) -> the network `cem evaluate` measures (test images -> logits); None: `build`."""

    def classifier(self, blob: dict):
        return (self.classify or self.build)(blob)


MODEL_KINDS: dict[str, ModelKind] = {}


def kind(name: str, *args, **kwargs) -> ModelKind:
    if name in MODEL_KINDS:
        raise ValueError(f"model kind '{name}' is registered twice")
    MODEL_KINDS[name] = ModelKind(name, *args, **kwargs)
    return MODEL_KINDS[name]


def require_kind(name: str, where: str = "model") -> ModelKind:
    from .errors import CemError
    if name not in MODEL_KINDS:
        raise CemError(f"{where}: unknown model kind {name!r}; registered: {', '.join(MODEL_KINDS)}")
    return MODEL_KINDS[name]


def _load(model, blob: dict, what: str):
    from .errors import CemError
    try:
        model.load_state_dict(blob["state_dict"])
    except RuntimeError as exc:
        raise CemError(f"model weights do not fit {what}: {str(exc).splitlines()[0]}") from None
    return model.eval()


def _build_classifier(blob: dict):
    if blob["arch"].get("name") == "robustbench":  # a RobustBench zoo network (model_sources)
        from .model_sources import RobustBenchClassifier
        return _load(RobustBenchClassifier(blob["arch"]["model"]), blob, f"RobustBench's {blob['arch']['model']}")
    from .models import build_classifier
    from .params import ArchParams
    return _load(build_classifier(ArchParams(**blob["arch"]), blob["num_classes"]), blob, "the recorded architecture")


def _build_contrastive(blob: dict):
    from .models import ContrastiveModel
    from .params import ArchParams
    return _load(ContrastiveModel(ArchParams(**blob["arch"]), blob["proj_dim"]), blob, "the recorded architecture")


def _contrastive_probe(blob: dict):
    """The encoder with the linear probe its training fitted (model file's probe_state_dict): how an
    encoder's accuracy is measured (docs/science.md §3)."""
    from .errors import CemError
    from .models import LinearProbe
    if "probe_state_dict" not in blob:
        raise CemError("the model file has no linear probe (probe_state_dict); retrain it with `cem train unsupervised`")
    probe = LinearProbe(_build_contrastive(blob), blob["num_classes"])
    try:
        probe.fc.load_state_dict(blob["probe_state_dict"])
    except RuntimeError as exc:
        raise CemError(f"the linear probe's weights do not fit the encoder: {str(exc).splitlines()[0]}") from None
    return probe.eval()


kind("classifier", "supervised", "train_sup", _build_classifier, can_judge=True)
kind("contrastive", "unsupervised", "train_unsup", _build_contrastive, sampling_bank=True, probe_curves=True,
     classify=_contrastive_probe)
