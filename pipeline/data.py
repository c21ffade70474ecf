"""CIFAR-10 preparation: read a source, write uint8 tensors, fit the Gaussian sampler seeds.

Outputs (in `data.out_dir`):
  dataset.pt     uint8 images (N, 3, 32, 32) + int64 labels for train and test, class names
  seeds.pt       float32 mean and covariance factor, per class and overall (docs/science.md §4)
  manifest.json  source, per-class counts, sha256 of the two files, the MLflow run id
"""
from __future__ import annotations

import io
import json
import math
import os
import signal
import sys
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .datasets import DatasetSpec, require_dataset
from .errors import CemError
from .files import atomic_torch_save, atomic_write_text, sha256_file
from .progress import progress_bar
from .rng import draw_device
from .timing import phase, timed

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
OFFLINE_HINT = ("point data.source at a local copy, e.g. "
                "`cem prepare --source ../shared/data/cifar10-jpeg.tar.gz` "
                "(an ImageFolder directory or .tar/.tar.gz with train/<class>/* and test/<class>/*)")


@dataclass
class Split:
    images: torch.Tensor  # uint8 (N, 3, 32, 32)
    labels: torch.Tensor  # int64 (N,)


@dataclass
class Dataset:
    train: Split
    test: Split
    classes: list[str]


# ----------------------------------------------------------------------------- sources
MAX_MEMBER_BYTES = 1 << 20
"""A CIFAR image file is a few KB: a larger archive member is refused before it is read."""
MAX_TOTAL_BYTES = 512 << 20
"""All image files of a source together: CIFAR-10 is ~90 MB as JPEG, ~150 MB as PNG. A source past
this is refused while it is read (before its images are decoded), so an archive of thousands of
members at the per-member cap cannot fill the memory."""


def _capped(entries: Iterable[tuple[str, str, str, bytes]], origin) -> Iterable[tuple[str, str, str, bytes]]:
    total = 0
    for entry in entries:
        total += len(entry[3])
        if total > MAX_TOTAL_BYTES:
            raise CemError(f"data source {origin}: its images exceed {MAX_TOTAL_BYTES:,} bytes in all (at "
                           f"{entry[2]}); an image dataset of this kind needs far less: refusing it")
        yield entry


def _decode(blob: bytes, name: str) -> np.ndarray:
    """Decode one 32x32 image; the size is checked from the header *before* pixels are decoded, so a
    decompression bomb is refused without being expanded."""
    try:
        with Image.open(io.BytesIO(blob)) as img:
            if img.size != (32, 32):
                raise CemError(f"image {name} is {img.size[0]}x{img.size[1]}, expected 32x32")
            arr = np.asarray(img.convert("RGB"))
    except CemError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError, SyntaxError) as exc:
        raise CemError(f"corrupt image in data source: {name} ({exc.__class__.__name__})") from None
    return arr


DECODE_CHUNK = 2000
"""Images per task of the parallel decode: a few hundred ms of work, so the pool's overhead is small."""


def _decode_chunk(items: list[tuple[str, bytes]]) -> np.ndarray:
    return np.stack([_decode(blob, name) for name, blob in items])


def _start_decoder() -> None:
    """A decode worker leaves Ctrl-C and SIGTERM to the stage, which stops the pool, and dies with the
    stage even by SIGKILL (forked workers share the task pipe, so none would see it close)."""
    from .interrupts import end_with_parent
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    end_with_parent(signal.SIGKILL)


def _decode_all(items: list[tuple[str, bytes]], split: str) -> np.ndarray:
    """Decode in worker processes, one per core this process may use, in order; pixels do not depend on
    how many there are. Decoding is ~60 % of reading CIFAR-10 (8.6 of ~14 s on one Xeon core) and
    `cem prepare` heads the DAG, so a many-core GPU host waits on it. Linux only (fork: the workers
    start in milliseconds and need nothing sent but the bytes); elsewhere, or for a small subset, here."""
    chunks = [items[i:i + DECODE_CHUNK] for i in range(0, len(items), DECODE_CHUNK)]
    workers = min(len(os.sched_getaffinity(0)), len(chunks)) if sys.platform.startswith("linux") else 1
    with progress_bar(f"prepare: decode {split}", len(items)) as advance:
        def counted(decoded: Iterable[np.ndarray]) -> np.ndarray:
            done = []
            for images in decoded:
                done.append(images)
                advance(len(images))
            return np.concatenate(done)
        if workers < 2:
            return counted(map(_decode_chunk, chunks))
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor
        pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"), initializer=_start_decoder)
        try:
            return counted(pool.map(_decode_chunk, chunks))
        finally:  # a corrupt image or Ctrl-C: the chunks not yet started are dropped, not decoded first
            pool.shutdown(wait=True, cancel_futures=True)


