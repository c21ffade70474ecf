"""GPU throughput of the pipeline's own steps: img/s (samples/s), achieved TFLOP/s with the model
FLOPs counted by torch.utils.flop_counter, and the share of a bf16 matmul peak measured in the same
run. Every step is the stage's code: `recipes.SupervisedRecipe/ContrastiveRecipe.train_step` + SGD,
and `samplers.generate_batch` (bf16 autocast where `runtime.amp: auto` picks it).

    python -m bench.gpu                       # on a GPU: the issue-12 table
    python -m bench.gpu --compile             # the same with runtime.compile
    python -m bench.gpu --quick               # the acceptance run's subset (scripts/gpu_acceptance.sh)
    python -m bench.gpu --tiny                # CPU, tiny shapes: checks the script runs (tests/test_bench.py)

Cases: ResNet-50 PGD-7 AT (bs 128 and 512), ResNet-18 PGD-3 AT (bs 512), contrastive AT ResNet-18
(bs 512, PGD-3 L∞ on both views, as the gpu profile), standard training (the judge) of both, and the
classifier samplers on ResNet-50 (bs 500) and every sampler on ResNet-18 (bs 2000), 60 steps. Each row
also gives its first call's seconds (compilation under --compile, cuDNN autotuning). `--out docs/gpu_throughput.json` feeds the GPU time
estimate that `cem profile gpu|paper` prints.
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from bench.common import hardware
from pipeline.attacks import frozen
from pipeline.data import Dataset, Split
from pipeline.params import RuntimeParams, SupervisedParams, UnsupervisedParams, parse_params
from pipeline.sampler_specs import SPECS


@dataclass
class Case:
    name: str
    run: callable          # one call = one step (or one sampler batch)
    items: int             # images (or samples) per call
    flops: float           # model FLOPs per call (counted)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def bf16_peak(device, n: int, reps: int = 10) -> float:
    """FLOP/s of the best of `reps` n×n bf16 matmuls (the card's practical peak for this run)."""
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    a @ b
    sync(device)
    best = 0.0
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ b
        sync(device)
        best = max(best, 2 * n ** 3 / (time.perf_counter() - t0))
    return best


def seconds_per_call(fn, device, reps: int, warmup: int = 2) -> tuple[float, float]:
    """(seconds per call after warm-up, seconds of the first call: compilation, cuDNN autotuning)."""
    t0 = time.perf_counter()
    fn()
    sync(device)
    first = time.perf_counter() - t0
    for _ in range(warmup - 1):
        fn()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    sync(device)
    return (time.perf_counter() - t0) / reps, first


def _count(fn) -> float:
    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


def attack_like_flops(model: torch.nn.Module, x, passes: int, full_backward: bool) -> float:
    """FLOPs of `passes` forward + input-gradient backward passes (the attack or sampler steps;
    counted through .backward() with frozen weights, since FlopCounterMode does not follow
    autograd.grad), plus one forward + full backward when `full_backward` (the update)."""
    def go():
        for _ in range(passes):
            with frozen(model):
                v = x.clone().requires_grad_(True)
                model(v).float().sum().backward()
        if full_backward:
            model(x).float().sum().backward()
    flops = _count(go)
    model.zero_grad(set_to_none=True)
    return flops


def synthetic(n: int, device) -> Dataset:
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=gen)
    labels = torch.arange(n) % 10
    return Dataset(Split(images, labels), Split(images, labels), [str(c) for c in range(10)])


def resident(data: Dataset, device):
    """The batch and the generator as `train.run_loop` hands them to a step: the uint8 images and
    labels already on the device, the random draws made there (no host traffic in the step)."""
    from pipeline.rng import generator
    return data.train.images.to(device), data.train.labels.to(device), generator(0, device)


def at_case(arch: str, steps: int, bs: int, device, runtime: dict, tiny: bool) -> Case:
    from pipeline.recipes import SupervisedRecipe
    data = synthetic(bs, device)
    p = SupervisedParams.model_validate({
        "arch": {"name": arch, **({"widths": [8, 16, 32]} if arch == "airbench" else {})},
        "attack": {"norm": "l2", "eps": 0.5 if steps else 0.0, "steps": steps},
        "eval": {"epoch_per_class": 1},
        "runtime": runtime})
    recipe = SupervisedRecipe(p, data, device)
    opt = torch.optim.SGD(recipe.model.parameters(), lr=0.01, momentum=0.9)
    xb, yb, gen = resident(data, device)
    rows = slice(None)

    def step():
        loss, _ = recipe.train_step(xb, yb, gen, rows)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    x = data.train.images.to(device).float().div(255).contiguous(memory_format=torch.channels_last)
    flops = attack_like_flops(recipe.model, x, steps, True)
    label = f"{arch} PGD-{steps} AT" if steps > 0 else f"{arch} standard training"  # names gpu_estimate reads
    return Case(f"{label}, bs {bs}", step, bs, flops)


