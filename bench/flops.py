"""(b) The AT step's model FLOP/s (counted by torch.utils.flop_counter) as a fraction of the fp32
matmul peak measured in the same run.

    python bench/flops.py [--steps 2] [--batch 256]
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from bench.common import hardware
from pipeline.attacks import pgd
from pipeline.models import AirbenchNet


def matmul_peak(n: int = 2048, reps: int = 10) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = 0.0
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ b
        best = max(best, 2 * n ** 3 / (time.perf_counter() - t0))
    return best


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=4)
    args = ap.parse_args()
    torch.manual_seed(0)
    model = AirbenchNet((32, 64, 128)).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.rand(args.batch, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (args.batch,))

    def step():
        model.eval()
        xa = pgd(model, x, y, "l2", 0.5, args.steps, 0.625)
        model.train()
        loss = F.cross_entropy(model(xa), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    # FlopCounterMode does not follow torch.autograd.grad: count the same computation (attack
    # steps = forward + backward to the input with frozen weights; update = forward + full backward)
    # through .backward(), which runs the same kernels.
    from pipeline.attacks import frozen
    with FlopCounterMode(display=False) as counter:
        model.eval()
        for _ in range(args.steps):
            with frozen(model):
                v = x.clone().requires_grad_(True)
                F.cross_entropy(model(v), y).backward()
        model.train()
        F.cross_entropy(model(x), y).backward()
    flops = counter.get_total_flops()
    opt.zero_grad(set_to_none=True)
    step()
    times = []
    peaks = []
    for _ in range(args.rounds):  # alternate the peak measurement and the step
        peaks.append(matmul_peak())
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    t = sorted(times)[len(times) // 2]
    peak = max(peaks)
    achieved = flops / t
    print(f"hardware: {hardware()}")
    print(f"AT step (airbench 32/64/128, batch {args.batch}, L2 PGD-{args.steps}): {flops / 1e9:.1f} GFLOP per step")
    print(f"achieved {achieved / 1e9:.1f} GFLOP/s; fp32 matmul peak {peak / 1e9:.1f} GFLOP/s")
    print(f"utilisation = {achieved / peak:.1%}  (target >= 60%)")


if __name__ == "__main__":
    main()