def _assemble(entries: Iterable[tuple[str, str, str, bytes]], origin: str,
              per_class: dict[str, Optional[int]], seed: int) -> Dataset:
    """entries: (split, class, member name, bytes), sorted by name for a deterministic order. The
    stratified subset is chosen before decoding, so a small subset decodes only what it keeps."""
    by_split: dict[str, dict[str, list[tuple[str, bytes]]]] = {"train": {}, "test": {}}
    for split, cls, name, blob in entries:
        by_split[split].setdefault(cls, []).append((name, blob))
    for split in ("train", "test"):
        if not by_split[split]:
            raise CemError(f"{origin}: no images under {split}/<class>/; {OFFLINE_HINT}")
    classes = sorted(by_split["train"])
    if sorted(by_split["test"]) != classes:
        raise CemError(f"{origin}: train/ and test/ hold different class folders")
    splits = {}
    for split in ("train", "test"):
        items = [(label, item) for label, cls in enumerate(classes) for item in sorted(by_split[split][cls])]
        labels = torch.tensor([label for label, _ in items], dtype=torch.int64)
        keep = stratified_indices(labels, per_class[split], seed + (split == "test"))
        images = _decode_all([items[i][1] for i in keep.tolist()], split)
        arr = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
        splits[split] = Split(arr, labels[keep])
    return Dataset(splits["train"], splits["test"], classes)


def _split_class(parts: list[str]) -> Optional[tuple[str, str]]:
    """Find `.../(train|test)/<class>/<file>` in a path's parts."""
    if len(parts) < 3 or not parts[-1].lower().endswith(IMAGE_SUFFIXES):
        return None
    split, cls = parts[-3], parts[-2]
    if split not in ("train", "test"):
        return None
    return split, cls


def _check_member(member: tarfile.TarInfo, links: set[str], origin: Path) -> None:
    """Python's `tarfile` data filter (no absolute paths, no `..`, no links leaving the archive,
    no special files), plus: nothing under a link, and a size cap. One line naming the member."""
    try:
        renamed = tarfile.data_filter(member, "/nonexistent-cem-root").name != member.name
    except tarfile.FilterError as exc:
        raise CemError(f"archive {origin}: unsafe member {member.name!r} ({exc.__class__.__name__}); "
                       "refusing the archive") from None
    if renamed:  # the filter strips a leading '/': an absolute path is refused, not reinterpreted
        raise CemError(f"archive {origin}: unsafe member {member.name!r} (absolute path); refusing the archive")
    parts = member.name.split("/")
    for i in range(1, len(parts)):
        if "/".join(parts[:i]) in links:
            raise CemError(f"archive {origin}: member {member.name!r} lies under the link "
                           f"{'/'.join(parts[:i])!r}; refusing the archive")
    if member.isfile() and member.size > MAX_MEMBER_BYTES:
        raise CemError(f"archive {origin}: member {member.name!r} is {member.size} bytes, more than the "
                       f"{MAX_MEMBER_BYTES} an image may have; refusing the archive")


def _read_tar(path: Path, per_class, seed) -> Dataset:
    def entries():
        links: set[str] = set()
        try:
            with tarfile.open(path, "r:*") as tar:
                for member in tar:
                    _check_member(member, links, path)
                    if member.issym() or member.islnk():
                        links.add(member.name.rstrip("/"))
                    if not member.isfile():
                        continue
                    found = _split_class(member.name.split("/"))
                    if found:
                        yield found[0], found[1], member.name, tar.extractfile(member).read()
        except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
            raise CemError(f"cannot read archive {path}: {exc.__class__.__name__}; "
                           "is it a complete .tar/.tar.gz?") from None
    return _assemble(_capped(entries(), path), str(path), per_class, seed)


def _read_dir(path: Path, per_class, seed) -> Dataset:
    def entries():
        for file in sorted(path.rglob("*")):
            rel = file.relative_to(path)
            if file.is_symlink():
                raise CemError(f"data source {path}: {rel} is a symbolic link; refusing links in an image folder")
            if file.is_file():
                found = _split_class(list(rel.parts))
                if found:
                    if file.stat().st_size > MAX_MEMBER_BYTES:
                        raise CemError(f"data source {path}: {rel} is {file.stat().st_size} bytes, more than "
                                       f"the {MAX_MEMBER_BYTES} an image may have")
                    yield found[0], found[1], str(rel), file.read_bytes()
    return _assemble(_capped(entries(), path), str(path), per_class, seed)


