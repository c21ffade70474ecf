"""`cem tune NAME`: choose a sampler's step count (and optionally step size and momentum) on held-out
real images, never on the reference set the report scores against (docs/science.md §4).

Tuning on the test metric — sweeping steps until the reported FID is lowest — flatters a sampler. Here
the curve is measured against the prepared **test** split (minus any image whose bytes also occur in the
training split, from which the reference set is drawn), so the report's numbers stay out-of-sample. One
chain per (step size, momentum) setting serves every step count: the iterate after t steps is exactly
what a run of t steps returns (`attacks.ascend`'s `on_iterate`). The chains draw from their own seed
(`tune.seed`), never the reported samples. Each setting gets FID and IS in every enabled space with
bootstrap noise; the choice is the cheapest setting whose FID (primary space: Inception when enabled,
else the judge's) is within one combined noise of the best — the one-standard-error rule.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from .errors import CemError
from .progress import progress_bar

RULE = ("the fewest steps (then the smallest step size and momentum) whose held-out FID is within one combined "
        "bootstrap sd of the lowest")


TUNE_BATCHES = 1_000_000_000
"""Tuning chains use batch indices from here on; a sample run's are < 1,000,000 (n ≤ 1,000,000): the two
never draw the same seeds or noise."""


@dataclass
class HeldOut:
    images: torch.Tensor
    labels: torch.Tensor
    dropped: int  # test images whose bytes also occur in the training split


def image_keys(images: torch.Tensor) -> set[bytes]:
    return {bytes(img.contiguous().numpy()) for img in images}


def heldout_split(test_images: torch.Tensor, test_labels: torch.Tensor, train_images: torch.Tensor,
                  per_class: Optional[int], seed: int) -> HeldOut:
    """The tuning set: test images (optionally a stratified subset), minus every image whose bytes also
    occur among the training images — so it is disjoint from any reference set drawn from them."""
    from .data import stratified_indices
    idx = stratified_indices(test_labels, per_class, seed)
    images, labels = test_images[idx], test_labels[idx]
    seen = image_keys(train_images)
    keep = torch.tensor([bytes(img.contiguous().numpy()) not in seen for img in images], dtype=torch.bool)
    if int(keep.sum()) < 2:
        raise CemError("fewer than 2 held-out test images are left once those also in the training split are "
                       "removed: prepare more test images (data.test_per_class)")
    return HeldOut(images[keep], labels[keep], int((~keep).sum()))


def check_tunable(name: str, rp) -> None:
    if rp.return_best:
        raise CemError(f"tune {name}: return_best returns the best iterate, not the chain's: tune it with "
                       f"sample.{name}.return_best=false")


def settings(tp, rp) -> list[tuple[float, float]]:
    """Every (step size, momentum) pair to try; an empty list keeps the sampler's own value."""
    return list(itertools.product(tp.step_size or [rp.step_size], tp.momentum or [rp.momentum]))


def chains(name: str, rp, ctx, sampler, seeds, tp, device, amp: bool = False) -> dict[tuple, torch.Tensor]:
    """uint8 samples after each of `tp.steps` steps, per setting: {(step_size, momentum, steps): images}."""
    from .samplers import generate_batch, to_uint8
    check_tunable(name, rp)
    wanted = set(tp.steps)
    out: dict[tuple, list] = {}
    grid = settings(tp, rp)
    batches = math.ceil(tp.n / rp.batch_size)
    with progress_bar(f"tune {name}", len(grid) * tp.n) as advance:
        for step_size, momentum in grid:
            ctx.params = rp.model_copy(update={"step_size": step_size, "momentum": momentum})
            for b in range(batches):
                start = b * rp.batch_size
                count = min(rp.batch_size, tp.n - start)

                def keep(t, x, key=(step_size, momentum)):
                    if t in wanted:
                        out.setdefault((*key, t), []).append(to_uint8(x.float()).cpu())
                generate_batch(sampler, ctx, seeds, start, count, TUNE_BATCHES + tp.seed * 1_000_000 + b,
                               steps=max(tp.steps), device=device, amp=amp, on_iterate=keep)
                advance(count)
    ctx.params = rp
    return {k: torch.cat(v) for k, v in out.items()}


def score_settings(samples: dict[tuple, torch.Tensor], heldout: HeldOut, spaces: list, batch_size: int,
                   kid_subset_size: int, device) -> list[dict]:
    """FID/KID/IS (± bootstrap sd) of every setting's samples against the held-out set's statistics."""
    from torch_fidelity.metric_fid import fid_features_to_statistics

    from .metrics import ReferenceStats, extract, fid_bootstrap_sd, is_bootstrap_sd, metrics_from_features
    rows = {key: {"step_size": key[0], "momentum": key[1], "steps": key[2]} for key in sorted(samples)}
    for space in spaces:
        feats = extract(space, heldout.images, batch_size, device, "held-out", layers=(space.fid_layer,))
        f = feats[space.fid_layer]
        st = fid_features_to_statistics(f)
        ref = ReferenceStats(st["mu"], st["sigma"], f.numpy().astype("float32"), {"n": len(f)})
        for key, images in sorted(samples.items()):
            sf = extract(space, images, batch_size, device, f"tune steps={key[2]}")
            m = metrics_from_features(sf, ref, space, kid_subset_size)
            m["fid_sd"] = fid_bootstrap_sd(sf[space.fid_layer], ref, device=device)
            if space.isc_layer is not None:
                m["is_sd"] = is_bootstrap_sd(sf[space.isc_layer])
            rows[key][space.name] = {k: v for k, v in m.items() if k in ("fid", "fid_sd", "is", "is_sd", "kid")}
    return list(rows.values())


def choose(rows: list[dict], space: str) -> dict:
    """The one-standard-error rule on FID in `space` (see RULE)."""
    scored = [r for r in rows if isinstance(r.get(space, {}).get("fid"), float)]
    if not scored:
        raise CemError(f"no setting has a finite FID in the {space} space")
    best = min(scored, key=lambda r: r[space]["fid"])
    sd = lambda r: r[space].get("fid_sd") or 0.0  # noqa: E731
    close = [r for r in scored if r[space]["fid"] - best[space]["fid"] <= math.hypot(sd(r), sd(best))]
    return min(close, key=lambda r: (r["steps"], r["step_size"], r["momentum"]))


def plot_curve(rows: list[dict], space: str, name: str, chosen: dict, path: Path) -> None:
    """FID and IS against steps, one line per (step size, momentum), bars = ± bootstrap sd."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2), dpi=110)
    keys = sorted({(r["step_size"], r["momentum"]) for r in rows})
    for ax, metric, arrow in ((axes[0], "fid", "↓"), (axes[1], "is", "↑")):
        for ss, mu in keys:
            line = [r for r in rows if (r["step_size"], r["momentum"]) == (ss, mu)
                    and isinstance(r.get(space, {}).get(metric), float)]
            if not line:
                continue
            ax.errorbar([r["steps"] for r in line], [r[space][metric] for r in line],
                        yerr=[r[space].get(f"{metric}_sd") or 0 for r in line], marker="o", ms=3, capsize=2,
                        label=f"step {ss:g}, μ {mu:g}")
        if metric in chosen.get(space, {}):
            ax.axvline(chosen["steps"], color="grey", ls="--", lw=0.8)
        ax.set_xlabel("steps")
        ax.set_title(f"{name}: held-out {metric.upper()} ({space}) {arrow}", fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)
