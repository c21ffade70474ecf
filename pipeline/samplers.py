"""Adversarial samplers (docs/science.md §4), registered by name.

A sampler = a seed family (pipeline/seed_families.py; by default the class-conditional or
unconditional Gaussian) + an objective
J(x) to ascend + a step rule + optional noise + a projection. All of them run on the one engine,
`attacks.ascend`, with an L2 ball of radius ε around the seed and normalised-gradient steps.
To add a sampler: one `spec(...)` line in `sampler_specs` (name, model, defaults, paper numbers)
and its objective here, bound with `@objective(name)`.

Supervised samplers (f = logits of the adversarially trained classifier, y = target class):
    ta        J = log p(y|x) = f(x, y) − LSE(x)
    langevin  J = f(x, y) = log p(x|y) + const, plus N(0, σ²) noise each step
    cs        J = f(x, y)
    rcs       J = f(x, y) + λ·log p(y|x)
Unsupervised samplers (ĝ = normalised projection of the contrastive encoder, f(x, b) = ĝ(x)·ĝ(b)/τ,
B a bank of M training images, B_c its points of condition c):
    pgd_uncond     J = log Σ_{b∈B} exp f(x, b)                     (importance-sampled log p(x))
    pgd_cond       J = log Σ_{b∈B_c} exp f(x, b)
    maxent_uncond  J = pgd_uncond − β·log Σ_{k≠i} exp f(xᵢ, x_k)    (repulsion within the batch)
    maxent_cond    J = pgd_cond − β·(same repulsion)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import nn

from .attacks import L2, ascend, frozen
from .rng import generator
from .runtime import autocast
from .data import gaussian_factor
from .energies import conditional_energy, log_posterior, pair_energy
from .params import ResolvedSamplerParams
from .sampler_specs import SPECS, SamplerSpec
from .seed_families import seed_family


@dataclass
class SamplingContext:
    """What an objective may use. `bank_z`/`bank_cond` only for contrastive models."""
    model: nn.Module
    params: ResolvedSamplerParams
    num_classes: int
    bank_z: Optional[torch.Tensor] = None
    bank_cond: Optional[torch.Tensor] = None
    channels_last: bool = False  # the iterates' memory format (the model's, set by `sample.runtime`)


ObjectiveBuilder = Callable[[SamplingContext, Optional[torch.Tensor]], Callable[[torch.Tensor], torch.Tensor]]


@dataclass(frozen=True)
class Sampler:
    spec: SamplerSpec
    objective: ObjectiveBuilder

    name = property(lambda self: self.spec.name)
    model_kind = property(lambda self: self.spec.model_kind)
    conditional = property(lambda self: self.spec.conditional)
    formula = property(lambda self: self.spec.formula)


SAMPLERS: dict[str, Sampler] = {}


def objective(name: str):
    """Bind an objective to the registry entry `name` (once)."""
    def deco(fn: ObjectiveBuilder) -> ObjectiveBuilder:
        if name not in SPECS:
            raise ValueError(f"sampler '{name}' has no entry in sampler_specs")
        if name in SAMPLERS:
            raise ValueError(f"sampler '{name}' has two objectives")
        SAMPLERS[name] = Sampler(SPECS[name], fn)
        return fn
    return deco


# ----------------------------------------------------------------------------- supervised
@objective("ta")
def _ta(ctx, y):
    return lambda x: log_posterior(ctx.model(x).float(), y)


@objective("langevin")
def _langevin(ctx, y):
    return lambda x: conditional_energy(ctx.model(x).float(), y)


@objective("cs")
def _cs(ctx, y):
    return lambda x: conditional_energy(ctx.model(x).float(), y)


@objective("rcs")
def _rcs(ctx, y):
    lam = ctx.params.lam

    def objective(x):
        logits = ctx.model(x).float()  # bf16 under autocast: the energies in fp32
        return conditional_energy(logits, y) + lam * log_posterior(logits, y)
    return objective


# ----------------------------------------------------------------------------- unsupervised
def _bank_term(ctx: SamplingContext, z: torch.Tensor, cond: Optional[torch.Tensor]) -> torch.Tensor:
    """log Σ_{b∈B(_c)} exp f(x, b): the importance-sampled (conditional) marginal."""
    e = pair_energy(z, ctx.bank_z, ctx.params.tau)
    if cond is not None:
        e = e.masked_fill(cond.view(-1, 1) != ctx.bank_cond.view(1, -1), float("-inf"))
    return torch.logsumexp(e, dim=1)


def _repulsion(ctx: SamplingContext, z: torch.Tensor) -> torch.Tensor:
    """log Σ_{k≠i} exp f(xᵢ, x_k): a kernel estimate of the batch's own log-density at xᵢ.
    The other samples are detached, so the gradient wrt xᵢ is that of J(xᵢ) alone."""
    e = pair_energy(z, z.detach(), ctx.params.tau)
    e = e.masked_fill(torch.eye(len(z), dtype=torch.bool, device=z.device), float("-inf"))
    return torch.logsumexp(e, dim=1)


@objective("pgd_uncond")
def _pgd_uncond(ctx, _c):
    return lambda x: _bank_term(ctx, ctx.model(x), None)  # forward = embed


@objective("pgd_cond")
def _pgd_cond(ctx, c):
    return lambda x: _bank_term(ctx, ctx.model(x), c)


def _maxent(ctx: SamplingContext, cond: Optional[torch.Tensor]):
    def objective(x):
        z = ctx.model(x)
        return _bank_term(ctx, z, cond) - ctx.params.beta * _repulsion(ctx, z)
    return objective


@objective("maxent_uncond")
def _maxent_uncond(ctx, _c):
    return _maxent(ctx, None)


@objective("maxent_cond")
def _maxent_cond(ctx, c):
    return _maxent(ctx, c)


# ----------------------------------------------------------------------------- beyond the paper
# The same objectives; what differs (PCA seeds, momentum) is in their registry entries' defaults.
objective("rcs_pca_momentum")(_rcs)
objective("maxent_pca_momentum")(_maxent_cond)


# ----------------------------------------------------------------------------- banks and conditions
@torch.no_grad()
def embed_all(model, images: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """fp32 embeddings of uint8 images, computed where the model is (the bank on the GPU for a GPU run)."""
    device = next(model.parameters()).device
    return torch.cat([model.embed(images[i:i + batch_size].to(device).float() / 255)
                      for i in range(0, len(images), batch_size)])


def kmeans(z: torch.Tensor, k: int, gen: torch.Generator, iters: int = 50) -> torch.Tensor:
    """Spherical k-means on normalised features (k-means++ style init from `gen`); returns labels."""
    centers = z[torch.randperm(len(z), generator=gen)[:1]]
    for _ in range(1, k):
        d = (1 - z @ centers.T).min(1).values.clamp(min=0) + 1e-12
        centers = torch.cat([centers, z[torch.multinomial(d, 1, generator=gen)]])
    for _ in range(iters):
        labels = (z @ centers.T).argmax(1)
        new = torch.stack([z[labels == j].mean(0) if (labels == j).any() else centers[j] for j in range(k)])
        new = torch.nn.functional.normalize(new, dim=1)
        if torch.allclose(new, centers):
            break
        centers = new
    return (z @ centers.T).argmax(1)


def build_bank(model, train_images, train_labels, rp: ResolvedSamplerParams, num_classes: int,
               ridge: float, seeds: dict) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Bank B (M training images, fixed by the seed), its embeddings and conditions, and the seed
    statistics to use: the class Gaussians for `labels`, Gaussians of the bank's clusters for `kmeans`."""
    gen = torch.Generator().manual_seed(rp.seed + 99991)
    m = min(rp.bank_size, len(train_labels))
    idx = torch.randperm(len(train_labels), generator=gen)[:m].sort().values
    model.eval()
    z = embed_all(model, train_images[idx])
    if rp.condition == "labels":
        return z, train_labels[idx].clone(), seeds
    cond = kmeans(z.cpu(), num_classes, gen)  # on the host, with the host generator: the same clusters anywhere
    cluster_seeds = {"all": seeds["all"], "ridge": ridge, "classes": []}
    for c in range(num_classes):
        members = train_images[idx][cond == c]
        if len(members) < 2:
            members = train_images[idx]  # an empty cluster falls back to the whole bank's Gaussian
        mean, factor, iso = gaussian_factor(members, ridge)
        cluster_seeds["classes"].append({"mean": mean.float(), "factor": factor.float(), "iso_std": iso})
    return z, cond, cluster_seeds


