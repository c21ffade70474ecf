"""The training loop shared by the three trainings (docs/science.md §3): schedule, optimizer, atomic
checkpoints, bit-identical resume, evaluation cadence, outputs. What a step *is* lives in
`recipes` (supervised PGD-AT / standard training, contrastive AT).

Determinism: every random draw of optimizer step s (batch order, augmentation, attack start) comes
from a generator seeded by (seed, s), so a run resumed at step s draws exactly what an
uninterrupted run would have drawn there. Under torchrun every rank makes the draws of the whole
global batch and keeps its rows, so N processes see the images, crops and attack starts that one
process sees (with `runtime.sync_bn` the supervised training then matches one process up to
floating-point reduction order; tests/test_distributed.py).
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import nn

from . import distributed, rng
from .checkpoints import load_checkpoint, restore_rng, save_checkpoint, write_lineage
from .data import Dataset
from .files import atomic_torch_save, atomic_write_text
from .errors import CemError, DivergenceError
from .params import OptimParams, SupervisedParams, UnsupervisedParams, section_hash
from .timing import phase
from .progress import log, progress_bar
from .recipes import ContrastiveRecipe, SupervisedRecipe
from .runtime import setup_runtime


LOG_EVERY = 10
"""Steps between MLflow metric rows (and, on a GPU, between reads of the loss)."""


def step_generator(seed: int, step: int, device=None) -> torch.Generator:
    """The generator of optimizer step `step` (negative: the epoch's batch order), on `device`."""
    return rng.generator(seed * 1_000_003 + step, device)


def lr_factor(optim: OptimParams, progress: float) -> float:
    """lr / optim.lr at `progress` (0..1) of training. Every schedule rises linearly over the first
    `warmup_frac` (large-batch GPU runs with linearly scaled lr need it); then triangle falls
    linearly to 0, step multiplies by gamma at each milestone, constant holds."""
    w = optim.warmup_frac
    if optim.schedule == "triangle":
        return progress / w if progress < w else max(0.0, (1 - progress) / (1 - w))
    warm = progress / w if progress < w else 1.0
    if optim.schedule == "constant":
        return warm
    return warm * optim.gamma ** sum(progress >= m for m in optim.milestones)


def make_optimizer(model: nn.Module, optim: OptimParams, total_steps: int):
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.dim() > 1 else no_decay).append(p)
    opt = torch.optim.SGD([{"params": decay, "weight_decay": optim.weight_decay},
                           {"params": no_decay, "weight_decay": 0.0}],
                          lr=optim.lr, momentum=optim.momentum, nesterov=optim.nesterov)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(optim, s / max(total_steps, 1)))
    return opt, sched


# ----------------------------------------------------------------------------- evaluation
# ----------------------------------------------------------------------------- the loop
@dataclass
class LoopSpec:
    """What differs between the three trainings; the loop, checkpointing and eval are shared."""
    stage: str
    model: nn.Module
    train_step: Callable[[torch.Tensor, torch.Tensor, torch.Generator, slice], tuple[torch.Tensor, dict]]
    """(global batch images, labels, the step's generator, this rank's rows) -> (loss on those rows, metrics)"""
    evaluate: Callable[[bool], dict]
    optim: OptimParams
    seed: int
    n_train: int
    params_hash: str
    checkpoint_every: int
    eval_every: int
    out_dir: Path
    metrics_dir: Path
    section: str
    history: list = field(default_factory=list)


def check_fits(section, n_train: int, name: str) -> None:
    """Cross-field checks that need the data, made before any MLflow run is opened."""
    bs = section.optim.batch_size
    if bs > n_train:
        raise CemError(f"{name}.optim.batch_size {bs} exceeds the {n_train} prepared training images")
    size = distributed.world().size
    if bs % size:
        raise CemError(f"{name}.optim.batch_size {bs} is not divisible by the {size} torchrun processes")


