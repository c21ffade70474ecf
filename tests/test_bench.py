"""The benchmarks run (tiny shapes on the CPU), so they cannot rot; their numbers are only
meaningful on the hardware they were made for (docs/performance.md)."""
import torch

from bench.common import our_at_step
from pipeline.models import build_classifier
from pipeline.params import ArchParams


def test_gpu_bench_dry_run_covers_every_case():
    from bench import gpu
    from pipeline.sampler_specs import SPECS
    rows = gpu.main(["--tiny"])
    names = [r["case"] for r in rows]
    assert any("PGD-1 AT" in n for n in names) and any("contrastive" in n for n in names)
    assert all(any(f"sampler {s} " in n for n in names) for s in SPECS)
    assert all(r["items_per_s"] > 0 and r["tflops"] > 0 for r in rows)


def test_bench_at_step_is_the_stage_step():
    """With its defaults the benchmark's step is recipes.SupervisedRecipe.train_step: it changes weights."""
    model = build_classifier(ArchParams(widths=[8, 16, 32]), 10)
    before = [p.detach().clone() for p in model.parameters()]
    x = (torch.rand(16, 3, 32, 32) * 255).to(torch.uint8)
    our_at_step(model, x, torch.arange(16) % 10, "l2", 0.5, 2, 0.6)()
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