# ----------------------------------------------------------------------------- generation
def batch_generator(seed: int, batch_index: int, device=None) -> torch.Generator:
    return generator(seed * 7_919 + batch_index, device)


def batch_conditions(sampler: Sampler, start: int, count: int, num_classes: int) -> Optional[torch.Tensor]:
    """Sample i of the run targets class i mod K: balanced classes, independent of sharding."""
    if not sampler.conditional:
        return None
    return torch.arange(start, start + count) % num_classes


def generate_batch(sampler: Sampler, ctx: SamplingContext, seeds: dict, start: int, count: int,
                   batch_index: int, steps: Optional[int] = None, device=None,
                   on_step=None, amp: bool = False, on_iterate=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One batch: (seed images, final images, conditions or −1), images in [0,1] on the CPU.

    The seeds and the sampler's noise are drawn on `device` (a generator there, the seed statistics
    moved there once by `seeds_on`): one copy back per batch, none per step."""
    rp = ctx.params
    device = torch.device(device) if device is not None else torch.device("cpu")
    gen = batch_generator(rp.seed, batch_index, device)
    cond = batch_conditions(sampler, start, count, ctx.num_classes)
    c_dev = cond.to(device) if cond is not None else None
    x0 = seed_family(rp.seeds).draw(seeds, count, gen, cond)  # groups formed from the host's copy of the conditions
    if ctx.channels_last:
        x0 = x0.contiguous(memory_format=torch.channels_last)
    objective = sampler.objective(ctx, c_dev)
    with frozen(ctx.model), autocast(device, amp):
        x = ascend(x0, objective, L2(rp.eps), rp.steps if steps is None else steps, rp.step_size,
                   noise_std=rp.noise_std, generator=gen,
                   return_best=rp.return_best, on_step=on_step, momentum=rp.momentum, on_iterate=on_iterate)
    labels = cond if cond is not None else torch.full((count,), -1, dtype=torch.int64)
    return x0.cpu(), x.cpu(), labels


def seeds_on(seeds, device):
    """A seed family's state (means, covariance factors, image pools) on `device`, where seeds are drawn."""
    if isinstance(seeds, torch.Tensor):
        return seeds.to(device)
    if isinstance(seeds, dict):
        return {k: seeds_on(v, device) for k, v in seeds.items()}
    if isinstance(seeds, list):
        return [seeds_on(v, device) for v in seeds]
    return seeds


_missing = set(SPECS) - set(SAMPLERS)
if _missing:
    raise ImportError(f"registered samplers without an objective: {', '.join(sorted(_missing))}")
SAMPLERS = {name: SAMPLERS[name] for name in SPECS}  # the registry's order


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    return (x.clamp(0, 1) * 255).round().to(torch.uint8)
