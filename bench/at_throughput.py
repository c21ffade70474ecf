"""(a) Adversarial-training step throughput: our trainer's step vs the obvious baseline
(torchattacks PGDL2/PGD + torchvision per-image transforms + a plain SGD step), same model, batch,
threat model and attack (PGD-k with random start).

    python -m bench.at_throughput [--steps 2] [--batch 256] [--norm l2] [--rounds 12]

Also prints, for information only, our fast AT (FGSM from a random start, one attack step) against
the same PGD-k baseline: a cheaper *attack*, so it does not count toward the target.
"""
from __future__ import annotations

import argparse
import copy
import statistics

import torch

from bench.common import baseline_at_step, hardware, our_at_step, paired, ratio_summary
from pipeline.models import AirbenchNet


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--norm", default="l2", choices=["l2", "linf"])
    ap.add_argument("--rounds", type=int, default=12)
    args = ap.parse_args()
    eps = 0.5 if args.norm == "l2" else 8 / 255
    alpha = 2.5 * eps / args.steps
    torch.manual_seed(0)
    base_model = AirbenchNet((32, 64, 128))
    images = (torch.rand(args.batch, 3, 32, 32) * 255).to(torch.uint8)
    labels = torch.randint(0, 10, (args.batch,))

    ours = our_at_step(copy.deepcopy(base_model), images, labels, args.norm, eps, args.steps, alpha)
    fast = our_at_step(copy.deepcopy(base_model), images, labels, args.norm, eps, 1, 1.25 * eps)
    base = baseline_at_step(copy.deepcopy(base_model), images, labels, args.norm, eps, args.steps, alpha)
    t_ours, t_base, t_fast = paired([ours, base, fast], rounds=args.rounds)
    med, lo, hi = ratio_summary(t_base, t_ours)
    fmed, flo, fhi = ratio_summary(t_base, t_fast)
    ips = lambda ts: args.batch / statistics.median(ts)  # noqa: E731
    print(f"hardware: {hardware()}")
    print(f"AT step, airbench 32/64/128, batch {args.batch}, {args.norm} PGD-{args.steps} with random start, "
          f"{args.rounds} rounds")
    print(f"ours     {ips(t_ours):8.1f} img/s (median)")
    print(f"baseline {ips(t_base):8.1f} img/s (median; torchattacks + torchvision transforms)")
    print(f"ratio ours/baseline = {med:.2f}x  (median of per-round ratios; min {lo:.2f}, max {hi:.2f}; "
          f"target >= 1.5x)")
    print(f"[info] our fast AT (FGSM-RS, 1 attack step) {ips(t_fast):.1f} img/s = {fmed:.2f}x the PGD-{args.steps} "
          f"baseline (min {flo:.2f}, max {fhi:.2f}); a cheaper attack, not the same one")


if __name__ == "__main__":
    main()