def _read_torchvision(spec: DatasetSpec, download_dir: Path, per_class, seed) -> Dataset:
    import torchvision.datasets
    cls = getattr(torchvision.datasets, spec.torchvision)
    splits, names = {}, spec.classes
    try:
        for split in ("train", "test"):
            kw = {"train": split == "train"} if spec.split_style == "train_flag" else {"split": split}
            ds = cls(str(download_dir / spec.name), download=True, **kw)
            images = torch.from_numpy(ds.data)
            if images.shape[-1] == spec.channels:  # HWC (CIFAR) -> CHW; SVHN is CHW already
                images = images.permute(0, 3, 1, 2)
            labels = ds.targets if hasattr(ds, "targets") else ds.labels
            full = Split(images.contiguous(), torch.as_tensor(labels, dtype=torch.int64))
            splits[split] = subset(full, per_class[split], seed + (split == "test"))
            names = names or tuple(getattr(ds, "classes", ()))
    except Exception as exc:  # network errors come in many classes (URLError, socket, ssl, ...)
        raise CemError(f"could not download {spec.name} with torchvision ({exc.__class__.__name__}); "
                       f"{OFFLINE_HINT}") from None
    return Dataset(splits["train"], splits["test"], list(names))


def read_source(source: str, download_dir: str | Path = "data/raw", train_per_class: Optional[int] = None,
                test_per_class: Optional[int] = None, seed: int = 0, name: str = "cifar10") -> Dataset:
    """Read dataset `name` (pipeline/datasets.py) from a source and take the stratified deterministic
    subset (None: everything). A local source must hold the dataset's number of classes."""
    spec = require_dataset(name)
    per_class = {"train": train_per_class, "test": test_per_class}
    if source == "torchvision":
        return _read_torchvision(spec, Path(download_dir), per_class, seed)
    path = Path(source)
    if not path.exists():
        raise CemError(f"data source not found: {source}; {OFFLINE_HINT}")
    if path.is_dir():
        ds = _read_dir(path, per_class, seed)
    elif not path.is_file() or path.stat().st_size == 0:
        raise CemError(f"data source {source} is empty or not a regular file; {OFFLINE_HINT}")
    else:
        ds = _read_tar(path, per_class, seed)
    if len(ds.classes) != spec.num_classes:
        raise CemError(f"data source {source} holds {len(ds.classes)} class folders, but data.name '{name}' has "
                       f"{spec.num_classes} classes: set data.name to the dataset it holds")
    return ds


# ----------------------------------------------------------------------------- subsets
def stratified_indices(labels: torch.Tensor, per_class: Optional[int], seed: int) -> torch.Tensor:
    """A deterministic class-balanced subset (sorted indices); all indices when per_class is None."""
    if per_class is None:
        return torch.arange(len(labels))
    gen = torch.Generator().manual_seed(seed)
    chosen = []
    for c in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == c).flatten()
        if len(idx) < per_class:
            raise CemError(f"class {c} has only {len(idx)} images, fewer than the {per_class} asked for")
        chosen.append(idx[torch.randperm(len(idx), generator=gen)[:per_class]])
    return torch.cat(chosen).sort().values


def subset(split: Split, per_class: Optional[int], seed: int) -> Split:
    idx = stratified_indices(split.labels, per_class, seed)
    return Split(split.images[idx], split.labels[idx])


