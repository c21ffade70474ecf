"""Clean and PGD accuracy of a network on test images: the measurement the training curves and the
final evaluation (`cem evaluate`, pipeline/final_evaluation.py) share."""
from __future__ import annotations

import torch
from torch import nn

from . import rng
from .attacks import pgd
from .params import EvalAttackParams
from .runtime import autocast

EVAL_SEED = 12345
"""Fixes the test subsets every evaluation uses (and, by default, the attacks' random starts)."""


def to_float(images: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    x = images.to(device, non_blocking=True).float().div_(255)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def attack_kwargs(attack: EvalAttackParams, steps: int) -> dict:
    return dict(norm=attack.norm, eps=attack.eps, steps=steps, step_size=attack.resolved_step_size(steps),
                random_start=attack.random_start)


@torch.no_grad()
def predict(model, x):
    return model(x).argmax(1)


def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, attack: EvalAttackParams,
             steps: int, batch_size: int, device: torch.device, channels_last: bool, amp: bool = False,
             seed: int = EVAL_SEED, advance=None) -> dict:
    """Clean and PGD-`steps` accuracy (%); the random starts are drawn from a generator seeded `seed`.
    `advance(n)`: called with each batch's size (a progress bar)."""
    was_training = model.training
    model.eval()
    gen = rng.generator(seed, device)  # the random starts are drawn where the attack runs
    clean = robust = 0
    for i in range(0, len(labels), batch_size):
        x = to_float(images[i:i + batch_size], device, channels_last)
        y = labels[i:i + batch_size].to(device)
        with autocast(device, amp):
            clean += (predict(model, x) == y).sum().item()
            if attack.eps > 0 and steps > 0:
                xa = pgd(model, x, y, generator=gen, **attack_kwargs(attack, steps))
                robust += (predict(model, xa) == y).sum().item()
        if advance is not None:
            advance(len(y))
    model.train(was_training)
    n = len(labels)
    out = {"clean_acc": 100.0 * clean / n}
    if attack.eps > 0 and steps > 0:
        out["robust_acc"] = 100.0 * robust / n
    return out
