"""The contrastive energy-based model's energies (science.md §1–2).

Supervised (parametric) CEM: f(x, y) = logit y.  LSE(x) = log Σ_k exp f(x, k) is the marginal
log p(x) up to log Z, log p(y|x) = f(x, y) − LSE(x), and CE(x, y) = LSE(x) − f(x, y).
Unsupervised (non-parametric) CEM: f(x, x') = ĝ(x)·ĝ(x')/τ with ĝ L2-normalised.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def lse(logits: torch.Tensor) -> torch.Tensor:
    return torch.logsumexp(logits, dim=1)


def conditional_energy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """f(x, y): log p(x|y) + log Z_y."""
    return logits.gather(1, y.view(-1, 1)).squeeze(1)


def log_posterior(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """log p(y|x) = f(x, y) − LSE(x)."""
    return conditional_energy(logits, y) - lse(logits)


def pair_energy(za: torch.Tensor, zb: torch.Tensor, tau: float) -> torch.Tensor:
    """f(a, b) = ĝ(a)·ĝ(b)/τ for all pairs: (len(a), len(b)). Inputs are already normalised."""
    return za @ zb.T / tau


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, tau: float) -> torch.Tensor:
    """Per-anchor NT-Xent (SimCLR) over 2B anchors: −f(x, x⁺) + log Σ_{k≠x} exp f(x, x_k).

    This is InfoNCE of the non-parametric CEM (science.md §2.3). Returns shape (2B,)."""
    z = torch.cat([F.normalize(z1, dim=1), F.normalize(z2, dim=1)])
    n = len(z1)
    sim = pair_energy(z, z, tau)
    sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    pos = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return torch.logsumexp(sim, dim=1) - sim[torch.arange(2 * n, device=z.device), pos]