def run_loop(spec: LoopSpec, data: Dataset, device: torch.device, run, resume: Optional[Path],
             restart: bool) -> dict:
    """The training loop the three trainings share (checkpoint, resume, eval, divergence stop)."""
    bs = spec.optim.batch_size
    steps_per_epoch = spec.n_train // bs
    if steps_per_epoch == 0:
        raise CemError(f"{spec.stage}: batch_size {bs} exceeds the {spec.n_train} training images")
    total = max(1, math.ceil(spec.optim.epochs * steps_per_epoch))
    opt, sched = make_optimizer(spec.model, spec.optim, total)
    ckpt_dir = spec.out_dir / "checkpoints"
    ckpt_path = ckpt_dir / f"ckpt-{spec.params_hash}.pt"
    start = 0
    if resume is not None or (ckpt_path.exists() and not restart):
        src = resume or ckpt_path
        ckpt = load_checkpoint(src, spec.params_hash)
        spec.model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        restore_rng(ckpt)
        start = int(ckpt["step"])
        spec.history = list(ckpt["history"])
        run.set_tags({"resumed_from_step": start, "resumed_from_run": ckpt["mlflow_run_id"]})
        log(f"{spec.stage}: resuming from {src} at step {start}/{total}")
    spec.model.train()
    w = distributed.world()
    per_rank = bs // w.size
    rows = slice(w.rank * per_rank, (w.rank + 1) * per_rank)  # this rank's rows of every global batch
    # On a GPU the whole uint8 training set lives on the device (150 MB for CIFAR-10), every random draw
    # (batch order, crops, flips, SimCLR views, attack starts) is made there by a generator on the device,
    # and the loop reads the loss back only every `sync_every` steps (a host sync stalls the GPU): the
    # step loop moves nothing between host and device. On a CPU reading the loss is free, so every step
    # is checked, and the CPU generators draw what they always drew (bit-identical runs).
    resident = device.type == "cuda"
    images = data.train.images.to(device) if resident else data.train.images
    labels = data.train.labels.to(device) if resident else data.train.labels
    sync_every = 1 if device.type == "cpu" else LOG_EVERY
    perm_epoch, perm = -1, None
    t0, seen = time.perf_counter(), 0
    first_step_s, first_seen = 0.0, 0

    def curve_point(done: int, last: bool) -> dict:
        """Evaluate, append the point to the curve and log it (`last`: the final point, after the loop)."""
        ev = spec.evaluate(last)
        spec.history.append({"step": done, "epoch": round(done / steps_per_epoch, 3), "train_loss": loss.item(), **ev})
        run.log_metrics({f"eval_{k}": v for k, v in ev.items()}, step=done)
        return ev
    with phase("loop"), progress_bar(spec.stage, total - start) as advance:
        for step in range(start, total):
            epoch, pos = divmod(step, steps_per_epoch)
            if epoch != perm_epoch:
                perm = torch.randperm(len(labels), generator=step_generator(spec.seed, -1 - epoch, device),
                                      device=device)
                perm_epoch = epoch
            idx = perm[pos * bs:(pos + 1) * bs]
            gen = step_generator(spec.seed, step, device)  # the same on every rank: draws are for the global batch
            loss, metrics = spec.train_step(images[idx], labels[idx], gen, rows)
            done = step + 1
            checkpoint_now = done % spec.checkpoint_every == 0 and done != total
            eval_now = done % spec.eval_every == 0 and done != total
            if step % sync_every == 0 or step == total - 1 or checkpoint_now or eval_now:
                if not torch.isfinite(loss):
                    raise DivergenceError(f"{spec.stage}: loss became {loss.item()} at epoch {epoch} step {step}"
                                          f"{'' if sync_every == 1 else ' (checked every ' + str(sync_every) + ' steps)'}"
                                          "; lower the learning rate")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            seen += len(idx)
            if step == start:  # compilation and cuDNN autotuning happen here: timed apart from the rest
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                first_step_s, first_seen = time.perf_counter() - t0, seen
            if step % LOG_EVERY == 0 or step == total - 1:
                run.log_metrics({"train_loss": loss.item(), "lr": sched.get_last_lr()[0],
                                 **{k: float(v) for k, v in metrics.items()}}, step=step)
            if step % sync_every == 0:
                advance(sync_every if sync_every > 1 else 1, loss=loss.item())
            if eval_now and w.main:
                ev = curve_point(done, False)
                log(f"{spec.stage}: step {done}/{total} " + " ".join(f"{k}={v:.2f}" for k, v in ev.items()))
            if checkpoint_now and w.main:
                save_checkpoint(ckpt_path, model=spec.model, optimizer=opt, scheduler=sched, step=done,
                                epoch=epoch, params_hash=spec.params_hash, run_id=run.run_id,
                                history=spec.history)
    elapsed = time.perf_counter() - t0
    if not w.main:
        return {}
    with phase("last_eval"):  # the curve's last point (the final evaluation is `cem evaluate`'s)
        curve_point(total, True)
    rest = elapsed - first_step_s
    return {"total_steps": total, "train_seconds": elapsed,
            "images_per_second": seen / elapsed if elapsed > 0 else 0.0, "ckpt_path": ckpt_path,
            "first_step_seconds": first_step_s,
            "images_per_second_after_first_step": (seen - first_seen) / rest if rest > 0 and seen > first_seen else 0.0}