def contrastive_case(arch: str, steps: int, bs: int, device, runtime: dict) -> Case:
    from pipeline.recipes import ContrastiveRecipe
    data = synthetic(bs, device)
    p = UnsupervisedParams.model_validate({
        "arch": {"name": arch, **({"widths": [8, 16, 32]} if arch == "airbench" else {})},
        "attack": {"norm": "linf", "eps": 8 / 255, "steps": steps, "step_size": 2 / 255},
        "optim": {"batch_size": bs}, "eval": {"epoch_per_class": 1},
        "probe": {"train_per_class": None}, "runtime": runtime})
    recipe = ContrastiveRecipe(p, data, device)
    opt = torch.optim.SGD(recipe.model.parameters(), lr=0.01, momentum=0.9)
    xb, yb, gen = resident(data, device)

    def step():
        loss, _ = recipe.train_step(xb, yb, gen, slice(None))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    x = data.train.images.to(device).float().div(255).contiguous(memory_format=torch.channels_last)
    x2 = torch.cat([x, x])  # two views: the attack moves both; the update sees four
    flops = attack_like_flops(recipe.model, x2, steps, False) + attack_like_flops(recipe.model, torch.cat([x2, x2]), 0, True)
    return Case(f"contrastive AT {arch} PGD-{steps}, bs {bs}", step, bs, flops)


def sampler_cases(arch: str, bs: int, steps: int, device, runtime: dict, names) -> list[Case]:
    from pipeline.data import fit_seeds
    from pipeline.models import ContrastiveModel, build_classifier
    from pipeline.params import ArchParams
    from pipeline.runtime import amp_decision, maybe_compile
    from pipeline.samplers import SAMPLERS, SamplingContext, generate_batch, seeds_on
    from pipeline.seed_families import seed_family
    rt = RuntimeParams(**runtime)
    amp, _ = amp_decision(rt, device)
    a = ArchParams(name=arch, **({"widths": [8, 16, 32]} if arch == "airbench" else {}))
    data = synthetic(max(bs, 40), device)
    stats = fit_seeds(data.train, 10, 1e-4)
    prepared: dict = {}  # a family's state once per (family, knobs): PCA's eigendecompositions are not free
    nets = {"classifier": build_classifier(a, 10), "contrastive": ContrastiveModel(a, 128)}
    out = []
    for name in names:
        sampler = SAMPLERS[name]
        model = nets[sampler.model_kind].to(device).to(memory_format=torch.channels_last).eval()
        rp = parse_params({"sample": {"defaults": {"steps": steps, "n": bs, "batch_size": bs, "shard_size": bs},
                                      **({name: {"bank_size": 40}} if sampler.model_kind == "contrastive" else {})}}
                          ).sample.resolved(name)
        ctx = SamplingContext(maybe_compile(model, rt), rp, 10)
        key = (rp.seeds, rp.pca_variance, rp.jitter_std)
        if key not in prepared:  # as sampling.prepare_context does
            prepared[key] = seeds_on(seed_family(rp.seeds).prepare(stats, rp, data.train.images, data.train.labels),
                                     device)
        seeds = prepared[key]
        if sampler.model_kind == "contrastive":
            with torch.no_grad():
                ctx.bank_z = model(data.train.images[:40].to(device).float() / 255)
            ctx.bank_cond = data.train.labels[:40].to(device)

        def run(sampler=sampler, ctx=ctx, seeds=seeds):
            generate_batch(sampler, ctx, seeds, 0, bs, 0, device=device, amp=amp)
        x = torch.rand(bs, 3, 32, 32, device=device).contiguous(memory_format=torch.channels_last)
        flops = steps * attack_like_flops(model, x, 1, False)  # one step counted, times the steps
        out.append(Case(f"sampler {name} {arch}, {steps} steps, bs {bs}", run, bs, flops))
    return out


QUICK_SAMPLERS = {"resnet50": ["cs", "rcs"], "resnet18": ["cs", "maxent_cond"]}
"""--quick (the GPU acceptance run, scripts/gpu_acceptance.sh): the training cases at bs 512 and two
samplers per network, 3 timed calls each: under a minute of a lent GPU. (The acceptance's `dvc repro`
measures every sampler on ResNet-18 at the gpu profile's N in its sample stages.)"""


