"""(b) The AT step's model FLOP/s (counted by torch.utils.flop_counter) as a fraction of the fp32
matmul peak measured in the same run.

    python -m bench.flops [--steps 2] [--batch 256] [--rounds 8]

Each round measures the peak (best of a few 2048² matmuls) and then the AT step (best of a few
consecutive steps, as a training loop runs them) right after it, so both see the same load on this
shared machine; the utilisation is the median over rounds of (step FLOP/s) / (peak of that round).
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from bench.common import hardware, our_at_step, timed
from pipeline.attacks import frozen
from pipeline.models import AirbenchNet


def matmul_peak(n: int = 2048, reps: int = 5) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = 0.0
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ b
        best = max(best, 2 * n ** 3 / (time.perf_counter() - t0))
    return best


def count_step_flops(model, x, y, steps: int) -> int:
    """FlopCounterMode does not follow torch.autograd.grad: count the same computation (attack
    steps = forward + backward to the input with frozen weights; update = forward + full backward)
    through .backward(), which runs the same kernels."""
    with FlopCounterMode(display=False) as counter:
        model.eval()
        for _ in range(steps):
            with frozen(model):
                v = x.clone().requires_grad_(True)
                F.cross_entropy(model(v), y).backward()
        model.train()
        F.cross_entropy(model(x), y).backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--steps-per-round", type=int, default=3)
    args = ap.parse_args()
    torch.manual_seed(0)
    model = AirbenchNet((32, 64, 128)).to(memory_format=torch.channels_last)
    images = (torch.rand(args.batch, 3, 32, 32) * 255).to(torch.uint8)
    y = torch.randint(0, 10, (args.batch,))
    x = (images.float() / 255).contiguous(memory_format=torch.channels_last)
    flops = count_step_flops(model, x, y, args.steps)
    step = our_at_step(model, images, y, "l2", 0.5, args.steps, 2.5 * 0.5 / args.steps)
    step()
    utils, peaks, rates = [], [], []
    for _ in range(args.rounds):
        peak = matmul_peak()
        rate = flops / min(timed(step) for _ in range(args.steps_per_round))
        peaks.append(peak)
        rates.append(rate)
        utils.append(rate / peak)
    print(f"hardware: {hardware()}")
    print(f"AT step (airbench 32/64/128, batch {args.batch}, L2 PGD-{args.steps}, our trainer's step incl. "
          f"augmentation and SGD): {flops / 1e9:.1f} GFLOP per step")
    print(f"achieved {statistics.median(rates) / 1e9:.1f} GFLOP/s; fp32 matmul peak {statistics.median(peaks) / 1e9:.1f} "
          f"GFLOP/s (medians over {args.rounds} rounds)")
    print(f"utilisation = {statistics.median(utils):.1%}  (median of per-round ratios; min {min(utils):.1%}, "
          f"max {max(utils):.1%}; target >= 60%)")


if __name__ == "__main__":
    main()
