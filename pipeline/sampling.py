"""The sampling stage: N samples from one registered sampler, in resumable shards.

Memory is flat in N (one shard in memory at a time); every batch draws from a generator seeded by
(seed, batch index), so output is deterministic and a resumed run is byte-identical to an
uninterrupted one. A folder's `config.json` records the hash of everything that determines the
samples: shards made under another config are discarded, never mixed in.
"""
from __future__ import annotations

import hashlib
import json
import math
import time
from pathlib import Path
from typing import Optional

import torch

from . import distributed
from .checkpoints import build_trained_model, load_model_file, model_run_id
from .data import load_dataset, load_seeds
from .files import atomic_torch_save, atomic_write_text, sha256_file
from .errors import CemError
from .params import ControlParams, ResolvedSamplerParams, RuntimeParams
from .runtime import amp_decision, maybe_compile
from .timing import phase
from .progress import log, progress_bar
from .files import read_json_file
from .sample_files import (CONTROLS_FILE, IMAGE_SHAPE, load_sample_file, load_shards, provenance, shard_expectation,
                           shard_paths, shard_problem)
from .model_kinds import MODEL_KINDS
from .sampler_specs import require_sampler
from .seed_families import hashed_knobs, seed_family
from .samplers import SAMPLERS, SamplingContext, build_bank, generate_batch, seeds_on, to_uint8


def model_path_for(p, name: str) -> Path:
    """The trained model a sampler draws from: supervised AT for classifier samplers, the
    contrastive encoder for the others."""
    require_sampler(name)
    section = MODEL_KINDS[SAMPLERS[name].model_kind].section  # the params section that trains that kind
    return Path(getattr(p, section).out_dir) / "model.pt"


def prepare_context(name: str, rp: ResolvedSamplerParams, model_path: Path, data_dir: str, device,
                    runtime: Optional[RuntimeParams] = None):
    """Model, seeds and (for contrastive samplers) the bank: everything a batch needs."""
    require_sampler(name)
    sampler = SAMPLERS[name]
    blob = load_model_file(model_path)
    if blob["kind"] != sampler.model_kind:
        raise CemError(f"sampler '{name}' needs a {sampler.model_kind} model but {model_path} holds a {blob['kind']}")
    channels_last = runtime is not None and runtime.channels_last
    model = build_trained_model(blob).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    for p in model.parameters():
        p.requires_grad_(False)
    seeds = load_seeds(data_dir)
    num_classes = blob["num_classes"]
    kind = MODEL_KINDS[sampler.model_kind]
    if sampler.conditional and not kind.sampling_bank and num_classes != len(seeds["classes"]):
        raise CemError(f"{model_path} has {num_classes} classes but the prepared data in {data_dir} has "
                       f"{len(seeds['classes'])}: retrain the model on this data (dvc repro does) or prepare its data")
    ctx = SamplingContext(model, rp, num_classes, channels_last=channels_last)
    family = seed_family(rp.seeds)
    ds = load_dataset(data_dir) if kind.sampling_bank or family.needs_training_images else None
    if kind.sampling_bank:
        trained_tau = blob.get("tau")
        if isinstance(trained_tau, float) and trained_tau != rp.tau:  # allowed (an ablation), but said
            log(f"sample {name}: tau {rp.tau:g} differs from the temperature the encoder was trained with "
                f"({trained_tau:g}): f(x, b) = ĝ(x)·ĝ(b)/τ is then not the trained energy")
        bank_z, bank_cond, seeds = build_bank(model, ds.train.images, ds.train.labels, rp, num_classes,
                                              float(seeds["ridge"]), seeds)
        ctx.bank_z, ctx.bank_cond = bank_z.to(device), bank_cond.to(device)
    seeds = family.prepare(seeds, rp, *((ds.train.images, ds.train.labels) if ds is not None else (None, None)))
    if runtime is not None:
        ctx.model = maybe_compile(model, runtime)
    return sampler, ctx, seeds_on(seeds, device), blob


def config_hash(name: str, rp: ResolvedSamplerParams, model_path: Path, data_dir: str, amp: bool = False,
                channels_last: bool = False) -> str:
    """What the shards' bytes depend on: params, model, seeds, and the arithmetic (bf16, memory format)."""
    h = hashlib.sha256()
    params = rp.model_dump()
    if params["momentum"] == 0.0:  # the plain step: the hash (and the shards) of runs before momentum existed
        del params["momentum"]
    params.update(hashed_knobs(params))  # nothing for the Gaussian seeds (the hash of runs before seed families)
    h.update(json.dumps({"sampler": name, **params, **({"amp": "bf16"} if amp else {}),
                         **({"memory_format": "channels_last"} if channels_last else {})},
                        sort_keys=True).encode())
    h.update(sha256_file(model_path).encode())
    h.update(sha256_file(Path(data_dir) / "seeds.pt").encode())
    return h.hexdigest()[:16]


