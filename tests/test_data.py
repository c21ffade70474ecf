"""`cem prepare`: sources, subsets, seed statistics, manifest, determinism, clear errors."""
import json

import pytest
import torch

from pipeline import data
from pipeline.errors import CemError
from tests.conftest import SHARED_ARCHIVE, cem, class_colour, tiny_params, write_params


def _prepare(tmp_path, source, **data_section):
    tmp_path.mkdir(parents=True, exist_ok=True)
    raw = tiny_params(tmp_path, source, data=data_section)
    return cem("prepare", "--params", str(write_params(tmp_path, raw))), tmp_path / "data"


def test_folder_and_tar_give_identical_bytes(tmp_path, image_folder, image_tar):
    _, a = _prepare(tmp_path / "a", image_folder)
    _, b = _prepare(tmp_path / "b", image_tar)
    for name in ("dataset.pt", "seeds.pt"):
        assert data.sha256_file(a / name) == data.sha256_file(b / name)
    ds = data.load_dataset(a)
    assert ds.train.images.shape == (200, 3, 32, 32) and ds.train.images.dtype == torch.uint8
    assert ds.test.images.shape == (100, 3, 32, 32)
    assert torch.bincount(ds.train.labels).tolist() == [20] * 10


def _decode_with(monkeypatch, cores: int, source):
    """read_source with `cores` usable cores and 7-image decode tasks; returns the dataset and how many
    worker pools decoded it."""
    import concurrent.futures
    pools = []

    class CountedPool(concurrent.futures.ProcessPoolExecutor):
        def __init__(self, *args, **kwargs):
            pools.append(args)
            super().__init__(*args, **kwargs)
    monkeypatch.setattr(data, "DECODE_CHUNK", 7)
    monkeypatch.setattr(data.os, "sched_getaffinity", lambda pid: set(range(cores)), raising=False)
    monkeypatch.setattr(concurrent.futures, "ProcessPoolExecutor", CountedPool)
    return data.read_source(str(source), "unused"), len(pools)


def test_decoding_in_worker_processes_gives_the_same_pixels(monkeypatch, image_tar):
    one, pools_one = _decode_with(monkeypatch, 1, image_tar)
    many, pools_many = _decode_with(monkeypatch, 3, image_tar)
    assert (pools_one, pools_many) == (0, 2)  # train and test each decoded by a pool of workers
    for a, b in ((one.train, many.train), (one.test, many.test)):
        assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)


