"""bf16 autocast vs fp32 for the supervised AT step on this CPU: the measurement behind
`runtime.amp: auto`'s CPU rule (docs/performance.md). Both steps are the stage's own
`recipes.SupervisedRecipe.train_step` + SGD (airbench 32/64/128, L2 PGD-2), alternated in one process;
the result is the median of the per-round speed ratios.

    python -m bench.cpu_amp [--rounds 6] [--batch 256]
    python -m bench.cpu_amp --tiny        # tiny shapes: checks the script runs (tests/test_bench.py)

On a CPU without native bf16 (AVX2 only) the bf16 step is ~500x slower: expect minutes per round there.
"""
from __future__ import annotations

import argparse
import copy
import statistics

import torch

from bench.common import hardware, paired, ratio_summary


def at_step(model, images, labels, amp: bool):
    from pipeline.data import Dataset, Split
    from pipeline.params import AttackParams, RuntimeParams, SupervisedParams
    from pipeline.recipes import SupervisedRecipe
    p = SupervisedParams(attack=AttackParams(norm="l2", eps=0.5, steps=2, step_size=0.625),
                         eval_attack={"norm": "l2", "eps": 0.5}, eval={"epoch_per_class": 1},
                         runtime=RuntimeParams(amp=amp))
    data = Dataset(Split(images, labels), Split(images, labels), [str(c) for c in range(10)])
    recipe = SupervisedRecipe(p, data, torch.device("cpu"), model=model)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    gen = torch.Generator().manual_seed(0)

    def step():
        loss, _ = recipe.train_step(images, labels, gen, slice(None))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def main(argv=None) -> float:
    from pipeline.models import AirbenchNet
    from pipeline.runtime import cpu_bf16_flag
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--tiny", action="store_true")
    args = ap.parse_args(argv)
    widths, bs, rounds = ((8, 16, 32), 4, 1) if args.tiny else ((32, 64, 128), args.batch, args.rounds)
    torch.manual_seed(0)
    base = AirbenchNet(widths)
    images = (torch.rand(bs, 3, 32, 32) * 255).to(torch.uint8)
    labels = torch.randint(0, 10, (bs,))
    t32, t16 = paired([at_step(copy.deepcopy(base), images, labels, False),
                       at_step(copy.deepcopy(base), images, labels, True)], rounds=rounds)
    med, lo, hi = ratio_summary(t32, t16)
    print(f"hardware: {hardware()}; native bf16 flag: {cpu_bf16_flag()}")
    print(f"AT step, airbench {'/'.join(map(str, widths))}, batch {bs}, L2 PGD-2, {rounds} rounds: "
          f"fp32 {bs / statistics.median(t32):.1f} img/s, bf16 autocast {bs / statistics.median(t16):.1f} img/s")
    print(f"bf16 speed / fp32 speed = {med:.2f}x (median of per-round ratios; min {lo:.2f}, max {hi:.2f})")
    return med


if __name__ == "__main__":
    main()
