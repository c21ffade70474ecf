"""Adversarial training (science.md §3): supervised PGD-AT, standard training (ε = 0, the
reference classifier) and unsupervised contrastive AT, with evaluation, atomic checkpoints and
bit-identical resume.

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
import torch.nn.functional as F
from torch import nn

from . import augment, distributed
from .attacks import ascend, frozen, pgd, random_init, threat_model
from .checkpoints import load_checkpoint, restore_rng, save_checkpoint
from .data import Dataset, atomic_torch_save, atomic_write_text, stratified_indices
from .energies import nt_xent
from .errors import CemError, DivergenceError
from .models import ContrastiveModel, LinearProbe, build_classifier
from .params import (AttackParams, EvalParams, OptimParams, RuntimeParams, SupervisedParams,
                     UnsupervisedParams, section_hash)
from .progress import log, progress_bar

EVAL_SEED = 12345


# ----------------------------------------------------------------------------- runtime
def setup_runtime(runtime: RuntimeParams) -> torch.device:
    if runtime.threads:
        torch.set_num_threads(runtime.threads)
    if runtime.device == "cuda" and not torch.cuda.is_available():
        raise CemError("runtime.device is 'cuda' but no CUDA device is available")
    use_cuda = runtime.device == "cuda" or (runtime.device == "auto" and torch.cuda.is_available())
    w = distributed.init("cuda" if use_cuda else "cpu")
    if use_cuda:
        torch.backends.cudnn.benchmark = not runtime.deterministic
        torch.backends.cudnn.deterministic = runtime.deterministic
        torch.backends.cuda.matmul.allow_tf32 = not runtime.deterministic
        torch.backends.cudnn.allow_tf32 = not runtime.deterministic
    return torch.device(f"cuda:{w.local_rank}" if use_cuda else "cpu")


def wrap_ddp(model: nn.Module, runtime: RuntimeParams, device: torch.device) -> nn.Module:
    """The module the training loss goes through: DDP under torchrun, else the model itself."""
    if not distributed.world().distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel
    if runtime.sync_bn and device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    elif runtime.sync_bn:  # torch's SyncBatchNorm refuses CPU tensors
        model = distributed.convert_cpu_sync_batchnorm(model)
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def step_generator(seed: int, step: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + step)


def to_float(images: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    x = images.to(device, non_blocking=True).float().div_(255)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def lr_factor(optim: OptimParams, progress: float) -> float:
    if optim.schedule == "constant":
        return 1.0
    if optim.schedule == "step":
        return optim.gamma ** sum(progress >= m for m in optim.milestones)
    w = optim.warmup_frac
    return progress / w if progress < w else max(0.0, (1 - progress) / (1 - w))


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
def attack_kwargs(attack: AttackParams, steps: int) -> dict:
    step_size = attack.step_size if attack.step_size is not None else 2.5 * attack.eps / max(steps, 1)
    return dict(norm=attack.norm, eps=attack.eps, steps=steps, step_size=step_size, random_start=True)


@torch.no_grad()
def _predict(model, x):
    return model(x).argmax(1)


def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, attack: AttackParams,
             steps: int, batch_size: int, device: torch.device, channels_last: bool) -> dict:
    """Clean and PGD-`steps` accuracy (%); the attack starts from a fixed random point."""
    was_training = model.training
    model.eval()
    gen = torch.Generator().manual_seed(EVAL_SEED)
    clean = robust = 0
    for i in range(0, len(labels), batch_size):
        x = to_float(images[i:i + batch_size], device, channels_last)
        y = labels[i:i + batch_size].to(device)
        clean += (_predict(model, x) == y).sum().item()
        if attack.eps > 0 and steps > 0:
            xa = pgd(model, x, y, generator=gen, **attack_kwargs(attack, steps))
            robust += (_predict(model, xa) == y).sum().item()
    model.train(was_training)
    n = len(labels)
    out = {"clean_acc": 100.0 * clean / n}
    if attack.eps > 0 and steps > 0:
        out["robust_acc"] = 100.0 * robust / n
    return out


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
    if bs % w.size:
        raise CemError(f"{spec.stage}: optim.batch_size {bs} is not divisible by the {w.size} torchrun processes")
    per_rank = bs // w.size
    rows = slice(w.rank * per_rank, (w.rank + 1) * per_rank)  # this rank's rows of every global batch
    images, labels = data.train.images, data.train.labels
    perm_epoch, perm = -1, None
    t0, seen = time.perf_counter(), 0
    with progress_bar(spec.stage, total - start) as advance:
        for step in range(start, total):
            epoch, pos = divmod(step, steps_per_epoch)
            if epoch != perm_epoch:
                perm = torch.randperm(len(labels), generator=step_generator(spec.seed, -1 - epoch))
                perm_epoch = epoch
            idx = perm[pos * bs:(pos + 1) * bs]
            gen = step_generator(spec.seed, step)  # the same on every rank: draws are made for the global batch
            loss, metrics = spec.train_step(images[idx], labels[idx], gen, rows)
            if not torch.isfinite(loss):
                raise DivergenceError(f"{spec.stage}: loss became {loss.item()} at epoch {epoch} step {step}; "
                                      "lower the learning rate")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            seen += len(idx)
            if step % 10 == 0 or step == total - 1:
                run.log_metrics({"train_loss": loss.item(), "lr": sched.get_last_lr()[0], **metrics}, step=step)
            advance(loss=loss.item())
            done = step + 1
            if done % spec.eval_every == 0 and done != total and w.main:
                ev = spec.evaluate(False)
                row = {"step": done, "epoch": round(done / steps_per_epoch, 3), "train_loss": loss.item(), **ev}
                spec.history.append(row)
                run.log_metrics({f"eval_{k}": v for k, v in ev.items()}, step=done)
                log(f"{spec.stage}: step {done}/{total} " + " ".join(f"{k}={v:.2f}" for k, v in ev.items()))
            if done % spec.checkpoint_every == 0 and done != total and w.main:
                save_checkpoint(ckpt_path, model=spec.model, optimizer=opt, scheduler=sched, step=done,
                                epoch=epoch, params_hash=spec.params_hash, run_id=run.run_id,
                                history=spec.history)
    elapsed = time.perf_counter() - t0
    if not w.main:
        return {}
    final = spec.evaluate(True)
    spec.history.append({"step": total, "epoch": round(total / steps_per_epoch, 3), "train_loss": loss.item(),
                         **{k: v for k, v in final.items() if k in ("clean_acc", "robust_acc")}})
    return {"final": final, "total_steps": total, "train_seconds": elapsed,
            "images_per_second": seen / elapsed if elapsed > 0 else 0.0, "ckpt_path": ckpt_path}


# ----------------------------------------------------------------------------- outputs
def write_outputs(spec: LoopSpec, result: dict, model_blob: dict, run, extra_metrics: dict) -> dict:
    """model.pt and curve.png (out_dir); <stage>.json and <stage>_history.json (metrics_dir, for
    `dvc metrics show` / `dvc plots show`); then drop the checkpoint."""
    out = spec.out_dir
    mdir = spec.metrics_dir
    final = result["final"]
    metrics = {**{k: round(v, 4) for k, v in final.items()}, **extra_metrics,
               "steps": result["total_steps"], "train_seconds": round(result["train_seconds"], 1),
               "images_per_second": round(result["images_per_second"], 1)}
    metrics_path, history_path = mdir / f"{spec.section}.json", mdir / f"{spec.section}_history.json"
    atomic_torch_save(model_blob, out / "model.pt")
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


def _train(p, stage, section, model, train_step, evaluate_fn, data, device, run, resume, restart, metrics_dir,
           data_hash) -> tuple[LoopSpec, dict]:
    """Both trainers: the checkpoint identity is the params section (less runtime) + the data hash."""
    spec = LoopSpec(stage, model, train_step, evaluate_fn, p.optim, p.seed, len(data.train.labels),
                    section_hash(p, exclude=("runtime",)) + data_hash[:8], p.checkpoint_every,
                    p.eval.every_steps, Path(p.out_dir), Path(metrics_dir), section)
    return spec, run_loop(spec, data, device, run, resume, restart)


# ----------------------------------------------------------------------------- supervised
def train_supervised(p: SupervisedParams, data: Dataset, run, stage: str, section: str, metrics_dir: Path,
                     resume: Optional[Path] = None, restart: bool = False, data_hash: str = "") -> dict:
    """PGD-AT (Madry); with attack.eps = 0 it is standard training (the reference classifier)."""
    device = setup_runtime(p.runtime)
    torch.manual_seed(p.seed)
    num_classes = len(data.classes)
    model = build_classifier(p.arch, num_classes).to(device)
    cl = p.runtime.channels_last
    if cl:
        model = model.to(memory_format=torch.channels_last)
    trainee = wrap_ddp(model, p.runtime, device)
    adversarial = p.attack.eps > 0 and p.attack.steps > 0 or (p.attack.kind == "fgsm_rs" and p.attack.eps > 0)
    step_size = p.attack.resolved_step_size()
    amp = p.runtime.amp and device.type == "cuda"

    random_start = p.attack.random_start or p.attack.kind == "fgsm_rs"
    threat = threat_model(p.attack.norm, p.attack.eps)

    def train_step(xb, yb, gen, rows):
        x = to_float(xb, device, cl)
        if p.augment:
            x = augment.crop_flip(x, gen)
        start = random_init(threat, x, gen)[rows] if adversarial and random_start else None
        x, y = x[rows], yb[rows].to(device)
        if adversarial:
            model.eval()
            steps = 1 if p.attack.kind == "fgsm_rs" else p.attack.steps
            x = pgd(model, x, y, p.attack.norm, p.attack.eps, steps, step_size, random_start=False, init=start)
            model.train()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            logits = trainee(x)
        loss = F.cross_entropy(logits.float(), y, label_smoothing=p.optim.label_smoothing)
        return loss, {"train_acc": (logits.argmax(1) == y).float().mean().item() * 100}

    test_idx_epoch = stratified_indices(data.test.labels, p.eval.epoch_per_class, EVAL_SEED)
    test_idx_final = stratified_indices(data.test.labels, p.eval.test_per_class, EVAL_SEED)

    def evaluate_fn(final: bool) -> dict:
        idx = test_idx_final if final else test_idx_epoch
        steps = p.eval.attack_steps if final else p.eval.epoch_attack_steps
        res = evaluate(model, data.test.images[idx], data.test.labels[idx], p.eval_attack, steps,
                       p.eval.batch_size, device, cl)
        if final:
            res["eval_images"] = len(idx)
        return res

    if p.eval_attack.eps == 0 and p.attack.eps > 0:
        raise CemError(f"{stage}: eval_attack.eps is 0 but the model is trained adversarially")
    spec, result = _train(p, stage, section, model, train_step, evaluate_fn, data, device, run, resume, restart,
                          metrics_dir, data_hash)
    if not result:
        return {}
    blob = {"kind": "classifier", "arch": p.arch.model_dump(), "num_classes": num_classes,
            "state_dict": {k: v.cpu() for k, v in model.state_dict().items()},
            "mlflow_run_id": run.run_id, "params_hash": spec.params_hash, "classes": data.classes}
    extra = {"eval_attack": f"{p.eval_attack.norm} eps={p.eval_attack.eps:.4g} PGD-{p.eval.attack_steps}"}
    return write_outputs(spec, result, blob, run, extra)


# ----------------------------------------------------------------------------- unsupervised
def train_unsupervised(p: UnsupervisedParams, data: Dataset, run, stage: str, section: str, metrics_dir: Path,
                       resume: Optional[Path] = None, restart: bool = False, data_hash: str = "") -> dict:
    """Contrastive AT (non-parametric CEM): PGD perturbs the views to maximise NT-Xent; the loss is
    clean_weight·NT-Xent(clean) + adv_weight·NT-Xent(adversarial) (ACL's dual-stream reading)."""
    device = setup_runtime(p.runtime)
    torch.manual_seed(p.seed)
    model = ContrastiveModel(p.arch, p.contrastive.proj_dim).to(device)
    cl = p.runtime.channels_last
    if cl:
        model = model.to(memory_format=torch.channels_last)
    trainee = wrap_ddp(model, p.runtime, device)
    tau = p.contrastive.tau
    a = p.attack
    step_size = a.resolved_step_size()

    threat = threat_model(a.norm, a.eps)
    adversarial = p.contrastive.adv_weight > 0 and a.eps > 0 and a.steps > 0
    # NT-Xent couples the batch: under torchrun every rank's loss (and attack objective) uses the
    # embeddings of the whole global batch, so the negatives are those one process would use.
    gather = distributed.gather_rows
    clean = p.contrastive.clean_weight > 0
    if not clean and not adversarial:
        raise CemError(f"{stage}: contrastive.clean_weight is 0 and the attack is off (adv_weight, attack.eps or "
                       "attack.steps is 0): the loss would be empty")

    def train_step(xb, _yb, gen, rows):
        x = to_float(xb, device, cl)
        v1, v2 = augment.simclr(x, gen), augment.simclr(x, gen)
        b = len(v1)
        both = p.contrastive.perturb == "both"
        start = None
        if adversarial and a.random_start:  # drawn for the global batch, as one process would
            if both:
                s = random_init(threat, torch.cat([v1, v2]), gen)
                start = torch.cat([s[:b][rows], s[b:][rows]])
            else:
                start = random_init(threat, v2, gen)[rows]
        v1, v2 = v1[rows], v2[rows]
        n = len(v1)
        views = [v1, v2] if clean else []
        if adversarial:
            model.eval()
            with frozen(model):
                if both:  # maximise NT-Xent of the pair by moving both views
                    adv = ascend(torch.cat([v1, v2]),
                                 lambda v: nt_xent(gather(model(v[:n])), gather(model(v[n:])), tau),
                                 threat, a.steps, step_size, init=start)
                    a1, a2 = adv[:n], adv[n:]
                else:  # only the second view moves
                    a1 = v1
                    a2 = ascend(v2, lambda v: nt_xent(gather(model(v1)), gather(model(v)), tau)[b:],
                                threat, a.steps, step_size, init=start)
            model.train()
            views += [a1, a2]
        z = [gather(t) for t in trainee(torch.cat(views)).split(n)]  # one forward for all views in use
        weights = ([p.contrastive.clean_weight] if clean else []) + ([p.contrastive.adv_weight] if adversarial else [])
        loss = sum(w * nt_xent(z[2 * i], z[2 * i + 1], tau).mean() for i, w in enumerate(weights))
        return loss, {}

    probe_idx = stratified_indices(data.train.labels, p.probe.train_per_class, EVAL_SEED)
    test_idx_epoch = stratified_indices(data.test.labels, p.eval.epoch_per_class, EVAL_SEED)
    test_idx_final = stratified_indices(data.test.labels, p.eval.test_per_class, EVAL_SEED)

    def evaluate_fn(final: bool) -> dict:
        probe = fit_linear_probe(model, data.train.images[probe_idx], data.train.labels[probe_idx],
                                 len(data.classes), p.probe.epochs if final else max(1, p.probe.epochs // 2),
                                 p.probe.lr, p.probe.batch_size, device, cl, seed=p.seed)
        idx = test_idx_final if final else test_idx_epoch
        steps = p.eval.attack_steps if final else p.eval.epoch_attack_steps
        res = evaluate(probe, data.test.images[idx], data.test.labels[idx], p.eval_attack, steps,
                       p.eval.batch_size, device, cl)
        res = {f"probe_{k}": v for k, v in res.items()}
        if final:
            res["eval_images"] = len(idx)
            evaluate_fn.probe = probe
        return res

    spec, result = _train(p, stage, section, model, train_step, evaluate_fn, data, device, run, resume, restart,
                          metrics_dir, data_hash)
    if not result:
        return {}
    probe = evaluate_fn.probe
    blob = {"kind": "contrastive", "arch": p.arch.model_dump(), "proj_dim": p.contrastive.proj_dim,
            "tau": tau, "num_classes": len(data.classes),
            "state_dict": {k: v.cpu() for k, v in model.state_dict().items()},
            "probe_state_dict": {k: v.cpu() for k, v in probe.fc.state_dict().items()},
            "mlflow_run_id": run.run_id, "params_hash": spec.params_hash, "classes": data.classes}
    extra = {"eval_attack": f"{p.eval_attack.norm} eps={p.eval_attack.eps:.4g} PGD-{p.eval.attack_steps}"}
    spec.history = [{**h, "clean_acc": h.get("probe_clean_acc", h.get("clean_acc")),
                     "robust_acc": h.get("probe_robust_acc", h.get("robust_acc"))} for h in spec.history]
    return write_outputs(spec, result, blob, run, extra)


@torch.no_grad()
def _features(model, images, device, cl, batch_size=500):
    model.eval()
    return torch.cat([model.features(to_float(images[i:i + batch_size], device, cl))
                      for i in range(0, len(images), batch_size)])


def fit_linear_probe(model: ContrastiveModel, images, labels, num_classes, epochs, lr, batch_size,
                     device, cl, seed: int) -> LinearProbe:
    """Linear classifier on frozen features (features computed once, then SGD on them)."""
    was_training = model.training
    feats = _features(model, images, device, cl)
    y = labels.to(device)
    probe = LinearProbe(model, num_classes).to(device)
    gen = torch.Generator().manual_seed(seed + 7)
    with torch.no_grad():
        probe.fc.weight.normal_(0, 0.01, generator=gen) if device.type == "cpu" else probe.fc.weight.normal_(0, 0.01)
        probe.fc.bias.zero_()
    mu, sd = feats.mean(0), feats.std(0) + 1e-6  # standardise for a well-conditioned probe; folded in below
    z = (feats - mu) / sd
    opt = torch.optim.SGD(probe.fc.parameters(), lr=lr, momentum=0.9, weight_decay=1e-4)
    steps = epochs * math.ceil(len(y) / batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(steps, 1))
    for _ in range(epochs):
        perm = torch.randperm(len(y), generator=gen).to(device)
        for i in range(0, len(y), batch_size):
            b = perm[i:i + batch_size]
            loss = F.cross_entropy(probe.fc(z[b]), y[b])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    with torch.no_grad():  # fold the standardisation into the linear layer: fc((f - mu)/sd)
        w = probe.fc.weight / sd
        probe.fc.bias -= (w * mu).sum(1)
        probe.fc.weight.copy_(w)
    model.train(was_training)
    probe.eval()
    return probe
