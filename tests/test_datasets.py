"""The dataset registry (pipeline/datasets.py): every stage reads a dataset's facts from its entry;
CIFAR-100 and SVHN run the whole smoke DAG on synthetic data of their shape (100 and 10 classes)."""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline import data
from pipeline.datasets import DATASETS, require_dataset
from pipeline.errors import CemError, ParamsError
from tests.conftest import ROOT, write_image_folder


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


def _project_copy(dest: Path) -> Path:
    """The working tree (tracked and new files) in a fresh git repository, as a user's clone."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.split("\n")
    for f in filter(None, files):
        if (ROOT / f).is_file():
            (dest / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, dest / f)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)
    subprocess.run([*git, "add", "-A"], cwd=dest, check=True)
    subprocess.run([*git, "commit", "-qm", "copy"], cwd=dest, check=True)
    return dest


@pytest.mark.slow
@pytest.mark.parametrize("name", ["cifar100"])
def test_smoke_dag_runs_end_to_end_on_another_dataset(tmp_path, name):
    """The whole DAG once on a dataset that is not CIFAR-10 (~4 min of CI, so one: CIFAR-100 differs in
    more ways — 100 classes, heads, seeds per class, no paper numbers; SVHN's own source layout is read by
    the test above, and its registry entry is checked against the report's labelling below)."""
    spec = DATASETS[name]
    per_class = {"cifar100": (10, 5)}[name]  # small: the DAG's plumbing, not its numbers
    source = write_image_folder(tmp_path / "images", *per_class, num_classes=spec.num_classes)
    repo = _project_copy(tmp_path / "repo")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    run = lambda *cmd: subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=1200)  # noqa: E731
    prof = run("cem", "profile", "smoke", "--set", f"data.name={name}", "--set", f"data.source={source}",
               "--set", f"data.train_per_class={per_class[0]}", "--set", f"data.test_per_class={per_class[1]}")
    assert prof.returncode == 0, prof.stderr[-2000:]
    repro = run("dvc", "repro")
    assert repro.returncode == 0, repro.stdout[-3000:] + repro.stderr[-3000:]
    manifest = data.read_manifest(repo / "data" / "prepared")
    assert manifest["dataset"] == name and len(manifest["classes"]) == spec.num_classes
    from pipeline.checkpoints import load_model_file
    assert load_model_file(repo / "models" / "sup" / "model.pt")["num_classes"] == spec.num_classes  # heads sized
    assert load_model_file(repo / "models" / "ref" / "model.pt")["num_classes"] == spec.num_classes
    report = (repo / "reports" / "results.md").read_text()
    assert f"Dataset: **{name}** ({spec.num_classes} classes)" in report
    assert not re.search(r"\| 9\.80 \| 55\.91 \|", report)  # no CIFAR-10 paper numbers beside another dataset
    assert "## Settings and how they were chosen" in report and "held-out tuning" in report  # tune@ ran in the DAG
    assert json.loads((repo / "tune" / "rcs_pca_momentum.json").read_text())["chosen"]["steps"] in (0, 2, 4)
