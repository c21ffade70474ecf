"""Shared benchmark helpers. These machines are noisy (other tenants share the host), so A and B
are measured alternately in one process and each round gives one ratio; the median of the
per-round ratios is the result, with its spread printed beside it."""
from __future__ import annotations

import statistics
import time
from contextlib import contextmanager
from typing import Callable, Sequence

import torch
import torch.nn.functional as F


def timed(fn: Callable[[], None]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def paired(fns: Sequence[Callable[[], None]], rounds: int = 10, warmup: int = 1) -> list[list[float]]:
    """Seconds of each fn per round. Every round runs all fns once; the order rotates from round to
    round so that no fn always runs first (after a cold cache) or last."""
    for _ in range(warmup):
        for fn in fns:
            fn()
    times: list[list[float]] = [[] for _ in fns]
    k = len(fns)
    for r in range(rounds):
        for j in range(k):
            i = (j + r) % k
            times[i].append(timed(fns[i]))
    return times


def ratio_summary(num: list[float], den: list[float]) -> tuple[float, float, float]:
    """(median, min, max) of the per-round ratios num[r] / den[r]."""
    ratios = sorted(n / d for n, d in zip(num, den))
    return statistics.median(ratios), ratios[0], ratios[-1]


def hardware() -> str:
    import os
    import platform

    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads"


@contextmanager
def thread_count(threads: int | None):
    """Run a step with `threads` torch threads (None: leave as is), then restore."""
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def our_at_step(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, norm: str, eps: float,
                steps: int, alpha: float, *, channels_last: bool = True, freeze: bool = True,
                batched_augment: bool = True, threads: int | None = None, compile_model: bool = False,
                seed: int = 0) -> Callable[[], None]:
    """One step of our trainer's supervised AT + SGD. With every speed measure at its default this is
    the stage's own step (`recipes.SupervisedRecipe.train_step`); the switches build the ablation
    variants (bench.speed_ablation), which the stage does not have."""
    if channels_last and freeze and batched_augment and not compile_model:
        return _recipe_step(model, images, labels, norm, eps, steps, alpha, threads, seed)
    from pipeline import augment
    from pipeline.attacks import ascend, ce_objective, frozen, threat_model

    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    run = torch.compile(model) if compile_model else model
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    gen = torch.Generator().manual_seed(seed)
    threat = threat_model(norm, eps)
    tf = None if batched_augment else _torchvision_augment()

    def attack(x):
        def go():
            return ascend(x, ce_objective(run, labels), threat, steps, alpha, random_start=True, generator=gen)
        if freeze:
            with frozen(model):
                return go()
        return go()

    def step():
        with thread_count(threads):
            if batched_augment:
                x = augment.crop_flip(images.float().div_(255).contiguous(memory_format=fmt), gen)
            else:
                x = (torch.stack([tf(img) for img in images]).float() / 255).contiguous(memory_format=fmt)
            model.eval()
            xa = attack(x) if steps > 0 else x
            model.train()
            loss = F.cross_entropy(run(xa), labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    return step


def _recipe_step(model, images, labels, norm, eps, steps, alpha, threads, seed) -> Callable[[], None]:
    from pipeline.data import Dataset, Split
    from pipeline.params import AttackParams, RuntimeParams, SupervisedParams
    from pipeline.recipes import SupervisedRecipe
    p = SupervisedParams(seed=seed, attack=AttackParams(norm=norm, eps=eps, steps=steps, step_size=alpha),
                         eval_attack={"norm": norm, "eps": eps}, eval={"epoch_per_class": 1},
                         runtime=RuntimeParams(amp=False))
    data = Dataset(Split(images, labels), Split(images, labels), [str(c) for c in range(10)])
    recipe = SupervisedRecipe(p, data, torch.device("cpu"), model=model)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    gen = torch.Generator().manual_seed(seed)
    rows = slice(None)

    def step():
        with thread_count(threads):
            loss, _ = recipe.train_step(images, labels, gen, rows)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    return step


def _torchvision_augment():
    import torchvision.transforms.v2 as T
    return T.Compose([T.RandomCrop(32, padding=4, padding_mode="reflect"), T.RandomHorizontalFlip()])


def baseline_at_step(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, norm: str, eps: float,
                     steps: int, alpha: float) -> Callable[[], None]:
    """The obvious loop: torchattacks PGD/PGDL2, torchvision per-image transforms, plain SGD."""
    import torchattacks
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    attack_cls = torchattacks.PGDL2 if norm == "l2" else torchattacks.PGD
    attack = attack_cls(model, eps=eps, alpha=alpha, steps=steps, random_start=True)
    tf = _torchvision_augment()

    def step():
        x = torch.stack([tf(img) for img in images]).float() / 255
        model.eval()
        xa = attack(x, labels)
        model.train()
        loss = F.cross_entropy(model(xa), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()

    return step
