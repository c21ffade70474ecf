"""The dataset registry (pipeline/datasets.py): every stage reads a dataset's facts from its entry;
sources of each dataset's layout are read; the whole smoke DAG on CIFAR-100-shaped data runs in
tests/test_gpu_acceptance.py (one DAG for two checks: CI time)."""

import numpy as np
import pytest

from pipeline import data
from pipeline.datasets import DATASETS, require_dataset
from pipeline.errors import CemError, ParamsError
from tests.conftest import write_image_folder


def test_registry_holds_the_three_datasets_with_their_facts():
    assert {n: (d.num_classes, d.train_size, d.test_size) for n, d in DATASETS.items()} == {
        "cifar10": (10, 50_000, 10_000), "cifar100": (100, 50_000, 10_000), "svhn": (10, 73_257, 26_032)}
    assert [n for n, d in DATASETS.items() if d.paper_numbers] == ["cifar10"]  # the paper reports CIFAR-10 only
    with pytest.raises(ParamsError, match="unknown dataset 'mnist'; choose one of cifar10, cifar100, svhn"):
        require_dataset("mnist")


def test_a_source_with_another_number_of_classes_is_one_line(image_folder):
    with pytest.raises(CemError, match="holds 10 class folders, but data.name 'cifar100' has 100 classes"):
        data.read_source(str(image_folder), name="cifar100")


@pytest.mark.parametrize("name, layout", [("cifar100", "hwc"), ("svhn", "chw")])
def test_torchvision_sources_are_read_in_each_datasets_layout(monkeypatch, tmp_path, name, layout):
    """CIFAR keeps HWC images and `targets`; SVHN keeps CHW images and `labels`: both end as CHW uint8."""
    import torchvision.datasets
    spec = DATASETS[name]
    calls = []

    class Fake:
        def __init__(self, root, download, **kw):
            calls.append(kw)
            rng = np.random.default_rng(0)
            n = 3 * spec.num_classes
            self.data = rng.integers(0, 256, (n, 32, 32, 3) if layout == "hwc" else (n, 3, 32, 32), dtype=np.uint8)
            labels = [i % spec.num_classes for i in range(n)]
            if layout == "hwc":
                self.targets, self.classes = labels, [f"k{i}" for i in range(spec.num_classes)]
            else:
                self.labels = np.array(labels)
    monkeypatch.setattr(torchvision.datasets, spec.torchvision, Fake)
    ds = data.read_source("torchvision", tmp_path, name=name)
    assert ds.train.images.shape == (3 * spec.num_classes, 3, 32, 32) and len(ds.classes) == spec.num_classes
    assert calls == ([{"train": True}, {"train": False}] if layout == "hwc" else [{"split": "train"}, {"split": "test"}])


# The whole smoke DAG on another dataset (CIFAR-100: 100 classes, heads, seeds per class, no paper numbers)
# runs inside the GPU acceptance script's CPU test: tests/test_gpu_acceptance.py.
