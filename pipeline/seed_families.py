"""Seed families: where a sampler's chain starts (docs/science.md §4), registered by name.

A family turns the statistics `cem prepare` fitted (seeds.pt: a Gaussian per class and one overall)
into a *state* once per stage (`prepare`), then draws seed images from it per batch (`draw`), on the
batch generator's device. `sample.<name>.seeds` picks one; the family's own knob is read only when it
is picked (and only then enters the shards' config hash, so the default keeps every hash and shard).

    gaussian     N(μ_c, Σ_c + ridge·I): the paper's class-conditional Gaussian (the default)
    pca          the same Gaussian restricted to its top principal components, keeping a share
                 `pca_variance` of the class's pixel variance (WEAT, Mirza et al. 2024): the
                 low-variance directions — mostly high-frequency noise — are dropped
    data_jitter  a real training image of the class plus N(0, jitter_std²) noise: a *control*
                 (how far the model moves an image that is already real), not a sampler to advertise

To add a family: one `family(...)` entry here (its knobs in `KNOBS`) and its tests. Torch is imported
inside the functions, so the params schema can import the names without it.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable, Optional

KNOBS = {"pca_variance": 0.95, "jitter_std": 0.1}
"""Every family knob with its default (sample.defaults lists them; each is read by one family)."""


@dataclass(frozen=True)
class SeedFamily:
    name: str
    description: str
    knobs: tuple[str, ...]          # the knobs this family reads (they enter the config hash when it is picked)
    needs_training_images: bool
    factory: Callable               # () -> (prepare, draw); called on first use (it imports torch)

    @property
    def prepare(self) -> Callable:
        """(stats, rp, train_images, train_labels) -> state, once per stage."""
        return _ops(self.name)[0]

    @property
    def draw(self) -> Callable:
        """(state, n, generator, condition) -> n seed images in [0, 1], on the generator's device."""
        return _ops(self.name)[1]


FAMILIES: dict[str, SeedFamily] = {}


def family(name: str, description: str, knobs: tuple[str, ...] = (), needs_training_images: bool = False):
    def deco(factory):
        if name in FAMILIES:
            raise ValueError(f"seed family '{name}' is registered twice")
        unknown = set(knobs) - set(KNOBS)
        if unknown:
            raise ValueError(f"seed family '{name}' reads unregistered knobs {sorted(unknown)}")
        FAMILIES[name] = SeedFamily(name, description, tuple(knobs), needs_training_images, factory)
        return factory
    return deco


@functools.lru_cache(maxsize=None)
def _ops(name: str) -> tuple[Callable, Callable]:
    return FAMILIES[name].factory()


def seed_family(name: str) -> SeedFamily:
    from .errors import ParamsError
    if name not in FAMILIES:
        raise ParamsError(f"unknown seed family '{name}'; choose one of {', '.join(FAMILIES)}")
    return FAMILIES[name]


# ----------------------------------------------------------------------------- gaussian
@family("gaussian", "class-conditional Gaussian N(μ_c, Σ_c + ridge·I) of the training images (the paper's)")
def _gaussian():
    from .data import draw_seeds
    return (lambda stats, rp, images, labels: stats), draw_seeds


# ----------------------------------------------------------------------------- pca
def pca_factor(factor, iso_std: float, share: float):
    """The top principal components of Σ = F Fᵀ + s²·I keeping `share` of its trace, as a factor
    P = V_k √Λ_k (so P Pᵀ is Σ restricted to them). F must be principal (data.gaussian_factor:
    orthogonal columns sorted by decreasing norm), so the components are F's first columns and no
    decomposition runs here; component j's variance is |F_j|² + s²."""
    import torch
    f = factor.to(torch.float64)
    d = f.shape[0]
    col = f.pow(2).sum(0)
    total = float(col.sum()) + d * iso_std ** 2
    cum = torch.cumsum(col + iso_std ** 2, 0) / total
    rank = max(int((col > float(col[0]) * 1e-12).sum()), 1)  # a thin factor's null columns have no direction
    k = min(int(torch.searchsorted(cum, torch.tensor(share, dtype=cum.dtype))) + 1, rank)
    # each kept column rescaled to carry the isotropic part too (a factor of exactly 1 when s = 0)
    return (f[:, :k] * ((col[:k] + iso_std ** 2) / col[:k]).sqrt()).float(), k


@family("pca", "the class Gaussian on its top principal components, keeping `pca_variance` of the variance (WEAT)",
        knobs=("pca_variance",))
def _pca():
    from .data import draw_seeds

    def prepare(stats, rp, images, labels):
        def truncate(g):
            factor, k = pca_factor(g["factor"], float(g["iso_std"]), rp.pca_variance)
            return {"mean": g["mean"], "factor": factor, "iso_std": 0.0, "components": k}
        return {**stats, "all": truncate(stats["all"]), "classes": [truncate(g) for g in stats["classes"]]}
    return prepare, draw_seeds


# ----------------------------------------------------------------------------- data_jitter
@family("data_jitter", "a real training image of the class plus N(0, jitter_std²) noise (a control)",
        knobs=("jitter_std",), needs_training_images=True)
def _data_jitter():
    import torch

    def prepare(stats, rp, images, labels):
        return {"classes": [images[labels == c] for c in range(len(stats["classes"]))], "all": images,
                "std": float(rp.jitter_std)}

    def draw(state, n: int, gen, condition: Optional["torch.Tensor"] = None):
        from .rng import draw_device
        pool_all = state["all"]
        dev = draw_device(gen, pool_all)
        shape = tuple(pool_all.shape[1:])
        out = torch.empty(n, *shape, device=dev)
        condition = condition.cpu() if condition is not None else None
        groups = [(None, torch.arange(n, device=dev))] if condition is None else \
            [(c, torch.nonzero(condition == c).flatten().to(dev)) for c in torch.unique(condition).tolist()]
        for c, idx in groups:
            pool = pool_all if c is None else state["classes"][c]
            pick = torch.randint(0, len(pool), (len(idx),), generator=gen, device=dev)
            x = pool.to(dev)[pick].float() / 255
            out[idx] = x + state["std"] * torch.randn(x.shape, generator=gen, device=dev)
        return out.clamp_(0, 1)
    return prepare, draw


def hashed_knobs(params: dict) -> dict:
    """The seed knobs that determine a run's seeds: none for the default family (so the config hash
    of every run before seed families existed is unchanged), else the family and its own knobs."""
    name = params.pop("seeds", "gaussian")
    own = {k: params.pop(k) for k in list(KNOBS) if k in params}
    if name == "gaussian":
        return {}
    return {"seeds": name, **{k: own[k] for k in FAMILIES[name].knobs if k in own}}
