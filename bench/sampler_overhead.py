"""(c) Sampling-loop overhead over the model's raw fwd+bwd (gradient wrt the input) for the same
number of steps, per sampler.

    python bench/sampler_overhead.py [--batch 250] [--steps 20]
"""
from __future__ import annotations

import argparse

import torch

from bench.common import hardware, paired, ratio_summary
from pipeline.data import fit_seeds, Split
from pipeline.models import AirbenchNet, ContrastiveModel
from pipeline.params import ArchParams, parse_params
from pipeline.samplers import SAMPLERS, SamplingContext, generate_batch


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=250)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--samplers", default="ta,cs,rcs,langevin,pgd_cond,maxent_uncond")
    args = ap.parse_args()
    torch.manual_seed(0)
    imgs = (torch.rand(400, 3, 32, 32) * 255).to(torch.uint8)
    seeds = fit_seeds(Split(imgs, torch.arange(400) % 10), 10, 1e-4)
    clf = AirbenchNet((32, 64, 128)).eval()
    enc = ContrastiveModel(ArchParams()).eval()
    for m in (clf, enc):
        for p in m.parameters():
            p.requires_grad_(False)
    print(f"hardware: {hardware()}")
    print(f"batch {args.batch}, {args.steps} steps; raw = {args.steps} x (forward + backward to the input)")
    for name in args.samplers.split(","):
        sampler = SAMPLERS[name]
        rp = parse_params({"sample": {"defaults": {"steps": args.steps}}}).sample.resolved(name)
        model = clf if sampler.model_kind == "classifier" else enc
        ctx = SamplingContext(model, rp, 10)
        if sampler.model_kind == "contrastive":
            with torch.no_grad():
                ctx.bank_z = enc.embed(imgs[:rp.bank_size].float() / 255)
            ctx.bank_cond = (torch.arange(400) % 10)[:rp.bank_size]
        x = torch.rand(args.batch, 3, 32, 32)
        fwd = (lambda v: model(v).sum()) if sampler.model_kind == "classifier" else (lambda v: model.embed(v).sum())

        def raw():
            for _ in range(args.steps):
                v = x.clone().requires_grad_(True)
                torch.autograd.grad(fwd(v), v)

        def sample():
            generate_batch(sampler, ctx, seeds, 0, args.batch, 0)

        t_raw, t_sample = paired([raw, sample], rounds=args.rounds)
        med, lo, hi = ratio_summary(t_sample, t_raw)
        print(f"{name:14s} overhead {med - 1:+.1%} (median of per-round ratios; min {lo - 1:+.1%}, max {hi - 1:+.1%}; "
              f"target <= +10%)")


if __name__ == "__main__":
    main()
