"""Training losses (docs/science.md §2.3, §3). Kept apart from the samplers' energies so that an edit of
a sampler objective never invalidates a trained model (dvc.yaml deps follow the import closure)."""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, tau: float) -> torch.Tensor:
    """Per-anchor NT-Xent (SimCLR) over 2B anchors: −f(x, x⁺) + log Σ_{k≠x} exp f(x, x_k), with
    f(a, b) = ĝ(a)·ĝ(b)/τ. This is InfoNCE of the non-parametric CEM. Returns shape (2B,)."""
    n = len(z1)
    with _no_autocast(z1.device.type):  # fp32 even under bf16 autocast (docs/science.md §8)
        z1, z2 = (t if t.dtype == torch.float64 else t.float() for t in (z1, z2))  # float64 stays (tests)
        z = torch.cat([F.normalize(z1, dim=1), F.normalize(z2, dim=1)])
        sim = z @ z.T / tau
    sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    pos = torch.cat([torch.arange(n, 2 * n, device=z.device), torch.arange(0, n, device=z.device)])
    return torch.logsumexp(sim, dim=1) - sim[torch.arange(2 * n, device=z.device), pos]


def _no_autocast(device_type: str):
    """Autocast off where it can be on (cpu, cuda); other devices (the tests' `meta` stand-in) have none."""
    return torch.autocast(device_type, enabled=False) if device_type in ("cpu", "cuda") else contextlib.nullcontext()
