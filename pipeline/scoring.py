"""The bodies of `cem reference-stats`, `cem score` and `cem check-inception`, from files only.

Each takes the typed sections it reads (the data folder, `ScoreParams`, the samplers' N), loads and
checks every input before a run opens, and returns what its stage writes. The numbers themselves
come from the metrics library (`pipeline.metrics`).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from .errors import CemError
from .metrics import (Judge, ReferenceStats, Space, extract, fid_bootstrap_sd, inception_space, is_bootstrap_sd,
                      json_safe, mean_pairwise_distance, metrics_from_features, read_reference_stats, reference_stats,
                      spaces, write_reference_stats)
from .params import ScoreParams
from .progress import log
from .timing import phase, timed


def reference_images(data_dir: str, sp: ScoreParams, ds=None) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """The FID/KID reference set (prepared training images, optionally a stratified subset) and
    what identifies it (data hash, subset) — recorded in, and checked against, the statistics."""
    from .data import load_dataset, read_manifest, stratified_indices
    ds = ds if ds is not None else load_dataset(data_dir)
    idx = stratified_indices(ds.train.labels, sp.reference_per_class, sp.seed)
    data_hash = read_manifest(data_dir).get("sha256", {}).get("dataset.pt", "")
    ident = {"data_sha256": data_hash, "reference_per_class": sp.reference_per_class, "seed": sp.seed}
    return ds.train.images[idx], ds.train.labels[idx], ident


def control_images(data_dir: str, sp: ScoreParams, n: int, ds=None) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """The control sets (pipeline.controls) at the samplers' N (`sample.defaults.n`), from
    stratified test images and the prepared seed statistics: (set name -> uint8 images, labels)."""
    from .controls import make_control_images
    from .data import load_dataset, load_seeds, stratified_indices
    ds = ds if ds is not None else load_dataset(data_dir)
    k = len(ds.classes)
    per_class = min(max(1, n // k), int(ds.test.labels.bincount(minlength=k).min()))
    idx = stratified_indices(ds.test.labels, per_class, sp.seed)
    labels = ds.test.labels[idx]
    return make_control_images(ds.test.images[idx], labels, load_seeds(data_dir), sp.seed), labels


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


def reference_inputs(data_dir: str, sp: ScoreParams, n: int) -> ReferenceInputs:
    """`n`: the samplers' N (`sample.defaults.n`), the size of the control sets."""
    from .data import load_dataset
    ds = load_dataset(data_dir)
    judge, enabled = spaces(sp)
    images, _, ident = reference_images(data_dir, sp, ds)
    ctrl_images, ctrl_labels = control_images(data_dir, sp, n, ds)
    return ReferenceInputs(judge, enabled, images, ident, ctrl_images, ctrl_labels)


def compute_reference_stats(sp: ScoreParams, inputs: ReferenceInputs, device: torch.device, run=None
                            ) -> tuple[dict, dict]:
    """`cem reference-stats`: statistics of the reference set in every enabled space (npz), then
    each space's controls (controls.json beside them; pipeline.controls says why)."""
    from .controls import CONTROL_SETS, CONTROLS_FILE, FAILED_LINE
    from .files import atomic_write_text
    images, ident, judge, enabled = inputs.images, inputs.ident, inputs.judge, inputs.enabled
    ctrl_images, ctrl_labels = inputs.ctrl_images, inputs.ctrl_labels
    folder = Path(sp.reference_dir)
    computed = []
    for space in enabled:
        with phase(f"reference_{space.name}"):
            stats = reference_stats(space, images, sp.batch_size, device, sp.seed, ident)
        with phase(f"controls_{space.name}"):
            ctrl = space_controls(space, ctrl_images, ctrl_labels, stats, sp.batch_size, sp.kid_subset_size, device)
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


@timed("load")
def score_inputs(name: str, samples_dir: str, data_dir: str, sp: ScoreParams) -> ScoreInputs:
    """The sample folder (complete and of one run: `checked_samples`), the reference images, the
    judge and every enabled space's reference statistics, each refused in one line if wrong."""
    from .files import read_json_file
    folder = Path(samples_dir) / name
    ref_images, ref_labels, ident = reference_images(data_dir, sp)
    images, labels, controls = checked_samples(name, folder, tuple(ref_images.shape[1:]))
    judge, enabled = spaces(sp)
    refs = [(space, read_reference_stats(Path(sp.reference_dir) / f"{space.name}.npz", space, ident))
            for space in enabled]
    return ScoreInputs(name, images, labels, controls, ref_images, ref_labels, judge, refs,
                       read_json_file(folder / "meta.json", "sample meta"),
                       read_json_file(folder / "config.json", "sample config"))


def score_samples(inputs: ScoreInputs, sp: ScoreParams, device: torch.device, run=None) -> dict:
    """Score one sampler's samples and its control rows (both files written by `cem sample`) in
    every enabled space against the precomputed reference statistics."""
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
        with phase(f"score_{space.name}"):  # its extractor's load, features, metrics, bootstrap
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


def check_inception(data_dir: str, sp: ScoreParams, train_per_class: Optional[int], test_per_class: Optional[int], device,
                    batch_size: int = 100) -> dict:
    """Real-data check of the Inception space: FID/KID between prepared train and test images
    (stratified subsets), to set beside the published train-vs-test FID of 3.15 at 50k/10k."""
    from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric
    from torch_fidelity.metric_kid import kid_features_to_metric
    from .data import load_dataset, read_manifest, stratified_indices
    ds = load_dataset(data_dir)
    space = inception_space(sp.inception_weights)
    tr = ds.train.images[stratified_indices(ds.train.labels, train_per_class, sp.seed)]
    te = ds.test.images[stratified_indices(ds.test.labels, test_per_class, sp.seed + 1)]
    f_tr = extract(space, tr, batch_size, device, "check-inception train", layers=("2048",))["2048"]
    f_te = extract(space, te, batch_size, device, "check-inception test", layers=("2048",))["2048"]
    fid = fid_statistics_to_metric(fid_features_to_statistics(f_tr), fid_features_to_statistics(f_te), False)
    kid = kid_features_to_metric(f_tr.float(), f_te.float(), kid_subset_size=min(1000, len(tr), len(te)),
                                 rng_seed=2020, verbose=False)
    return {"fid": fid["frechet_inception_distance"], "kid": kid["kernel_inception_distance_mean"],
            "kid_std": kid["kernel_inception_distance_std"], "n_train": len(tr), "n_test": len(te),
            "published_fid_50k_10k": PUBLISHED_TRAIN_TEST_FID, "extractor": space.extractor,
            "data_source": read_manifest(data_dir).get("source", ""), "device": str(device)}
