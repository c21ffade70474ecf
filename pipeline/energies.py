"""The contrastive energy-based model's energies (docs/science.md §1–2).

Supervised (parametric) CEM: f(x, y) = logit y.  LSE(x) = log Σ_k exp f(x, k) is the marginal
log p(x) up to log Z, log p(y|x) = f(x, y) − LSE(x), and CE(x, y) = LSE(x) − f(x, y).
Unsupervised (non-parametric) CEM: f(x, x') = ĝ(x)·ĝ(x')/τ with ĝ L2-normalised.
The samplers' objectives are built from these; the training loss NT-Xent lives in `losses`.
"""
from __future__ import annotations

import contextlib

import torch


def lse(logits: torch.Tensor) -> torch.Tensor:
    return torch.logsumexp(logits, dim=1)


def conditional_energy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """f(x, y): log p(x|y) + log Z_y."""
    return logits.gather(1, y.view(-1, 1)).squeeze(1)


def log_posterior(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """log p(y|x) = f(x, y) − LSE(x)."""
    return conditional_energy(logits, y) - lse(logits)


def pair_energy(za: torch.Tensor, zb: torch.Tensor, tau: float) -> torch.Tensor:
    """f(a, b) = ĝ(a)·ĝ(b)/τ for all pairs: (len(a), len(b)). Inputs are already normalised.
    Always fp32, also under bf16 autocast (which would run the matmul in bf16): at τ = 0.5 a bf16
    cosine (8 mantissa bits) moves f by ~0.01, as much as the gaps the log-sum-exps rank
    (docs/science.md, precision)."""
    with _no_autocast(za.device.type):
        za, zb = (t if t.dtype == torch.float64 else t.float() for t in (za, zb))  # float64 stays (tests)
        return za @ zb.T / tau


def _no_autocast(device_type: str):
    """Autocast off where it can be on (cpu, cuda); other devices (the tests' `meta` stand-in) have none."""
    return torch.autocast(device_type, enabled=False) if device_type in ("cpu", "cuda") else contextlib.nullcontext()
