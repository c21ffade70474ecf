"""One projected-gradient engine for everything that moves images along a gradient.

As in MadryLab/robustness, a threat model is a tiny class (`random_perturb`, `step`, `project`)
and the loop is written once (`ascend`). Training attacks, evaluation attacks and every sampler
(docs/science.md §4) are calls of `ascend` with a different objective J(x) (per-sample values, to be
*increased*), step rule, noise and ball.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .rng import draw_device

Objective = Callable[[torch.Tensor], torch.Tensor]
_TINY = 1e-12


def _per_sample_norm(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).norm(dim=1).view(-1, *([1] * (t.dim() - 1)))


class L2:
    """‖δ‖₂ ≤ ε; normalised-gradient steps (Madry L2 / Santurkar sampling)."""

    def __init__(self, eps: float):
        self.eps = eps

    def random_perturb(self, x, gen):
        dev = draw_device(gen, x)  # drawn where the generator lives; .to is a no-op when that is x's device
        d = torch.randn(x.shape, generator=gen, dtype=x.dtype, device=dev).to(x.device)
        r = torch.rand(len(x), generator=gen, dtype=x.dtype, device=dev).to(x.device).view(-1, *([1] * (x.dim() - 1)))
        return d / (_per_sample_norm(d) + _TINY) * r * self.eps

    def step(self, grad, step_size: float):
        return grad * (step_size / (_per_sample_norm(grad) + _TINY))

    def project(self, delta):
        norm = _per_sample_norm(delta)
        return delta * torch.clamp(self.eps / (norm + _TINY), max=1.0)


class Linf:
    """‖δ‖∞ ≤ ε; sign steps."""

    def __init__(self, eps: float):
        self.eps = eps

    def random_perturb(self, x, gen):
        u = torch.rand(x.shape, generator=gen, dtype=x.dtype, device=draw_device(gen, x)).to(x.device)
        return (u * 2 - 1) * self.eps

    def step(self, grad, step_size: float):
        return grad.sign() * step_size

    def project(self, delta):
        return delta.clamp(-self.eps, self.eps)


THREAT_MODELS = {"l2": L2, "linf": Linf}


def threat_model(norm: str, eps: float):
    return THREAT_MODELS[norm](eps)


@contextmanager
def frozen(*modules: nn.Module):
    """Switch off parameter gradients while attacking: the backward pass then skips weight grads."""
    params = [p for m in modules for p in m.parameters()]
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, f in zip(params, flags):
            p.requires_grad_(f)


def random_init(threat, anchor: torch.Tensor, generator: Optional[torch.Generator]) -> torch.Tensor:
    """A random point of the ball around `anchor`, inside the image box (PGD's random start)."""
    return (anchor + threat.random_perturb(anchor, generator)).clamp_(0, 1)


def ascend(x0: torch.Tensor, objective: Objective, threat, steps: int, step_size: float, *,
           random_start: bool = False, noise_std: float = 0.0, generator: Optional[torch.Generator] = None,
           anchor: Optional[torch.Tensor] = None, return_best: bool = False,
           on_step: Optional[Callable[[int, torch.Tensor], None]] = None,
           init: Optional[torch.Tensor] = None, momentum: float = 0.0,
           on_iterate: Optional[Callable[[int, torch.Tensor], None]] = None) -> torch.Tensor:
    """Projected gradient ascent of a per-sample objective J (shape [B]):

        d = ∇ₓ J(x);  x ← x + step(d) (+ σ·ξ);  x ← anchor + project(x − anchor);  x ← clamp(x, 0, 1)

    `anchor` is the centre of the ball (default: x0). With `return_best`, the iterate with the
    highest J per sample is returned instead of the last one. `on_step(t, J)` sees J before step t.
    `init` is the first iterate when the caller drew it (e.g. `random_init` on a whole global batch
    of which this process holds some rows); otherwise x0, or a random point of the ball.
    `momentum` μ > 0 makes the step heavy-ball on the normalised gradient step: v ← μ·v + step(d),
    x ← x + v (WEAT's SGLD with momentum); μ = 0 is the plain step above, computed exactly as before.
    `on_iterate(t, x)` sees the iterate after t steps (t = 0 … steps): the iterate after t steps is the
    same tensor a run of t steps returns, so one chain serves every shorter step count (tuning).
    """
    anchor = x0.detach() if anchor is None else anchor.detach()
    if init is not None:
        x = init.detach().clone()
    elif random_start:
        x = random_init(threat, anchor, generator)
    else:
        x = x0.detach().clone()
    best = best_val = velocity = None
    for t in range(steps + (1 if return_best else 0)):
        x.requires_grad_(True)
        values = objective(x)
        if return_best:
            v = values.detach()
            if best is None:
                best, best_val = x.detach().clone(), v.clone()
            else:
                better = v > best_val  # torch.where, not a boolean index (a host sync on a GPU)
                best = torch.where(better.view(-1, *([1] * (x.dim() - 1))), x.detach(), best)
                best_val = torch.where(better, v, best_val)
            if t == steps:
                break
        if on_step is not None:
            on_step(t, values.detach())
        if on_iterate is not None:
            on_iterate(t, x.detach())
        grad, = torch.autograd.grad(values.sum(), x)
        with torch.no_grad():
            if momentum > 0:
                step = threat.step(grad, step_size)
                velocity = step if velocity is None else momentum * velocity + step
                x = x.detach() + velocity
            else:
                x = x.detach() + threat.step(grad, step_size)
            if noise_std > 0:
                x += noise_std * torch.randn(x.shape, generator=generator, dtype=x.dtype,
                                             device=draw_device(generator, x)).to(x.device)
            x = (anchor + threat.project(x - anchor)).clamp_(0, 1)
    if on_iterate is not None and not return_best:
        on_iterate(steps, x.detach())
    return best if return_best else x.detach()


# ----------------------------------------------------------------------------- classifier attacks
def ce_objective(model: nn.Module, y: torch.Tensor, targeted: bool = False) -> Objective:
    """Untargeted: ascend CE(x, y). Targeted: ascend log p(y|x) = −CE(x, y)."""
    sign = -1.0 if targeted else 1.0
    return lambda x: sign * F.cross_entropy(model(x).float(), y, reduction="none")


def pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, norm: str, eps: float, steps: int,
        step_size: float, random_start: bool = True, generator: Optional[torch.Generator] = None,
        targeted: bool = False, init: Optional[torch.Tensor] = None) -> torch.Tensor:
    """PGD on cross-entropy with the model's parameters frozen (the training and evaluation attack)."""
    if eps <= 0 or steps <= 0:
        return x.detach()
    with frozen(model):
        return ascend(x, ce_objective(model, y, targeted), threat_model(norm, eps), steps, step_size,
                      random_start=random_start, generator=generator, init=init)
