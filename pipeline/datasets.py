"""The dataset registry: one entry per dataset, selected with `data.name`. An entry holds the facts every
stage reads — how many classes, the image size, the split sizes, how torchvision downloads it, whether
the paper reports numbers on it — so that no stage assumes CIFAR-10. Offline, any dataset is read from a
local ImageFolder directory or .tar/.tar.gz (train/<class>/*, test/<class>/*) with the same checks.
Torch-free, so the schema can import it cheaply.

To add a dataset: one `dataset(...)` call here (and its tests); a profile line if it needs one.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from .errors import ParamsError


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    num_classes: int
    train_size: int              # images in the full training split (the GPU time estimate scales with it)
    test_size: int
    torchvision: str             # the torchvision.datasets class that downloads it
    split_style: str             # "train_flag" (train=True/False) or "split" (split="train"/"test")
    classes: Optional[tuple[str, ...]] = None
    """Class names when torchvision does not give them; None: from torchvision or the folder names."""
    image_size: int = 32
    channels: int = 3
    paper_numbers: bool = False
    """The paper (Wang et al. 2022) reports IS/FID on this dataset: the report shows its numbers."""


DATASETS: dict[str, DatasetSpec] = {}


def dataset(name: str, *args, **kwargs) -> DatasetSpec:
    if name in DATASETS:
        raise ValueError(f"dataset '{name}' is registered twice")
    DATASETS[name] = DatasetSpec(name, *args, **kwargs)
    return DATASETS[name]


def require_dataset(name: str) -> DatasetSpec:
    if name not in DATASETS:
        raise ParamsError(f"unknown dataset '{name}'; choose one of {', '.join(DATASETS)}")
    return DATASETS[name]


dataset("cifar10", 10, 50_000, 10_000, "CIFAR10", "train_flag",
        classes=("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
        paper_numbers=True)
dataset("cifar100", 100, 50_000, 10_000, "CIFAR100", "train_flag")
dataset("svhn", 10, 73_257, 26_032, "SVHN", "split", classes=tuple(str(d) for d in range(10)))