# ----------------------------------------------------------------------------- seed statistics
def gaussian_factor(images: torch.Tensor, ridge: float,
                    moments: Optional[tuple[int, torch.Tensor, torch.Tensor]] = None
                    ) -> tuple[torch.Tensor, torch.Tensor, float]:
    """N(μ, Σ + ridge·I) of flattened [0,1] images as (μ, F, s) with F Fᵀ + s²·I = Σ + ridge·I.

    F is the *principal* factor: orthogonal columns V_j √λ_j sorted by decreasing variance λ_j, each
    sign-fixed (its largest entry positive, so the factor does not depend on LAPACK's sign choice).
    Any factor draws the same Gaussian; this one also serves the `pca` seed family by slicing its first
    columns, so the float64 eigendecomposition is paid once in `cem prepare` instead of in every stage
    that samples from PCA seeds (~4 s per 3072² matrix on 2 CPU cores, 11 of them).
    With at least 3072 images it comes from Σ + ridge·I and s = 0. With fewer, Σ has rank < 3072 and F
    comes from the thin SVD of the centred data / √(n−1) (Σ = F Fᵀ exactly), s = √ridge: the same
    distribution in far less space (subsets used by tests, the smoke profile, k-means clusters).
    `moments`: the images' (n, μ, scatter) when already known (`pooled_moments`), for the full branch."""
    if moments is None:
        n, d = len(images), images[0].numel()
        if n - 1 < d:
            x = images.reshape(n, -1).to(torch.float64) / 255.0
            mean = x.mean(0)
            u, sv, _ = torch.linalg.svd((x - mean).T / math.sqrt(max(n - 1, 1)), full_matrices=False)
            return mean, _sign_fixed(u * sv), math.sqrt(ridge)
        moments = image_moments(images)
    n, mean, scatter = moments
    cov = scatter / (n - 1)
    cov.diagonal().add_(ridge)
    w, v = torch.linalg.eigh(cov)  # ascending
    if float(w[0]) <= 0 or not torch.isfinite(w).all():
        raise CemError("seed covariance is not positive definite; raise data.cov_ridge")
    return mean, _sign_fixed(v.flip(1) * w.flip(0).sqrt()), 0.0


def image_moments(images: torch.Tensor) -> tuple[int, torch.Tensor, torch.Tensor]:
    """(n, μ, S) of flattened [0,1] images in float64, S = Σ (x − μ)(x − μ)ᵀ (the scatter matrix)."""
    x = images.reshape(len(images), -1).to(torch.float64) / 255.0
    mean = x.mean(0)
    xc = x - mean
    return len(x), mean, xc.T @ xc


def pooled_moments(groups: list[tuple[int, torch.Tensor, torch.Tensor]]) -> tuple[int, torch.Tensor, torch.Tensor]:
    """The moments of the union of disjoint groups from the groups' own: S = Σ S_c + Σ n_c (μ_c − μ)(μ_c − μ)ᵀ
    (within- plus between-group scatter). The overall seed Gaussian then costs no second pass over the
    training set: on CIFAR-10 that pass is a 50,000 × 3072² float64 product, ~10 s on 2 CPU cores."""
    n = sum(g[0] for g in groups)
    counts = torch.tensor([float(g[0]) for g in groups], dtype=torch.float64)
    means = torch.stack([g[1] for g in groups])
    mean = (counts[:, None] * means).sum(0) / n
    shift = means - mean
    scatter = (shift.T * counts) @ shift
    for g in groups:
        scatter += g[2]
    return n, mean, scatter


def _sign_fixed(factor: torch.Tensor) -> torch.Tensor:
    """Each column times the sign of its largest-magnitude entry (eigenvectors are defined up to sign)."""
    pick = factor.abs().argmax(0)
    sign = torch.sign(factor.gather(0, pick[None]))
    sign[sign == 0] = 1
    return factor * sign


SEED_FACTORS = "principal"
"""Marks a seeds.pt whose factors are principal (gaussian_factor); older files held Cholesky factors,
which draw the same Gaussian but which the `pca` seed family cannot slice."""


def fit_seeds(train: Split, num_classes: int, ridge: float) -> dict:
    """Class-conditional and unconditional Gaussian seeds (docs/science.md §4), float32."""
    def fit(images, moments=None):
        m, f, s = gaussian_factor(images, ridge, moments)
        return {"mean": m.float(), "factor": f.float(), "iso_std": float(s)}
    dim = train.images[0].numel()
    groups = [train.images[train.labels == c] for c in range(num_classes)]
    # every class on the full branch: their scatters give the overall one (pooled_moments)
    pooled = all(len(g) > dim for g in groups)
    moments, classes = [], []
    with progress_bar("prepare: seed Gaussians", num_classes + 1) as advance:
        for g in groups:
            moments.append(image_moments(g) if pooled else None)
            classes.append(fit(g, moments[-1]))
            advance()
        overall = fit(train.images, pooled_moments(moments) if pooled else None)
        advance()
    return {"classes": classes, "all": overall, "ridge": float(ridge), "factors": SEED_FACTORS}


