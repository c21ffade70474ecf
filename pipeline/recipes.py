"""Training recipes, one per kind: what a training step and an evaluation are. The loop in
`train.py` (schedule, checkpoints, resume, logging) is shared; bench/ and tests import these steps,
so what they measure is what the stage runs.

A recipe is built from its params section, the data and the device, and offers
`train_step(global images, labels, the step's generator, this rank's rows) -> (loss, metrics)`,
`evaluate(final) -> metrics` and `model_blob(run_id, params_hash) -> the model file's contents`.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from . import augment, distributed, rng
from .attacks import ascend, frozen, pgd, random_init, threat_model
from .data import Dataset, stratified_indices
from .evaluation import EVAL_SEED, evaluate, to_float
from .errors import CemError
from .losses import nt_xent
from .models import ContrastiveModel, LinearProbe, build_classifier
from .params import EvalAttackParams, SupervisedParams, UnsupervisedParams
from .runtime import amp_decision, autocast, maybe_compile, wrap_ddp

WHITEN_IMAGES = 5000
"""Training images whose 2x2 patches set a whitening stem (airbench's number)."""


# ----------------------------------------------------------------------------- supervised
class SupervisedRecipe:
    """PGD-AT (Madry); with attack.eps = 0 it is standard training (the reference classifier)."""
    kind = "classifier"

    def __init__(self, p: SupervisedParams, data: Dataset, device: torch.device, model: nn.Module | None = None):
        """`model`: train this network instead of a new one from `p.arch` (benchmarks)."""
        self.p, self.data, self.device = p, data, device
        torch.manual_seed(p.seed)
        self.num_classes = len(data.classes)
        model = (model if model is not None else build_classifier(p.arch, self.num_classes)).to(device)
        if getattr(p.arch, "whiten", False):  # airbench's frozen whitening stem, from 5,000 training images
            per_class = min(max(1, WHITEN_IMAGES // len(data.classes)), int(data.train.labels.bincount().min()))
            model.init_whitening(data.train.images[stratified_indices(data.train.labels, per_class, EVAL_SEED)])
        self.cl = p.runtime.channels_last
        if self.cl:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        self.trainee = maybe_compile(wrap_ddp(model, p.runtime, device), p.runtime)  # the training forward
        self.fwd = maybe_compile(model, p.runtime)  # what the attack calls
        self.amp, self.amp_reason = amp_decision(p.runtime, device)
        a = p.attack
        self.adversarial = a.eps > 0 and a.steps > 0 or (a.kind == "fgsm_rs" and a.eps > 0)
        self.step_size = a.resolved_step_size()
        self.random_start = a.random_start or a.kind == "fgsm_rs"
        self.threat = threat_model(a.norm, a.eps)
        self.test_idx_epoch = stratified_indices(data.test.labels, p.eval.epoch_per_class, EVAL_SEED)

    def train_step(self, xb, yb, gen, rows):
        p, device = self.p, self.device
        x = to_float(xb, device, self.cl)
        if p.augment:
            x = augment.crop_flip(x, gen, pad=p.crop_pad)
        start = random_init(self.threat, x, gen)[rows] if self.adversarial and self.random_start else None
        x, y = x[rows], yb[rows].to(device)
        with autocast(device, self.amp):  # the attack and the training forward
            if self.adversarial:
                self.model.eval()
                steps = 1 if p.attack.kind == "fgsm_rs" else p.attack.steps
                x = pgd(self.fwd, x, y, p.attack.norm, p.attack.eps, steps, self.step_size, random_start=False,
                        init=start)
                self.model.train()
            logits = self.trainee(x)
        loss = F.cross_entropy(logits.float(), y, label_smoothing=p.optim.label_smoothing)
        return loss, {"train_acc": (logits.argmax(1) == y).float().mean().detach() * 100}  # read at log steps

    def evaluate(self, final: bool) -> dict:
        """A point of the training curve (the last one too: `cem evaluate` makes the final evaluation)."""
        p = self.p
        idx = self.test_idx_epoch
        return evaluate(self.model, self.data.test.images[idx], self.data.test.labels[idx], p.eval_attack,
                        p.eval.epoch_attack_steps, p.eval.batch_size, self.device, self.cl, self.amp)

    def model_blob(self, run_id: str, params_hash: str) -> dict:
        return {"kind": "classifier", "arch": self.p.arch.model_dump(), "num_classes": self.num_classes,
                "state_dict": {k: v.cpu() for k, v in self.model.state_dict().items()},
                "params_hash": params_hash, "classes": self.data.classes,
                "threat_model": self.p.eval_attack.model_dump()}


# ----------------------------------------------------------------------------- contrastive
class ContrastiveRecipe:
    """Contrastive AT (non-parametric CEM): PGD perturbs the views to maximise NT-Xent; the loss is
    clean_weight·NT-Xent(clean) + adv_weight·NT-Xent(adversarial) (ACL's dual-stream reading).
    NT-Xent couples the batch: under torchrun every rank's loss (and attack objective) uses the
    embeddings of the whole global batch, so the negatives are those one process would use."""
    kind = "contrastive"

    def __init__(self, p: UnsupervisedParams, data: Dataset, device: torch.device, stage: str = "train_unsup"):
        self.p, self.data, self.device = p, data, device
        torch.manual_seed(p.seed)
        model = ContrastiveModel(p.arch, p.contrastive.proj_dim).to(device)
        self.cl = p.runtime.channels_last
        if self.cl:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        self.trainee = maybe_compile(wrap_ddp(model, p.runtime, device), p.runtime)  # the training forward
        self.fwd = maybe_compile(model, p.runtime)  # what the attack calls (forward = the normalised embedding)
        self.amp, self.amp_reason = amp_decision(p.runtime, device)
        a = p.attack
        self.step_size = a.resolved_step_size()
        self.threat = threat_model(a.norm, a.eps)
        self.adversarial = p.contrastive.adv_weight > 0 and a.eps > 0 and a.steps > 0
        self.clean = p.contrastive.clean_weight > 0
        if not self.clean and not self.adversarial:
            raise CemError(f"{stage}: contrastive.clean_weight is 0 and the attack is off (adv_weight, attack.eps "
                           "or attack.steps is 0): the loss would be empty")
        self.probe_idx = stratified_indices(data.train.labels, p.probe.train_per_class, EVAL_SEED)
        self.test_idx_epoch = stratified_indices(data.test.labels, p.eval.epoch_per_class, EVAL_SEED)
        self.probe = None

    def train_step(self, xb, _yb, gen, rows):
        p, a, device, tau = self.p, self.p.attack, self.device, self.p.contrastive.tau
        gather, fwd = distributed.gather_rows, self.fwd
        x = to_float(xb, device, self.cl)
        v1, v2 = augment.simclr(x, gen), augment.simclr(x, gen)
        b = len(v1)
        both = p.contrastive.perturb == "both"
        start = None
        if self.adversarial and a.random_start:  # drawn for the global batch, as one process would
            if both:
                s = random_init(self.threat, torch.cat([v1, v2]), gen)
                start = torch.cat([s[:b][rows], s[b:][rows]])
            else:
                start = random_init(self.threat, v2, gen)[rows]
        v1, v2 = v1[rows], v2[rows]
        n = len(v1)
        views = [v1, v2] if self.clean else []
        if self.adversarial:
            self.model.eval()
            with frozen(self.model), autocast(device, self.amp):  # embeddings come out in fp32 (models.embed)
                if both:  # maximise NT-Xent of the pair by moving both views
                    adv = ascend(torch.cat([v1, v2]),
                                 lambda v: nt_xent(gather(fwd(v[:n])), gather(fwd(v[n:])), tau),
                                 self.threat, a.steps, self.step_size, init=start)
                    a1, a2 = adv[:n], adv[n:]
                else:  # only the second view moves
                    a1 = v1
                    a2 = ascend(v2, lambda v: nt_xent(gather(fwd(v1)), gather(fwd(v)), tau)[b:],
                                self.threat, a.steps, self.step_size, init=start)
            self.model.train()
            views += [a1, a2]
        with autocast(device, self.amp):
            z = [gather(t) for t in self.trainee(torch.cat(views)).split(n)]  # one forward for all views in use
        weights = (([p.contrastive.clean_weight] if self.clean else [])
                   + ([p.contrastive.adv_weight] if self.adversarial else []))
        loss = sum(w * nt_xent(z[2 * i], z[2 * i + 1], tau).mean() for i, w in enumerate(weights))
        return loss, {}

    def evaluate(self, final: bool) -> dict:
        """A point of the training curve: a linear probe fitted on the frozen features (for half its
        epochs; the last point fits it fully and keeps it for the model file), clean and PGD accuracy."""
        p, data = self.p, self.data
        probe = fit_linear_probe(self.model, data.train.images[self.probe_idx], data.train.labels[self.probe_idx],
                                 len(data.classes), p.probe.epochs if final else max(1, p.probe.epochs // 2),
                                 p.probe.lr, p.probe.batch_size, self.device, self.cl, seed=p.seed)
        idx = self.test_idx_epoch
        res = evaluate(probe, data.test.images[idx], data.test.labels[idx], p.eval_attack, p.eval.epoch_attack_steps,
                       p.eval.batch_size, self.device, self.cl, self.amp)
        if final:
            self.probe = probe
        return {f"probe_{k}": v for k, v in res.items()}

    def model_blob(self, run_id: str, params_hash: str) -> dict:
        if self.probe is None:
            raise RuntimeError("model_blob needs the final evaluation (it fits the linear probe)")
        return {"kind": "contrastive", "arch": self.p.arch.model_dump(), "proj_dim": self.p.contrastive.proj_dim,
                "tau": self.p.contrastive.tau, "num_classes": len(self.data.classes),
                "state_dict": {k: v.cpu() for k, v in self.model.state_dict().items()},
                "probe_state_dict": {k: v.cpu() for k, v in self.probe.fc.state_dict().items()},
                "params_hash": params_hash, "classes": self.data.classes,
                "threat_model": self.p.eval_attack.model_dump()}


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
    gen = rng.generator(seed + 7, device)
    with torch.no_grad():
        probe.fc.weight.normal_(0, 0.01, generator=gen)
        probe.fc.bias.zero_()
    mu, sd = feats.mean(0), feats.std(0) + 1e-6  # standardise for a well-conditioned probe; folded in below
    z = (feats - mu) / sd
    opt = torch.optim.SGD(probe.fc.parameters(), lr=lr, momentum=0.9, weight_decay=1e-4)
    steps = epochs * math.ceil(len(y) / batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(steps, 1))
    for _ in range(epochs):
        perm = torch.randperm(len(y), generator=gen, device=device)
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
