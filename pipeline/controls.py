"""Every feature space proves itself in the run that uses it (docs/science.md, "Why the controls").

A feature space (the judge's, Inception's) is a measuring instrument. Before any of its numbers
is used to call an ordering, it must rank image sets whose order nobody disputes:

    real held-out images  <  degraded real images (blurred, noised)  <  untouched Gaussian seeds

in FID against the reference set, each gap beyond NOISE_SIGMAS × the combined bootstrap noise, at
the samplers' N. The real images are test images (the judge never trained on them, and they are not
the reference, which is the training set); the degraded sets are the same images, so only the
degradation differs; the seeds are drawn from the class-conditional Gaussians the supervised
samplers start from. A space that fails is reported loudly and no claim is called in it.

The control sets are a registry: adding one is one `@control_set` function (an image transform of
the real set, or its own images) and its rank.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn.functional as F

NOISE_SIGMAS = 3.0
"""An ordering is called only when its gap exceeds this many combined bootstrap noise sds. Three, not
two: a run makes ~14 calls per feature space (7 claims × FID, IS); at 2 sd (4.6 % two-sided each) one
of them would be wrong by chance about every other run, at 3 sd (0.27 % each) about once in 25 runs.
The bootstrap also leaves out the reference set's and the judge's own variability."""
FAILED_LINE = "instrument failed its controls: verdicts withheld"
CONTROLS_FILE = "controls.json"
"""Beside the reference statistics: each space's control rows and whether it passed them."""


@dataclass(frozen=True)
class ControlSet:
    name: str
    rank: int
    """0 real, 1 degraded, 2 seeds: a space passes when every set of a lower rank has the lower FID."""
    description: str
    make: Callable[[torch.Tensor, torch.Tensor, dict, torch.Generator], torch.Tensor]
    """(real uint8 images, their labels, the seed statistics, a generator) -> uint8 images"""


CONTROL_SETS: dict[str, ControlSet] = {}


def control_set(name: str, rank: int, description: str):
    def deco(fn):
        CONTROL_SETS[name] = ControlSet(name, rank, description, fn)
        return fn
    return deco


def _u8(x: torch.Tensor) -> torch.Tensor:
    return (x.clamp(0, 1) * 255).round().to(torch.uint8)


@control_set("real", 0, "held-out real images (test split: never trained on, not the reference)")
def _real(images, labels, seeds, gen):
    return images


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of float images (N, C, H, W), reflect padding, radius 2σ."""
    radius = max(1, int(math.ceil(2 * sigma)))
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-t * t / (2 * sigma * sigma))
    k = (k / k.sum()).to(x.dtype)
    c = x.shape[1]
    x = F.pad(x, (radius, radius, radius, radius), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    return F.conv2d(x, k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)


NOISE_STD = 0.03
"""Mild on purpose: a control must be unambiguous. Real images plus σ = 0.1 noise (PSNR 20 dB) are a
distribution shift that classifier features rank *below* Gaussian blobs (measured in an early run's
judge space: FID 41.5 vs seeds 19.0; σ = 0.03, PSNR 30 dB: 13.8)."""
BLUR_SIGMA = 0.6
"""Equally mild in pixel terms: on CIFAR-10 test images a σ = 0.6 px blur costs PSNR 30.6 dB, as the
noise does. σ = 1 px (used until 2026-12-06) cost 25.1 dB, a 3.5 times larger squared error than the
noise's: not a mild degradation, and judges that saw pixel noise in proportion put it as far from the
data as the seeds (docs/judge.md). tests/test_controls.py checks that the two PSNRs agree."""


@control_set("blur", 1, f"the real images blurred (Gaussian, σ = {BLUR_SIGMA:g} px)")
def _blur(images, labels, seeds, gen):
    return _u8(gaussian_blur(images.float() / 255, BLUR_SIGMA))


@control_set("noise", 1, f"the real images plus Gaussian pixel noise (σ = {NOISE_STD:g})")
def _noise(images, labels, seeds, gen):
    x = images.float() / 255
    return _u8(x + NOISE_STD * torch.randn(x.shape, generator=gen))


@control_set("seeds", 2, "untouched class-conditional Gaussian seeds (what the supervised samplers start from)")
def _seeds(images, labels, seeds, gen):
    from .data import draw_seeds
    out = []
    for i in range(0, len(labels), 500):  # bounded memory: the seeds are 3,072-d Gaussians
        out.append(_u8(draw_seeds(seeds, len(labels[i:i + 500]), gen, labels[i:i + 500]).cpu()))
    return torch.cat(out)


def make_control_images(images: torch.Tensor, labels: torch.Tensor, seeds: dict, seed: int
                        ) -> dict[str, torch.Tensor]:
    """Every registered control set, from the same real images; each set draws from its own
    generator (seed, position in the registry), so adding a set changes no other."""
    return {name: cs.make(images, labels, seeds, torch.Generator().manual_seed(seed * 1_009 + i))
            for i, (name, cs) in enumerate(CONTROL_SETS.items())}


def margin(a: Optional[float], b: Optional[float]) -> float:
    """NOISE_SIGMAS × the combined noise of two numbers with bootstrap sds a and b (0 if unknown)."""
    if a is None or b is None:
        return 0.0
    return NOISE_SIGMAS * math.sqrt(a * a + b * b)


def judge_space(rows: dict[str, dict]) -> dict:
    """Does the space order the control sets as it must? `rows`: set name -> {"fid", "fid_sd", ...}.
    Returns {"passed", "checks": [text...], "failures": [text...]}: every pair of sets of adjacent
    ranks is checked (each real < each degraded, each degraded < each seeds set)."""
    checks, failures = [], []
    by_rank: dict[int, list[str]] = {}
    for name in rows:
        by_rank.setdefault(CONTROL_SETS[name].rank, []).append(name)
    ranks = sorted(by_rank)
    if len(ranks) < 3:
        failures.append(f"controls incomplete: need real, degraded and seed sets, have {', '.join(rows)}")
    for lo, hi in zip(ranks, ranks[1:]):
        for a in by_rank[lo]:
            for b in by_rank[hi]:
                ra, rb = rows[a], rows[b]
                need = margin(ra.get("fid_sd"), rb.get("fid_sd"))
                gap = rb["fid"] - ra["fid"]
                ok = gap > need
                text = (f"FID {a} {ra['fid']:.2f} < {b} {rb['fid']:.2f}: gap {gap:+.2f} vs noise ±{need:.2f} "
                        f"({'ok' if ok else 'FAILED'})")
                checks.append(text)
                if not ok:
                    failures.append(text)
    return {"passed": not failures, "checks": checks, "failures": failures}


def read_controls(folder: Path) -> Optional[dict]:
    """controls.json of `cem reference-stats`; None when absent; a CemError when unreadable."""
    from .errors import CemError
    from .files import read_json_file
    path = Path(folder) / CONTROLS_FILE
    if not path.exists():
        return None
    doc = read_json_file(path, "controls")
    spaces = doc.get("spaces")
    bad = "no 'spaces'" if not isinstance(spaces, dict) else next(
        (f"space {name!r} malformed" for name, c in spaces.items()
         if not isinstance(c, dict) or not isinstance(c.get("passed"), bool) or not isinstance(c.get("sets"), dict)),
        None)
    if bad:
        raise CemError(f"{path} is not a controls file written by `cem reference-stats` ({bad}); "
                       "rerun `cem reference-stats`")
    return doc
