"""(a) Adversarial-training step throughput: our trainer's step vs the obvious baseline
(torchattacks PGDL2/PGD + a plain SGD step), same model, batch and threat model.

    python bench/at_throughput.py [--steps 2] [--batch 256] [--norm l2]
"""
from __future__ import annotations

import argparse
import copy

import torch
import torch.nn.functional as F

from bench.common import alternate, hardware
from pipeline import augment
from pipeline.attacks import pgd
from pipeline.models import AirbenchNet


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--norm", default="l2", choices=["l2", "linf"])
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    import torchattacks
    eps = 0.5 if args.norm == "l2" else 8 / 255
    alpha = 2.5 * eps / args.steps
    torch.manual_seed(0)
    base_model = AirbenchNet((32, 64, 128))
    images = (torch.rand(args.batch, 3, 32, 32) * 255).to(torch.uint8)
    labels = torch.randint(0, 10, (args.batch,))

    # ours: channels_last, parameters frozen during the attack, batched generator-driven augmentation
    ours = copy.deepcopy(base_model).to(memory_format=torch.channels_last)
    opt_ours = torch.optim.SGD(ours.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    gen = torch.Generator().manual_seed(0)

    def step_ours():
        x = images.float().div_(255).contiguous(memory_format=torch.channels_last)
        x = augment.crop_flip(x, gen)
        ours.eval()
        xa = pgd(ours, x, labels, args.norm, eps, args.steps, alpha, random_start=True, generator=gen)
        ours.train()
        loss = F.cross_entropy(ours(xa), labels)
        opt_ours.zero_grad(set_to_none=True)
        loss.backward()
        opt_ours.step()

    # baseline: torchattacks + torchvision transforms per image + plain SGD, default memory format
    import torchvision.transforms.v2 as T
    base = copy.deepcopy(base_model)
    opt_base = torch.optim.SGD(base.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    attack_cls = torchattacks.PGDL2 if args.norm == "l2" else torchattacks.PGD
    attack = attack_cls(base, eps=eps, alpha=alpha, steps=args.steps, random_start=True)
    tf = T.Compose([T.RandomCrop(32, padding=4, padding_mode="reflect"), T.RandomHorizontalFlip()])

    def step_base():
        x = torch.stack([tf(img) for img in images]).float() / 255
        base.eval()
        xa = attack(x, labels)
        base.train()
        loss = F.cross_entropy(base(xa), labels)
        opt_base.zero_grad()
        loss.backward()
        opt_base.step()

    t_ours, t_base = alternate(step_ours, step_base, rounds=args.rounds)
    print(f"hardware: {hardware()}")
    print(f"AT step, airbench 32/64/128, batch {args.batch}, {args.norm} PGD-{args.steps}")
    print(f"ours     {args.batch / t_ours:8.1f} img/s")
    print(f"baseline {args.batch / t_base:8.1f} img/s  (torchattacks {attack_cls.__name__} + torchvision transforms)")
    print(f"ratio ours/baseline = {t_base / t_ours:.2f}x  (target >= 1.5x)")


if __name__ == "__main__":
    main()