# ----------------------------------------------------------------------------- outputs
def write_outputs(spec: LoopSpec, result: dict, model_blob: dict, run, extra_metrics: dict) -> dict:
    """model.pt and curve.png (out_dir); <stage>.json and <stage>_history.json (metrics_dir, for
    `dvc metrics show` / `dvc plots show`); then drop the checkpoint."""
    out = spec.out_dir
    mdir = spec.metrics_dir
    metrics = {**extra_metrics,
               "steps": result["total_steps"], "train_seconds": round(result["train_seconds"], 1),
               "images_per_second": round(result["images_per_second"], 1),
               **{k: round(result[k], 2) for k in ("first_step_seconds", "images_per_second_after_first_step")
                  if k in result}}
    metrics_path, history_path = mdir / f"{spec.section}.json", mdir / f"{spec.section}_history.json"
    atomic_torch_save(model_blob, out / "model.pt")  # no run id inside: identical work, identical bytes
    write_lineage(out / "model.pt", run.run_id, spec.stage)
    atomic_write_text(history_path, json.dumps(spec.history, indent=1) + "\n")
    _plot_history(spec.history, out / "curve.png", spec.stage)
    atomic_write_text(metrics_path, json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    run.log_metrics({f"final_{k}": v for k, v in metrics.items() if isinstance(v, (int, float))})
    run.log_artifact(out / "model.pt", artifact_path="model")
    for path in (metrics_path, history_path, out / "curve.png"):
        run.log_artifact(path)
    result["ckpt_path"].unlink(missing_ok=True)
    return metrics


def _plot_history(history: list[dict], path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=110)
    steps = [h["step"] for h in history]
    for key, style in (("clean_acc", "-o"), ("robust_acc", "-s")):
        vals = [h.get(key) for h in history]
        if any(v is not None for v in vals):
            ax.plot(steps, vals, style, ms=3, label=key.replace("_", " "))
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)


CALIBRATION_PER_CLASS = 500
"""Training images per class on which the judge's softmax temperature is fitted."""