def build_cases(args, device, runtime) -> list:
    """The cases as (name, builder): built one at a time, so that under --compile each gets a fresh
    compile state (torch._dynamo.reset) and none silently runs an earlier case's graph or none."""
    names = args.samplers.split(",")
    if args.tiny:
        return [("airbench PGD-1", lambda: [at_case("airbench", 1, 8, device, runtime, True)]),
                ("resnet18 PGD-1", lambda: [at_case("resnet18", 1, 2, device, runtime, True)]),
                ("airbench standard", lambda: [at_case("airbench", 0, 8, device, runtime, True)]),
                ("contrastive airbench", lambda: [contrastive_case("airbench", 1, 8, device, runtime)]),
                ("samplers airbench", lambda: sampler_cases("airbench", 8, 2, device, runtime, names))]
    r50_samplers = [n for n in names if SPECS[n].model_kind == "classifier"]  # ResNet-50: the classifier samplers
    r18_samplers = names
    if args.quick:
        r50_samplers = [n for n in r50_samplers if n in QUICK_SAMPLERS["resnet50"]]
        r18_samplers = [n for n in names if n in QUICK_SAMPLERS["resnet18"]]
    return [("resnet50 PGD-7 bs128", lambda: [] if args.quick else [at_case("resnet50", 7, 128, device, runtime, False)]),
            ("resnet50 PGD-7 bs512", lambda: [at_case("resnet50", 7, 512, device, runtime, False)]),
            ("resnet18 PGD-3 bs512", lambda: [at_case("resnet18", 3, 512, device, runtime, False)]),
            ("contrastive resnet18", lambda: [contrastive_case("resnet18", 3, 512, device, runtime)]),
            ("resnet50 standard", lambda: [at_case("resnet50", 0, 512, device, runtime, False)]),
            ("resnet18 standard", lambda: [at_case("resnet18", 0, 512, device, runtime, False)]),
            # ResNet-50 at the paper profile's sampler batch (500): at 2000 its saved activations need ~47 GiB
            ("samplers resnet50", lambda: sampler_cases("resnet50", 500, 60, device, runtime, r50_samplers)),
            ("samplers resnet18", lambda: sampler_cases("resnet18", 2000, 60, device, runtime, r18_samplers))]


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--tiny", action="store_true", help="CPU-sized shapes: checks that every case runs")
    ap.add_argument("--quick", action="store_true", help="fewer cases and calls (the GPU acceptance run)")
    ap.add_argument("--compile", action="store_true", help="runtime.compile: true")
    ap.add_argument("--only", default="", help="only the case groups whose name contains this text")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--samplers", default=",".join(SPECS), help="comma-separated; default: every registered sampler")
    ap.add_argument("--out", help="also write the table as JSON")
    args = ap.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    unknown = set(args.samplers.split(",")) - set(SPECS)
    if unknown:
        ap.error(f"unknown samplers {sorted(unknown)}; registered: {', '.join(SPECS)}")
    runtime = {"amp": "auto", "channels_last": True, "deterministic": False, "compile": args.compile}
    reps = 1 if args.tiny else (3 if args.quick else args.reps)
    peak = bf16_peak(device, 1024 if args.tiny else 8192)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else hardware()
    print(f"device: {name}; torch {torch.__version__}; bf16 matmul peak measured now: {peak / 1e12:.1f} TFLOP/s; "
          f"compile={args.compile}", flush=True)
    rows = []
    print(f"{'case':58s} {'items/s':>10s} {'TFLOP/s':>9s} {'% peak':>7s} {'1st call s':>10s}", flush=True)
    for group, build in build_cases(args, device, runtime):
        if args.only and args.only not in group:
            continue
        if args.compile:
            torch._dynamo.reset()
        for c in build():
            s, first = seconds_per_call(c.run, device, reps, warmup=1 if args.tiny or args.quick else 2)
            tflops = c.flops / s / 1e12
            rows.append({"case": c.name, "items_per_s": c.items / s, "tflops": tflops,
                         "pct_bf16_peak": 100 * tflops * 1e12 / peak, "first_call_s": first})
            print(f"{c.name:58s} {c.items / s:10.1f} {tflops:9.3f} {rows[-1]['pct_bf16_peak']:6.1f}% {first:10.1f}",
                  flush=True)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"device": name, "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"),
                       "bf16_peak_tflops": peak / 1e12, "compile": args.compile, "rows": rows}, f, indent=2)
    return rows


if __name__ == "__main__":
    main()
