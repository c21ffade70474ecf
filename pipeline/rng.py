"""Seeded generators on the device that uses their draws.

Every random draw of the pipeline (batch order, augmentation, attack starts, sampler seeds and
noise, probe init) comes from an explicit generator seeded by (seed, step or batch index): a
resumed run draws what an uninterrupted one would have, and N processes draw what one does.
"""
from __future__ import annotations

import torch


def generator(seed: int, device=None) -> torch.Generator:
    """A seeded generator on `device` (default: the CPU). Random draws are made on the device that
    uses them: a CPU draw copied to a GPU is a pageable host-to-device copy, which waits for the
    stream (a host sync) in every step. On the CPU this is the plain CPU generator, so CPU runs
    draw exactly what they drew before; a GPU's generator (Philox) draws other, equally seeded numbers."""
    return torch.Generator(device=torch.device(device) if device is not None else "cpu").manual_seed(seed)


def draw_device(gen, like: torch.Tensor) -> torch.device:
    """Where a draw from `gen` is made: the generator's device, else (no generator) the tensor's."""
    return gen.device if gen is not None else like.device
