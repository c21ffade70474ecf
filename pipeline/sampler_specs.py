"""The sampler registry's facts, one entry per sampler: its name, the model it samples from, whether
it is conditional, its formula, its defaults beyond `sample.defaults`, its options, and the paper's
numbers. This is the single list: the params schema (`sample.<name>`), the CLI's choices, the
report's tables and the check of dvc.yaml's sampler list all derive from it; `pipeline.samplers`
binds one objective to every entry. Torch-free, so the schema can import it cheaply.

To add a sampler: one `spec(...)` line here and its objective (`@objective("name")`) in samplers.py.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from .errors import ParamsError
from .model_kinds import MODEL_KINDS


@dataclass(frozen=True)
class SamplerSpec:
    name: str
    model_kind: str            # a registered model kind (pipeline/model_kinds.py): classifier, contrastive
    conditional: bool
    formula: str               # J(x) ascended
    method: str                # the paper's row label
    paper_is: Optional[float]  # Wang et al. 2022, CIFAR-10, 50k samples, Inception IS / FID; None: not in the paper
    paper_fid: Optional[float]
    defaults: dict = field(default_factory=dict)
    """This sampler's values of common knobs that differ from `sample.defaults` (a reading of docs/science.md)."""
    knobs: dict = field(default_factory=dict)
    """The knobs only this sampler reads, with their defaults: its `sample.<name>` section accepts these
    and the COMMON_KNOBS, nothing else, and params.yaml lists them (tests/test_params.py checks it)."""

    @property
    def training(self) -> str:
        return MODEL_KINDS[self.model_kind].training

    @property
    def best_iterate(self) -> bool:
        """Accepts `return_best` (return the iterate with the highest objective)."""
        return "return_best" in self.knobs


COMMON_KNOBS = ("n", "batch_size", "shard_size", "steps", "step_size", "eps", "noise_std", "momentum", "seeds",
                "pca_variance", "jitter_std", "seed")
"""What every sampler reads: `sample.defaults` holds them, a sampler's section may override them. `seeds` names
a seed family (pipeline/seed_families.py); `pca_variance` and `jitter_std` are read by the family they belong to."""
CONTRASTIVE_KNOBS = {"bank_size": 1000, "tau": 0.5}
"""The bank B (M training images) and the temperature τ of f(x, b) = ĝ(x)·ĝ(b)/τ (docs/science.md §4)."""

SPECS: dict[str, SamplerSpec] = {}


def require_sampler(name: str) -> SamplerSpec:
    """The registry entry of `name`, or one line listing the registered samplers (exit 2)."""
    if name not in SPECS:
        raise ParamsError(f"unknown sampler '{name}'; choose one of {', '.join(SPECS)}")
    return SPECS[name]


def spec(name: str, *args, **kwargs) -> SamplerSpec:
    if name in SPECS:
        raise ValueError(f"sampler '{name}' is registered twice")
    kind = args[0] if args else kwargs.get("model_kind")
    if kind not in MODEL_KINDS:
        raise ValueError(f"sampler '{name}' samples from an unregistered model kind {kind!r}")
    SPECS[name] = SamplerSpec(name, *args, **kwargs)
    return SPECS[name]


# Order = the paper's table order (and the report's).
spec("ta", "classifier", True, "log p(y|x) = f(x,y) − LSE(x)", "TA", 9.26, 56.72, knobs={"return_best": False})
spec("langevin", "classifier", True, "f(x,y), with σ·ξ noise (noise_std)", "Langevin", 9.65, 63.34,
     defaults={"noise_std": 0.01})  # JEM's decoupled noise scale (reading)
spec("cs", "classifier", True, "f(x,y)", "CS", 9.77, 56.26)
spec("rcs", "classifier", True, "f(x,y) + λ·log p(y|x)", "RCS", 9.80, 55.91, knobs={"lam": 1.0})
spec("pgd_uncond", "contrastive", False, "log Σ_{b∈B} exp f(x,b)", "PGD", 5.35, 74.27, knobs={**CONTRASTIVE_KNOBS})
spec("maxent_uncond", "contrastive", False, "log Σ_{b∈B} exp f(x,b) − β·log Σ_{k≠i} exp f(xᵢ,x_k)", "MaxEnt",
     8.24, 41.80, knobs={"beta": 1.0, **CONTRASTIVE_KNOBS})
spec("pgd_cond", "contrastive", True, "log Σ_{b∈B_c} exp f(x,b)", "PGD", 5.85, 68.54,
     knobs={**CONTRASTIVE_KNOBS, "condition": "labels"})
spec("maxent_cond", "contrastive", True, "log Σ_{b∈B_c} exp f(x,b) − β·log Σ_{k≠i} exp f(xᵢ,x_k)", "MaxEnt",
     8.68, 36.44, knobs={"beta": 1.0, **CONTRASTIVE_KNOBS, "condition": "labels"})
# Beyond the paper (docs/science.md §4): its best samplers of each kind, started from PCA seeds and stepped with
# heavy-ball momentum (WEAT's two sampler-side changes). Extra rows, with their controls; no paper numbers.
BEYOND_PAPER = {"seeds": "pca", "momentum": 0.5}
spec("rcs_pca_momentum", "classifier", True, "f(x,y) + λ·log p(y|x)", "RCS + PCA seeds + momentum (ours)", None, None,
     defaults=dict(BEYOND_PAPER), knobs={"lam": 1.0})
spec("maxent_pca_momentum", "contrastive", True, "log Σ_{b∈B_c} exp f(x,b) − β·log Σ_{k≠i} exp f(xᵢ,x_k)",
     "MaxEnt + PCA seeds + momentum (ours)", None, None, defaults=dict(BEYOND_PAPER),
     knobs={"beta": 1.0, **CONTRASTIVE_KNOBS, "condition": "labels"})