@torch.no_grad()
def calibrate_temperature(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, device,
                          batch_size: int = 500) -> float:
    """The judge's softmax temperature, fitted on these images (no augmentation, eval mode). A
    judge trained with label smoothing is under-confident; its IS is only a meaningful number (and
    the IS of real images a meaningful ceiling) once its probabilities are calibrated."""
    from .evaluation import to_float
    was = model.training
    model.eval()
    logits = torch.cat([model(to_float(images[i:i + batch_size], device, False)).double().cpu()
                        for i in range(0, len(labels), batch_size)])
    model.train(was)
    return fit_temperature(logits, labels)


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """T minimising the NLL of softmax(logits / T): golden-section search over log T in [log 0.05,
    log 20], float64, a fixed number of steps (deterministic on every machine)."""
    logits = logits.double()

    def nll(log_t: float) -> float:
        return float(torch.nn.functional.cross_entropy(logits / math.exp(log_t), labels))
    lo, hi = math.log(0.05), math.log(20.0)
    g = (math.sqrt(5) - 1) / 2
    a, b = hi - g * (hi - lo), lo + g * (hi - lo)
    fa, fb = nll(a), nll(b)
    for _ in range(80):
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - g * (hi - lo)
            fa = nll(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + g * (hi - lo)
            fb = nll(b)
    return round(math.exp((lo + hi) / 2), 6)


def _train(p, recipe, stage: str, section: str, data: Dataset, device, run, resume, restart, metrics_dir,
           data_hash: str, calibrate: bool = False) -> dict:
    """Any recipe through the shared loop; the checkpoint identity is the params section (less
    runtime) + the data hash. Returns the final metrics (empty on ranks other than 0)."""
    run.set_tags({"runtime.amp": recipe.amp_reason})
    spec = LoopSpec(stage, recipe.model, recipe.train_step, recipe.evaluate, p.optim, p.seed, len(data.train.labels),
                    section_hash(p, exclude=("runtime",)) + data_hash[:8], p.checkpoint_every,
                    p.eval.every_steps, Path(p.out_dir), Path(metrics_dir), section)
    result = run_loop(spec, data, device, run, resume, restart)
    if not result:
        return {}
    extra = {}
    blob = recipe.model_blob(run.run_id, spec.params_hash)
    if calibrate:  # the judge: its IS reads calibrated probabilities (scoring divides logits by T)
        from .data import stratified_indices
        from .evaluation import EVAL_SEED
        per_class = min(CALIBRATION_PER_CLASS, int(data.train.labels.bincount().min()))
        idx = stratified_indices(data.train.labels, per_class, EVAL_SEED)
        blob["temperature"] = extra["temperature"] = calibrate_temperature(
            recipe.model, data.train.images[idx], data.train.labels[idx], device)
        log(f"{stage}: softmax temperature {blob['temperature']:.3f} (NLL-calibrated on {len(idx)} training images)")
    from .model_kinds import MODEL_KINDS
    if MODEL_KINDS[recipe.kind].probe_curves:  # the curves plot the linear probe's accuracies
        spec.history = [{**h, "clean_acc": h.get("probe_clean_acc", h.get("clean_acc")),
                         "robust_acc": h.get("probe_robust_acc", h.get("robust_acc"))} for h in spec.history]
    return write_outputs(spec, result, blob, run, extra)


def train_supervised(p: SupervisedParams, data: Dataset, run, stage: str, section: str, metrics_dir: Path,
                     resume: Optional[Path] = None, restart: bool = False, data_hash: str = "",
                     calibrate: bool = False, source_model=None) -> dict:
    """PGD-AT (Madry); with attack.eps = 0 it is standard training (the reference classifier). With
    `source: robustbench:<name>` a public robust model takes the place of training."""
    if p.source != "train":
        return import_supervised(p, data, run, stage, section, metrics_dir, source_model)
    device = setup_runtime(p.runtime)
    return _train(p, SupervisedRecipe(p, data, device), stage, section, data, device, run, resume, restart,
                  metrics_dir, data_hash, calibrate)


def import_supervised(p: SupervisedParams, data: Dataset, run, stage: str, section: str, metrics_dir: Path,
                      source_model=None) -> dict:
    """A RobustBench zoo model as the supervised samplers' classifier, written to the same outputs as a
    trained one (and evaluated like one, by `cem evaluate sup`), with its origin in the model file and in
    MLflow (tags source, source.sha256). Its curve is one point: the training-time evaluation."""
    from types import SimpleNamespace

    from . import model_sources
    from .data import stratified_indices
    from .files import sha256_file
    from .evaluation import EVAL_SEED, evaluate
    device = setup_runtime(p.runtime)
    name = model_sources.robustbench_name(p.source)
    if len(data.classes) != 10:
        raise CemError(f"{stage}: RobustBench CIFAR-10 models need the 10 CIFAR-10 classes, the data has "
                       f"{len(data.classes)}")
    t0 = time.perf_counter()
    # (model, checkpoint path), loaded by the stage before its run opened, or loaded here
    model, ckpt = source_model or model_sources.load(name, Path(p.out_dir) / "robustbench")
    model = model.to(device)
    run.set_tags({"source": p.source, "source.checkpoint": str(ckpt), "source.sha256": sha256_file(ckpt)})
    idx = stratified_indices(data.test.labels, p.eval.epoch_per_class, EVAL_SEED)
    point = evaluate(model, data.test.images[idx], data.test.labels[idx], p.eval_attack, p.eval.epoch_attack_steps,
                     p.eval.batch_size, device, False)
    blob = {"kind": "classifier", "arch": {"name": "robustbench", "model": name, "threat_model": "L2"},
            "num_classes": 10, "state_dict": {k: v.cpu() for k, v in model.state_dict().items()},
            "params_hash": section_hash(p, exclude=("runtime",)),
            "classes": data.classes, "source": p.source, "threat_model": p.eval_attack.model_dump()}
    spec = SimpleNamespace(out_dir=Path(p.out_dir), metrics_dir=Path(metrics_dir), section=section, stage=stage,
                           history=[{"step": 0, "epoch": 0.0, **point}])
    result = {"total_steps": 0, "train_seconds": time.perf_counter() - t0, "images_per_second": 0.0,
              "ckpt_path": Path(p.out_dir) / "checkpoints" / "none"}
    return write_outputs(spec, result, blob, run, {"source": p.source})


def train_unsupervised(p: UnsupervisedParams, data: Dataset, run, stage: str, section: str, metrics_dir: Path,
                       resume: Optional[Path] = None, restart: bool = False, data_hash: str = "") -> dict:
    """Contrastive AT (recipes.ContrastiveRecipe)."""
    device = setup_runtime(p.runtime)
    return _train(p, ContrastiveRecipe(p, data, device, stage), stage, section, data, device, run, resume, restart,
                  metrics_dir, data_hash)