def test_a_corrupt_image_decoded_in_a_worker_is_one_line(monkeypatch, tmp_path, image_folder):
    import shutil
    folder = shutil.copytree(image_folder, tmp_path / "imgs")
    (folder / "train" / "c3" / "0013.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 64)
    with pytest.raises(CemError, match=r"corrupt image in data source: train/c3/0013.png"):
        _decode_with(monkeypatch, 2, folder)


def test_prepare_shows_its_progress_to_the_end(monkeypatch, image_tar):
    """On a terminal, `cem prepare` draws a bar for each split's decode and for the seed Gaussians."""
    from contextlib import contextmanager
    bars = {}

    @contextmanager
    def recorded(description, total):
        bars[description] = [0, total]
        yield lambda n=1, **_: bars[description].__setitem__(0, bars[description][0] + n)
    monkeypatch.setattr(data, "progress_bar", recorded)
    data.load_and_fit(str(image_tar), "unused", None, None, 1e-4, 0)
    assert bars == {"prepare: decode train": [200, 200], "prepare: decode test": [100, 100],
                    "prepare: seed Gaussians": [11, 11]}


def test_decode_workers_die_with_a_killed_stage(tmp_path):
    """`kill -9` of a stage that is decoding leaves no worker behind (forked workers share the task
    pipe, so none would see it close and each would wait for work forever)."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from tests.conftest import ROOT
    code = ("import os, time\n"
            "from pipeline import data\n"
            "data.DECODE_CHUNK = 1\n"
            "os.sched_getaffinity = lambda pid: {0, 1}\n"
            "data._decode = lambda blob, name: time.sleep(60)\n"
            "data._decode_all([('a', b''), ('b', b''), ('c', b'')], 'train')\n")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT)
    try:
        deadline = time.time() + 60
        workers: list[int] = []
        while time.time() < deadline and len(workers) < 2:
            time.sleep(0.1)
            workers = [int(pid) for pid in subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True,
                                                          text=True).stdout.split()]
        assert len(workers) == 2, workers
        time.sleep(0.5)  # the workers have run their start-up and are decoding
        proc.kill()
        proc.wait()
        deadline = time.time() + 10
        while time.time() < deadline and any(_running(pid) for pid in workers):
            time.sleep(0.1)
        assert not any(_running(pid) for pid in workers)
    finally:
        proc.kill()
        for pid in workers:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _running(pid: int) -> bool:
    try:
        return open(f"/proc/{pid}/stat").read().split()[2] != "Z"
    except OSError:
        return False


def test_rerun_is_byte_identical_and_manifest_complete(tmp_path, image_folder):
    _, out = _prepare(tmp_path, image_folder, train_per_class=10)
    first = {n: data.sha256_file(out / n) for n in ("dataset.pt", "seeds.pt")}
    _, out = _prepare(tmp_path, image_folder, train_per_class=10)
    assert first == {n: data.sha256_file(out / n) for n in ("dataset.pt", "seeds.pt")}
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["sha256"] == first
    assert manifest["train_per_class"] == {f"c{i}": 10 for i in range(10)}
    assert manifest["n_test"] == 100 and manifest["mlflow_run_id"]


def test_stratified_subset_is_balanced_and_deterministic():
    labels = torch.arange(1000) % 10
    a = data.stratified_indices(labels, 7, seed=3)
    assert torch.equal(a, data.stratified_indices(labels, 7, seed=3))
    assert torch.bincount(labels[a]).tolist() == [7] * 10
    assert not torch.equal(a, data.stratified_indices(labels, 7, seed=4))


def test_seed_gaussians_reproduce_class_statistics():
    """Low-rank branch (n < 3072) and full branch agree with the empirical covariance, and both factors
    are principal: orthogonal columns, sorted by decreasing variance, each with its largest entry
    positive (what the `pca` seed family slices)."""
    gen = torch.Generator().manual_seed(0)
    for n in (50, 3200):
        imgs = (torch.rand(n, 3, 32, 32, generator=gen) * 255).round().to(torch.uint8)
        mean, factor, iso = data.gaussian_factor(imgs, ridge=1e-4)
        x = imgs.reshape(n, -1).double() / 255
        cov = torch.cov(x.T)
        rebuilt = factor @ factor.T + (iso ** 2) * torch.eye(3072, dtype=torch.float64)
        rebuilt.diagonal().sub_(1e-4)  # both branches represent Σ + ridge·I
        assert torch.allclose(mean, x.mean(0), atol=1e-10)
        assert torch.allclose(rebuilt, cov, atol=1e-8)
        assert (iso > 0) == (n - 1 < 3072)
        gram = factor.T @ factor
        norms = gram.diagonal()
        assert torch.allclose(gram - torch.diag(norms), torch.zeros_like(gram), atol=1e-10)
        assert (norms[:-1] >= norms[1:] - 1e-12).all()
        big = factor.abs().argmax(0)
        assert (factor.gather(0, big[None]) > 0).all()


def test_overall_seed_gaussian_pools_the_class_moments():
    """fit_seeds builds the overall Gaussian from the class scatters (within- plus between-class), with
    no second pass over the training set: it must be the Gaussian fitted to all images directly."""
    gen = torch.Generator().manual_seed(1)
    imgs = (torch.rand(180, 3, 4, 4, generator=gen) * 255).round().to(torch.uint8)  # 48 dims: full branch
    labels = torch.arange(180) % 3
    imgs[labels == 1] //= 3  # class means apart: the between-class term matters
    n, mean, scatter = data.pooled_moments([data.image_moments(imgs[labels == c]) for c in range(3)])
    n0, mean0, scatter0 = data.image_moments(imgs)
    assert n == n0 == 180
    assert torch.allclose(mean, mean0, atol=1e-12) and torch.allclose(scatter, scatter0, rtol=1e-10, atol=1e-9)
    seeds = data.fit_seeds(data.Split(imgs, labels), 3, 1e-4)
    m, f, s = data.gaussian_factor(imgs, 1e-4)
    assert s == seeds["all"]["iso_std"] == 0.0
    got = seeds["all"]["factor"]
    assert torch.allclose(seeds["all"]["mean"], m.float(), atol=1e-6)
    assert torch.allclose(got @ got.T, (f @ f.T).float(), atol=1e-5)
    for c in range(3):  # the class Gaussians: as fitted one by one
        fc = data.gaussian_factor(imgs[labels == c], 1e-4)[1].float()
        assert torch.equal(seeds["classes"][c]["factor"], fc)


def test_class_seeds_have_the_class_mean_colour(prepared):
    tmp, _ = prepared
    seeds = data.load_seeds(tmp / "data")
    gen = torch.Generator().manual_seed(0)
    for c in (0, 3, 7):
        x = data.draw_seeds(seeds, 200, gen, torch.full((200,), c))
        colour = x.mean(dim=(0, 2, 3)).numpy()
        assert abs(colour - class_colour(c)).max() < 0.03, (c, colour, class_colour(c))


def test_missing_source_names_the_fix(tmp_path):
    proc = cem("prepare", "--params", str(write_params(tmp_path, tiny_params(tmp_path, tmp_path / "nope.tar.gz"))),
               check=False)
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1 and "data source not found" in proc.stderr and "--source" in proc.stderr
    assert not (tmp_path / "data").exists()


def test_corrupt_archive_is_one_line(tmp_path, image_tar):
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(image_tar.read_bytes()[:5000])
    proc = cem("prepare", "--params", str(write_params(tmp_path, tiny_params(tmp_path, bad))), check=False)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1
    assert "cannot read archive" in proc.stderr
    assert not (tmp_path / "data").exists()


def test_offline_torchvision_source_points_at_a_local_copy(tmp_path, monkeypatch):
    import torchvision.datasets

    def offline(*args, **kwargs):
        raise OSError("no route to host")
    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    with pytest.raises(CemError, match="could not download cifar10 with torchvision.*local copy"):
        data.read_source("torchvision", tmp_path)


@pytest.mark.skipif(not SHARED_ARCHIVE.exists(), reason="needs ../shared/data/cifar10-jpeg.tar.gz (CI and dev machines)")
def test_shared_archive_is_complete_and_fits_full_rank_seeds():
    """The offline copy: 50,000 / 10,000 images, 5,000 / 1,000 per class, and a class's principal seed
    factor on the full branch (5,000 real images > 3,072 dims). One class is fitted, not all 11 (~60 s):
    the pooled overall Gaussian and the full branch are checked against direct fits above."""
    ds = data.read_source(str(SHARED_ARCHIVE))
    assert len(ds.train.labels) == 50000 and len(ds.test.labels) == 10000
    assert set(ds.train.labels.bincount().tolist()) == {5000} and set(ds.test.labels.bincount().tolist()) == {1000}
    assert ds.classes[0] == "airplane" and ds.classes[-1] == "truck"
    assert ds.train.images.shape[1:] == (3, 32, 32) and ds.train.images.dtype == torch.uint8
    _, f, iso = data.gaussian_factor(ds.train.images[ds.train.labels == 0], 1e-4)
    assert f.shape == (3072, 3072) and iso == 0.0
    norms = f.pow(2).sum(0)
    assert (norms[:-1] >= norms[1:] * (1 - 1e-9)).all() and norms[-1] > 0  # principal, and Σ + ridge·I is full rank


def test_a_seed_file_from_before_principal_factors_is_refused_in_one_line(prepared, tmp_path):
    """seeds.pt of an older `cem prepare` held Cholesky factors: they draw the same Gaussian, but the `pca`
    seed family would slice them as if they were principal components. Refused, with the fix."""
    tmp, _ = prepared
    old = data.load_seeds(tmp / "data")
    old.pop("factors")
    (tmp_path / "d").mkdir()
    torch.save(old, tmp_path / "d" / "seeds.pt")
    with pytest.raises(CemError, match="older `cem prepare`.*run `cem prepare` again"):
        data.load_seeds(tmp_path / "d")