def draw_seeds(seeds: dict, n: int, gen: torch.Generator, condition: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Sample n seed images in [0,1] (3, 32, 32): from class `condition[i]`'s Gaussian, or from the
    unconditional one when `condition` is None. Drawn on the generator's device (the statistics
    are moved there if they are not already); `condition` is read on the host, where the groups are
    formed (pass it on the CPU to keep a GPU run free of syncs)."""
    dev = draw_device(gen, seeds["all"]["mean"])
    out = torch.empty(n, 3 * 32 * 32, device=dev)
    condition = condition.cpu() if condition is not None else None
    groups = [(None, torch.arange(n, device=dev))] if condition is None else \
        [(c, torch.nonzero(condition == c).flatten().to(dev)) for c in torch.unique(condition).tolist()]
    for c, idx in groups:
        g = seeds["all"] if c is None else seeds["classes"][c]
        factor, mean = g["factor"].to(dev), g["mean"].to(dev)
        z = torch.randn(len(idx), factor.shape[1], generator=gen, device=dev)
        x = mean + z @ factor.T
        if g["iso_std"] > 0:
            x += g["iso_std"] * torch.randn(len(idx), x.shape[1], generator=gen, device=dev)
        out[idx] = x
    return out.clamp_(0, 1).view(n, 3, 32, 32)


@timed("load")
def load_dataset(out_dir: str | Path) -> Dataset:
    path = Path(out_dir) / "dataset.pt"
    if not path.exists():
        raise CemError(f"prepared data not found at {path}; run `cem prepare` first")
    try:
        blob = torch.load(path, weights_only=True)
        return Dataset(Split(blob["train_images"], blob["train_labels"]),
                       Split(blob["test_images"], blob["test_labels"]), list(blob["classes"]))
    except Exception as exc:
        raise CemError(f"{path} is not a dataset written by `cem prepare` ({exc.__class__.__name__})") from None


@timed("load")
def load_seeds(out_dir: str | Path) -> dict[str, torch.Tensor]:
    path = Path(out_dir) / "seeds.pt"
    if not path.exists():
        raise CemError(f"seed statistics not found at {path}; run `cem prepare` first")
    try:
        seeds = torch.load(path, weights_only=True)
    except Exception as exc:
        raise CemError(f"{path} is not a seed file written by `cem prepare` ({exc.__class__.__name__})") from None
    if not isinstance(seeds, dict) or seeds.get("factors") != SEED_FACTORS:
        raise CemError(f"{path} was written by an older `cem prepare` (its seed factors are not principal "
                       f"components); run `cem prepare` again (`dvc repro` does)")
    return seeds


def read_manifest(out_dir: str | Path) -> dict:
    path = Path(out_dir) / "manifest.json"
    if not path.exists():
        return {}
    from .files import read_json_file
    return read_json_file(path, "prepare manifest")


def load_and_fit(source: str, download_dir: str, train_per_class: Optional[int], test_per_class: Optional[int],
                 ridge: float, seed: int, name: str = "cifar10") -> tuple[Dataset, dict]:
    """Read the source and fit the seeds: all the work and every check of the source, before the
    stage opens an MLflow run or writes anything."""
    with phase("read"):
        ds = read_source(source, download_dir, train_per_class, test_per_class, seed, name)
    with phase("fit_seeds"):
        return ds, fit_seeds(ds.train, len(ds.classes), ridge)


@timed("write")
def write_prepared(ds: Dataset, seeds: dict, source: str, out_dir: str, train_per_class: Optional[int],
                   test_per_class: Optional[int], seed: int, run_id: str = "", name: str = "cifar10") -> dict:
    train, test = ds.train, ds.test
    out = Path(out_dir)
    atomic_torch_save({"train_images": train.images, "train_labels": train.labels,
                       "test_images": test.images, "test_labels": test.labels,
                       "classes": list(ds.classes)}, out / "dataset.pt")
    atomic_torch_save(seeds, out / "seeds.pt")
    manifest = {
        "dataset": name,
        "source": source,
        "classes": list(ds.classes),
        "train_per_class": {c: int((train.labels == i).sum()) for i, c in enumerate(ds.classes)},
        "test_per_class": {c: int((test.labels == i).sum()) for i, c in enumerate(ds.classes)},
        "n_train": len(train.labels), "n_test": len(test.labels),
        "subset": {"train_per_class": train_per_class, "test_per_class": test_per_class, "seed": seed},
        "sha256": {"dataset.pt": sha256_file(out / "dataset.pt"), "seeds.pt": sha256_file(out / "seeds.pt")},
        "mlflow_run_id": run_id,
    }
    atomic_write_text(out / "manifest.json", json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest
