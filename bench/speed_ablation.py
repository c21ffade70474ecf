"""What each of our AT step's speed measures is worth: the full step against the same step with one
measure switched off (or one option switched on), all measured alternately in one process.

    python -m bench.speed_ablation [--rounds 8] [--no-compile]

Variants: channels_last off; parameters not frozen during the attack; torchvision per-image
augmentation instead of the batched one; 1 thread instead of all; torch.compile of the model.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

from bench.common import hardware, our_at_step, paired, ratio_summary
from pipeline.models import AirbenchNet


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile variant")
    args = ap.parse_args()
    torch.manual_seed(0)
    model = AirbenchNet((32, 64, 128))
    images = (torch.rand(args.batch, 3, 32, 32) * 255).to(torch.uint8)
    labels = torch.randint(0, 10, (args.batch,))
    variants = {
        "ours (all measures on)": {},
        "channels_last off": {"channels_last": False},
        "parameters not frozen in the attack": {"freeze": False},
        "torchvision per-image augmentation": {"batched_augment": False},
        "1 thread": {"threads": 1},
    }
    if not args.no_compile:
        variants["torch.compile (inductor)"] = {"compile_model": True}
    steps = {name: our_at_step(copy.deepcopy(model), images, labels, "l2", 0.5, args.steps, 2.5 * 0.5 / args.steps,
                               **kw) for name, kw in variants.items()}
    if "torch.compile (inductor)" in steps:
        t0 = time.perf_counter()
        steps["torch.compile (inductor)"]()
        steps["torch.compile (inductor)"]()
        print(f"torch.compile: first two steps took {time.perf_counter() - t0:.1f} s (compilation)")
    times = dict(zip(steps, paired(list(steps.values()), rounds=args.rounds)))
    ref = times["ours (all measures on)"]
    print(f"hardware: {hardware()}")
    print(f"AT step, airbench 32/64/128, batch {args.batch}, L2 PGD-{args.steps}, {args.rounds} rounds")
    print(f"{'variant':40s} {'img/s':>8s}  speed vs ours (median per-round ratio, min-max)")
    for name, ts in times.items():
        med, lo, hi = ratio_summary(ref, ts)
        print(f"{name:40s} {args.batch / statistics.median(ts):8.1f}  {med:.2f}x ({lo:.2f}-{hi:.2f})")


if __name__ == "__main__":
    main()
