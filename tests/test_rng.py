"""rng: draws made on the device that uses them, so a GPU step moves nothing between host and device.

No GPU is needed: the steps run on torch's "meta" device, which stands in for the GPU (shapes and
devices only, no data; autograd works), under a dispatch mode that records every operator whose
inputs and outputs sit on different devices (a host-to-device copy of a CPU draw, a `.cpu()`),
while a host sync (`.item()`, a boolean index, `nonzero`) has no data to read and raises. A meta
device has no generator of its own, so the draws get a CPU generator and `draw_device` is pointed
at the data's device: what is checked is that every draw goes where `draw_device` says and nothing
else crosses (on a real GPU the generator is on the GPU, and `draw_device` returns its device).
"""
from __future__ import annotations

from contextlib import nullcontext

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from pipeline import attacks, augment, rng
from pipeline.data import Dataset, Split, fit_seeds
from pipeline.params import ArchParams, SampleParams, SupervisedParams, UnsupervisedParams

GPU = torch.device("meta")  # the stand-in accelerator
CPU = torch.device("cpu")
ARCH = {"name": "airbench", "widths": [8, 16, 32]}
RT = {"threads": 1, "amp": False}


class CrossDevice(TorchDispatchMode):
    """Records (operator, pipeline line) of every op whose tensors span devices. A 0-dim CPU tensor
    is a scalar passed by value (no copy), as torch allows beside GPU tensors."""

    def __init__(self):
        super().__init__()
        self.seen: list[tuple[str, str]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.ops.aten._to_copy.default and args[0].device == GPU and kwargs.get("device") == CPU:
            out = torch.empty(args[0].shape, dtype=kwargs.get("dtype") or args[0].dtype)  # a copy out (no data on meta)
        else:
            out = func(*args, **kwargs)
        ins = {a.device.type for a in args if isinstance(a, torch.Tensor) and not (a.dim() == 0 and a.device.type == "cpu")}
        outs = {o.device.type for o in (out if isinstance(out, (list, tuple)) else [out]) if isinstance(o, torch.Tensor)}
        if ins and outs and ins != outs:
            import traceback
            where = [f"{f.filename.rsplit('/', 1)[-1]}:{f.lineno} {f.line}" for f in traceback.extract_stack()
                     if "/pipeline/" in f.filename]
            self.seen.append((str(func), where[-1] if where else "?"))
        return out


@pytest.fixture
def on_stand_in(monkeypatch):
    from pipeline import data, recipes, samplers
    for module in (attacks, augment, data):
        monkeypatch.setattr(module, "draw_device", lambda gen, like: like.device)
    monkeypatch.setattr(samplers, "generator", lambda seed, device=None: torch.Generator().manual_seed(seed))
    for module in (recipes, samplers):  # torch has no autocast for "meta"; these steps run in fp32 here
        monkeypatch.setattr(module, "autocast", lambda device, enabled: nullcontext())
    return nullcontext()


def _data(n=32):
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=gen)
    labels = torch.arange(n) % 10
    return Dataset(Split(images, labels), Split(images, labels), [str(c) for c in range(10)])


def test_generator_draws_on_its_device():
    g = rng.generator(3)
    assert g.device == torch.device("cpu")
    a = torch.rand(4, generator=g)
    assert torch.equal(a, torch.rand(4, generator=torch.Generator().manual_seed(3)))  # the CPU stream is unchanged
    assert rng.draw_device(g, torch.empty(1)) == torch.device("cpu")
    assert rng.draw_device(None, torch.empty(1, device="meta")) == torch.device("meta")


def test_the_detector_sees_a_cpu_draw_copied_to_the_gpu(on_stand_in):
    """The check below has teeth: the old pattern (draw on the CPU, then .to(device)) is caught."""
    with on_stand_in:
        x = torch.zeros(4, 3, 32, 32, device=GPU)
        with CrossDevice() as mode:
            _ = x + torch.rand(x.shape, generator=torch.Generator().manual_seed(0)).to(x.device)
    assert [op for op, _ in mode.seen] == ["aten._to_copy.default"]