def _reset_if_stale(out: Path, cfg_path: Path, chash: str, name: str, rp: ResolvedSamplerParams,
                    expect: dict) -> None:
    """Discard shards made under another config, and any shard that does not prove it belongs to
    this one (its provenance: sampler, config hash, index, shape); record the current config.
    meta.json goes too: it is rewritten when the folder is complete."""
    old = read_json_file(cfg_path, "sample config") if cfg_path.exists() else None
    if old is not None and old.get("hash") != chash:
        stale = shard_paths(out)
        log(f"sample {name}: discarding {len(stale)} shard(s) made with other params/model")
        for path in stale:
            path.unlink()
    for path in shard_paths(out):
        problem = shard_problem(path, expect)
        if problem:
            log(f"sample {name}: discarding {path.name}: {problem}")
            path.unlink()
    for path in out.glob(".*.tmp*"):
        path.unlink()
    (out / "meta.json").unlink(missing_ok=True)
    atomic_write_text(cfg_path, json.dumps({"hash": chash, "sampler": name, **rp.model_dump()}, indent=2) + "\n")


def run_sampling(name: str, rp: ResolvedSamplerParams, model_path: Path, data_dir: str, out_dir: Path,
                 device, controls: Optional[ControlParams] = None, run=None,
                 runtime: Optional[RuntimeParams] = None) -> dict:
    with phase("load"):
        sampler, ctx, seeds, blob = prepare_context(name, rp, model_path, data_dir, device, runtime)
        model_sha = sha256_file(model_path)
    amp, why = amp_decision(runtime, device) if runtime is not None else (False, "fp32")
    if run is not None:
        run.set_tags({"runtime.amp": why})
    w = distributed.world()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    chash = config_hash(name, rp, model_path, data_dir, amp, ctx.channels_last)
    cfg_path = out / "config.json"
    n_shards = math.ceil(rp.n / rp.shard_size)
    expect = shard_expectation(name, chash, rp.n, rp.shard_size, IMAGE_SHAPE)
    if w.main:
        _reset_if_stale(out, cfg_path, chash, name, rp, expect)
    distributed.barrier()
    per_shard_batches = rp.shard_size // rp.batch_size
    j_sums, generated, t0 = {"first": 0.0, "last": 0.0}, 0, time.perf_counter()
    mine = range(w.rank, n_shards, w.size)  # shard s belongs to rank s mod world size
    with phase("sample"), \
            progress_bar(f"sample {name}", sum(min(rp.shard_size, rp.n - s * rp.shard_size) for s in mine)) as advance:
        for s in mine:
            path = out / f"shard-{s:05d}.pt"
            start_s = s * rp.shard_size
            count_s = min(rp.shard_size, rp.n - start_s)
            if path.exists():
                advance(count_s)
                continue
            images, labels = [], []
            for b in range(per_shard_batches):
                start = start_s + b * rp.batch_size
                count = min(rp.batch_size, rp.n - start)
                if count <= 0:
                    break
                record = {}

                def on_step(t, values, record=record):  # kept on the device: no host sync per step
                    record.setdefault("first", values.sum())
                    record["last"] = values.sum()
                _, x, lab = generate_batch(sampler, ctx, seeds, start, count, s * per_shard_batches + b,
                                           device=device, on_step=on_step, amp=amp)
                j_sums["first"] += float(record.get("first", 0.0))
                j_sums["last"] += float(record.get("last", 0.0))
                images.append(to_uint8(x))
                labels.append(lab)
                generated += count
                advance(count)
            # each shard carries its own objective sums, so meta.json can describe every shard,
            # including those made by an earlier (interrupted) run
            imgs = torch.cat(images)
            atomic_torch_save({"images": imgs, "labels": torch.cat(labels),
                               "objective_first_sum": j_sums["first"], "objective_last_sum": j_sums["last"],
                               "objective_steps": rp.steps,
                               "provenance": provenance(expect, s, imgs, model_sha, rp.seed)}, path)
            j_sums = {"first": 0.0, "last": 0.0}
    elapsed = time.perf_counter() - t0
    distributed.barrier()
    if not w.main:
        return {}
    with phase("controls"):
        write_controls(out, name, sampler, ctx, seeds, rp, controls or ControlParams(), chash, device, amp)
    with phase("grid"):
        grid = write_grid(out, sampler.conditional, ctx.num_classes)
    first, last, counted = _objective_sums(out)
    stats = {
        "sampler": name, "formula": sampler.formula, "n": rp.n, "shards": n_shards,
        "conditional": sampler.conditional, "generated_now": generated,
        "samples_per_second": round(generated / elapsed, 2) if generated else None,
        "objective_first_step_mean": round(first / counted, 4) if counted and rp.steps else None,
        "objective_last_step_mean": round(last / counted, 4) if counted and rp.steps else None,
        "config_hash": chash, "model_run_id": model_run_id(model_path),
        "mlflow_run_id": run.run_id if run else "",
    }
    atomic_write_text(out / "meta.json", json.dumps(stats, indent=2) + "\n")
    if run is not None:
        run.log_metrics({k: v for k, v in stats.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
        run.log_artifact(grid)
        run.log_artifact(out / "meta.json")
    return stats


def _objective_sums(folder: Path) -> tuple[float, float, int]:
    """Objective at the first and last step summed over every shard of the folder, and the count."""
    first = last = 0.0
    count = 0
    for path in shard_paths(folder):
        blob = load_sample_file(path)
        first += float(blob.get("objective_first_sum", 0.0))
        last += float(blob.get("objective_last_sum", 0.0))
        count += len(blob["labels"])
    return first, last, count


# ----------------------------------------------------------------------------- control rows
def write_controls(out: Path, name: str, sampler, ctx, seeds, rp: ResolvedSamplerParams, controls: ControlParams,
                   chash: str, device, amp: bool = False) -> Path:
    """The control rows of docs/science.md §6: the seeds of the first `controls.n` samples, untouched and
    after `controls.steps` sampler steps, drawn exactly as the run drew them (same batch generators).
    Written by the sample stage so that scoring is a pure function of files."""
    path = out / CONTROLS_FILE
    ident = f"{chash}-{controls.n}-{controls.steps}"
    if path.exists():
        try:
            if torch.load(path, weights_only=True).get("ident") == ident:
                return path
        except Exception:
            pass  # unreadable: made again below
    n_ctrl = min(rp.n, controls.n)
    per_shard = rp.shard_size // rp.batch_size
    seeds_u8, stepped_u8, labels = [], [], []
    start = 0
    while start < n_ctrl:
        count = min(rp.batch_size, rp.n - start)
        b = start // rp.batch_size
        shard, within = divmod(b, per_shard)
        x0, xs, lab = generate_batch(sampler, ctx, seeds, start, count, shard * per_shard + within,
                                     steps=controls.steps, device=device, amp=amp)
        seeds_u8.append(to_uint8(x0))
        stepped_u8.append(to_uint8(xs))
        labels.append(lab)
        start += count
    atomic_torch_save({"seeds": torch.cat(seeds_u8)[:n_ctrl], "stepped": torch.cat(stepped_u8)[:n_ctrl],
                       "labels": torch.cat(labels)[:n_ctrl], "steps": controls.steps, "ident": ident}, path)
    return path


GRID_CLASSES = 20


def tile(images: torch.Tensor, per_row: int, padding: int = 2, pad_value: float = 1.0) -> torch.Tensor:
    """torchvision.utils.make_grid(images, nrow=per_row, padding=padding, pad_value=pad_value) for a
    batch of equal-size images (tests/test_samplers.py checks they agree). Written here because importing
    torchvision pulls in torch._dynamo: ~2 s of every sample stage's start-up, for one picture."""
    n, c, h, w = images.shape
    if n == 1:  # make_grid's rule: one image is returned as it is, unpadded
        return images[0]
    cols = min(per_row, n)
    rows = math.ceil(n / cols)
    grid = images.new_full((c, rows * (h + padding) + padding, cols * (w + padding) + padding), pad_value)
    for i in range(n):
        y, x = divmod(i, cols)
        top, left = y * (h + padding) + padding, x * (w + padding) + padding
        grid[:, top:top + h, left:left + w] = images[i]
    return grid


def write_grid(folder: Path, conditional: bool, num_classes: int, per_row: int = 10) -> Path:
    """Sample grid PNG: one row per class for conditional samplers, else the first 100 samples."""
    images, labels = next(load_shards(folder))
    if conditional:  # one row per class, the first GRID_CLASSES classes (CIFAR-100 would need 100 rows)
        rows = [images[labels == c][:per_row] for c in range(min(num_classes, GRID_CLASSES))]
        rows = [torch.cat([r, torch.zeros(per_row - len(r), *r.shape[1:], dtype=r.dtype)]) for r in rows]
        picked = torch.cat(rows)
    else:
        picked = images[:per_row * num_classes]
    grid = tile(picked.float() / 255, per_row)
    grid = torch.nn.functional.interpolate(grid[None], scale_factor=2, mode="nearest")[0]
    path = folder / "grid.png"
    from PIL import Image
    arr = (grid.permute(1, 2, 0).clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    tmp = folder / ".grid.tmp.png"
    Image.fromarray(arr).save(tmp)
    tmp.replace(path)
    return path
