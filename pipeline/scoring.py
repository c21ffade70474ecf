"""IS / FID / KID through torch-fidelity, in two feature spaces (science.md §6).

* `classifier`: the pipeline's reference classifier registered as a torch-fidelity feature
  extractor (penultimate features for FID/KID, logits for IS). Works offline; comparable only
  between runs with the same judge (its sha256 is recorded and is part of the extractor name).
* `inception`: torch-fidelity's `inception-v3-compat`, when its weights are on disk (torch hub
  cache or a path). When they are not, the metrics say `unavailable`; no number is invented.

torch-fidelity's feature cache keys ignore weights and data, so every cached input is named after
the extractor identity and the data hash.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import torch
from torch.utils.data import Dataset as TorchDataset

from .checkpoints import build_trained_model, load_model_file
from .data import sha256_file
from .errors import CemError

INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
_JUDGES: dict[str, torch.nn.Module] = {}


class UInt8Images(TorchDataset):
    """torch-fidelity input: items must be bare uint8 tensors (3, H, W)."""

    def __init__(self, images: torch.Tensor):
        if images.dtype != torch.uint8:
            raise ValueError("UInt8Images needs uint8 images")
        self.images = images

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i]


def _make_extractor_class():
    from torch_fidelity.feature_extractor_base import FeatureExtractorBase

    class ClassifierFeatures(FeatureExtractorBase):
        """A trained classifier as torch-fidelity feature extractor: 'features' (penultimate) and
        'logits'. The instance looks its network up by its registered name."""

        def __init__(self, name, features_list, **kwargs):
            super().__init__(name, features_list)
            self.net = _JUDGES[name]

        @staticmethod
        def get_provided_features_list():
            return "features", "logits"

        @staticmethod
        def get_default_feature_layer_for_metric(metric):
            return {"isc": "logits", "fid": "features", "kid": "features", "prc": "features"}[metric]

        @staticmethod
        def can_be_compiled():
            return False

        @staticmethod
        def get_dummy_input_for_compile():
            return torch.zeros(1, 3, 32, 32, dtype=torch.uint8)

        def forward(self, x):
            x = x.float() / 255.0
            feats = self.net.features(x)
            logits = self.net.head(feats)
            out = {"features": feats.double(), "logits": logits.double()}
            return tuple(out[name] for name in self.features_list)

    return ClassifierFeatures


class Judge:
    """The reference classifier that scores samples, registered once per weights hash."""

    def __init__(self, model_path: Path, device: torch.device):
        blob = load_model_file(model_path)
        if blob["kind"] != "classifier":
            raise CemError(f"the judge {model_path} must be a classifier, not a {blob['kind']} model")
        self.sha256 = sha256_file(model_path)
        self.name = f"cem-judge-{self.sha256[:12]}"
        self.device = device
        self.net = build_trained_model(blob).to(device).eval()
        self.run_id = blob.get("mlflow_run_id", "")
        from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY, register_feature_extractor
        _JUDGES[self.name] = self.net
        if self.name not in FEATURE_EXTRACTORS_REGISTRY:
            register_feature_extractor(self.name, _make_extractor_class())

    @torch.no_grad()
    def predict(self, images: torch.Tensor, batch_size: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
        """(penultimate features, predicted class) for uint8 images."""
        feats, preds = [], []
        for i in range(0, len(images), batch_size):
            x = images[i:i + batch_size].to(self.device).float() / 255
            f = self.net.features(x)
            feats.append(f.cpu())
            preds.append(self.net.head(f).argmax(1).cpu())
        return torch.cat(feats), torch.cat(preds)


def inception_weights(explicit: Optional[str]) -> Optional[str]:
    """Path to the Inception weights if on disk, else None (offline machines have none)."""
    if explicit:
        if not Path(explicit).exists():
            raise CemError(f"score.inception_weights: file not found: {explicit}")
        return explicit
    from torch.hub import get_dir
    path = Path(get_dir()) / "checkpoints" / INCEPTION_FILE
    return str(path) if path.exists() else None


def fidelity(samples: torch.Tensor, reference: torch.Tensor, reference_name: str, extractor: str,
             kid_subset_size: int, batch_size: int, cuda: bool, cache_root: str,
             weights_path: Optional[str] = None) -> dict:
    """IS, FID, KID of uint8 samples against uint8 reference images via calculate_metrics."""
    import torch_fidelity
    kwargs = {}
    if weights_path:
        kwargs["feature_extractor_weights_path"] = weights_path
    if len(samples) < 2:
        raise CemError("need at least 2 samples to score")
    res = torch_fidelity.calculate_metrics(
        input1=UInt8Images(samples), input2=UInt8Images(reference),
        input2_cache_name=f"{reference_name}-{extractor}", cache_root=cache_root, cache=True,
        isc=True, fid=True, kid=True, feature_extractor=extractor,
        kid_subset_size=min(kid_subset_size, len(samples), len(reference)),
        isc_splits=min(10, len(samples)), batch_size=batch_size, cuda=cuda, verbose=False,
        samples_shuffle=True, rng_seed=2020, **kwargs)  # shuffled (seeded): IS splits must mix classes
    return {"is": float(res["inception_score_mean"]), "is_std": float(res["inception_score_std"]),
            "fid": float(res["frechet_inception_distance"]),
            "kid": float(res["kernel_inception_distance_mean"]),
            "kid_std": float(res["kernel_inception_distance_std"])}


def mean_pairwise_distance(feats: torch.Tensor, groups: Optional[torch.Tensor] = None, cap: int = 2000) -> float:
    """Diversity: mean pairwise L2 feature distance, within each group (conditional) or overall."""
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
    return float(torch.stack(vals).mean()) if vals else float("nan")


def fidelity_cache_root() -> str:
    return os.environ.get("CEM_FIDELITY_CACHE", ".cache/fidelity")


# ----------------------------------------------------------------------------- the score stage
def _row(judge: Judge, images: torch.Tensor, labels: torch.Tensor, reference: torch.Tensor, ref_name: str,
         sp, cuda: bool) -> dict:
    """One table row in classifier space: IS/FID/KID, target accuracy, diversity."""
    row = fidelity(images, reference, ref_name, judge.name, sp.kid_subset_size, sp.batch_size, cuda,
                   fidelity_cache_root())
    feats, preds = judge.predict(images)
    conditional = bool((labels >= 0).any())
    if conditional:
        row["target_acc"] = 100.0 * float((preds == labels).float().mean())
    row["diversity"] = mean_pairwise_distance(feats, labels if conditional else None)
    row["n"] = len(images)
    return row


def score_samples(name: str, p, device: torch.device, run=None) -> dict:
    """Score one sampler's samples; add the control rows (seeds; seeds after a few steps)."""
    from .data import load_dataset, read_manifest, stratified_indices
    from .progress import log
    from .samplers import generate_batch, to_uint8
    from .sampling import load_shards, model_path_for, prepare_context
    sp = p.score
    rp = p.sample.resolved(name)
    folder = Path(p.sample.out_dir) / name
    parts = list(load_shards(folder))
    images = torch.cat([i for i, _ in parts])
    labels = torch.cat([l for _, l in parts])
    ds = load_dataset(p.data.out_dir)
    idx = stratified_indices(ds.train.labels, sp.reference_per_class, sp.seed)
    reference = ds.train.images[idx]
    data_hash = read_manifest(p.data.out_dir).get("sha256", {}).get("dataset.pt", "nohash")
    ref_name = f"train-{data_hash[:12]}-{len(idx)}"
    judge = Judge(Path(sp.judge), device)
    cuda = device.type == "cuda"

    out = {"sampler": name, "n": len(images), "judge_sha256": judge.sha256, "judge_run_id": judge.run_id,
           "reference_images": len(reference)}
    out["classifier"] = _row(judge, images, labels, reference, ref_name, sp, cuda)
    conditional = bool((labels >= 0).any())
    real_feats, _ = judge.predict(reference[:len(images)])
    out["real_diversity"] = mean_pairwise_distance(real_feats, ds.train.labels[idx][:len(images)]
                                                   if conditional else None)

    # control rows: the very seeds of the first batches, and those seeds after `control_steps` steps
    n_ctrl = min(len(images), sp.control_n)
    sampler, ctx, seeds, _ = prepare_context(name, rp, model_path_for(p, name), p.data.out_dir, device)
    per_shard = rp.shard_size // rp.batch_size
    seeds_u8, stepped_u8, ctrl_labels = [], [], []
    start = 0
    while start < n_ctrl:
        count = min(rp.batch_size, rp.n - start)
        b = start // rp.batch_size
        shard, within = divmod(b, per_shard)
        x0, xs, lab = generate_batch(sampler, ctx, seeds, start, count, shard * per_shard + within,
                                     steps=sp.control_steps, device=device)
        seeds_u8.append(to_uint8(x0))
        stepped_u8.append(to_uint8(xs))
        ctrl_labels.append(lab)
        start += count
    ctrl_labels = torch.cat(ctrl_labels)[:n_ctrl]
    out["control_seeds"] = _row(judge, torch.cat(seeds_u8)[:n_ctrl], ctrl_labels, reference, ref_name, sp, cuda)
    out[f"control_steps{sp.control_steps}"] = _row(judge, torch.cat(stepped_u8)[:n_ctrl], ctrl_labels,
                                                    reference, ref_name, sp, cuda)

    if sp.inception:
        weights = inception_weights(sp.inception_weights)
        if weights is None:
            log(f"score {name}: inception: unavailable (no {INCEPTION_FILE} in the torch hub cache; "
                "set score.inception_weights to a local copy)")
            out["inception"] = "unavailable"
        else:
            out["inception"] = fidelity(images, reference, ref_name, "inception-v3-compat",
                                        sp.kid_subset_size, sp.batch_size, cuda, fidelity_cache_root(), weights)
    else:
        out["inception"] = "disabled"
    if run is not None:
        from .tracking import flatten
        flat = {k: float(v) for k, v in flatten(out).items() if _is_number(v)}
        run.log_metrics({k: v for k, v in flat.items() if not k.endswith("sha256")})
    return out


def _is_number(v: str) -> bool:
    try:
        float(v)
        return v not in ("nan", "inf")
    except ValueError:
        return False