@pytest.mark.parametrize("kind", ["supervised_l2", "supervised_linf", "standard", "contrastive"])
def test_training_step_moves_nothing_between_host_and_gpu(on_stand_in, kind):
    from pipeline.recipes import ContrastiveRecipe, SupervisedRecipe
    data = _data()
    if kind == "contrastive":
        p = UnsupervisedParams.model_validate({"arch": ARCH, "optim": {"batch_size": 16}, "runtime": RT,
                                               "eval": {"epoch_per_class": 1},
                                               "probe": {"train_per_class": None}})
        recipe = ContrastiveRecipe(p, data, torch.device("cpu"))
    else:
        norm, eps, steps = {"supervised_l2": ("l2", 0.5, 2), "supervised_linf": ("linf", 8 / 255, 2),
                            "standard": ("l2", 0.0, 0)}[kind]
        p = SupervisedParams.model_validate({"arch": ARCH, "attack": {"norm": norm, "eps": eps, "steps": steps},
                                             "eval": {"epoch_per_class": 1}, "runtime": RT})
        recipe = SupervisedRecipe(p, data, torch.device("cpu"))
    with on_stand_in:
        recipe.model.to(GPU)
        recipe.device = GPU
        xb, yb = data.train.images[:16].to(GPU), data.train.labels[:16].to(GPU)  # resident, as in train.run_loop
        for step in range(2):  # the second step: module constants are copied to the device once, at the first
            with CrossDevice() as mode:
                loss, metrics = recipe.train_step(xb, yb, torch.Generator().manual_seed(step), slice(None))
                loss.backward()
    assert loss.device == GPU and all(v.device == GPU for v in metrics.values())
    assert mode.seen == [], f"host<->device traffic inside a {kind} training step: {mode.seen}"


@pytest.mark.parametrize("name", ["ta", "langevin", "rcs", "pgd_cond", "maxent_uncond"])
def test_sampler_steps_move_nothing_between_host_and_gpu(on_stand_in, name):
    """A batch copies its conditions in and its images out; the number of copies does not grow
    with the number of steps (nothing crosses per step), and no step syncs."""
    from pipeline.models import ContrastiveModel, build_classifier
    from pipeline.samplers import SAMPLERS, SamplingContext, generate_batch, seeds_on
    sampler = SAMPLERS[name]
    data = _data(40)
    seeds = fit_seeds(data.train, 10, 1e-4)
    a = ArchParams(**ARCH)
    net = (build_classifier(a, 10) if sampler.model_kind == "classifier" else ContrastiveModel(a, 128)).eval()
    sp = SampleParams.model_validate({"defaults": {"n": 20, "batch_size": 20, "shard_size": 20},
                                      name: {"return_best": True} if name == "ta" else
                                      {"bank_size": 40} if sampler.model_kind == "contrastive" else {}})
    crossings = []
    for steps in (2, 5):
        rp = sp.resolved(name)
        with on_stand_in:
            net.to(GPU)
            ctx = SamplingContext(net, rp, 10)
            if sampler.model_kind == "contrastive":
                ctx.bank_z = torch.nn.functional.normalize(torch.randn(40, 128, device=GPU), dim=1)
                ctx.bank_cond = data.train.labels[:40].to(GPU)
            on_dev = seeds_on(seeds, GPU)
            with CrossDevice() as mode:
                x0, x, labels = generate_batch(sampler, ctx, on_dev, 0, 20, 0, steps=steps, device=GPU,
                                               on_step=lambda t, v: None)
        assert x.shape == (20, 3, 32, 32) and x.device.type == "cpu"
        crossings.append(len(mode.seen))
    assert crossings[0] == crossings[1], f"{name}: copies grow with the steps ({crossings}): {mode.seen}"

