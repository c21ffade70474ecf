"""Samplers on tiny trained models: shapes, determinism, objective ascent, conditioning,
MaxEnt's diversity, seeds, and byte-identical resume per shard."""
import json

import pytest
import torch
import torch.nn.functional as F

from pipeline.params import parse_params
from pipeline.samplers import SAMPLERS, embed_all, generate_batch, to_uint8
from pipeline.sampling import load_shards, prepare_context, run_sampling
from tests.conftest import cem, write_params

NAMES = ["ta", "langevin", "cs", "rcs", "pgd_uncond", "pgd_cond", "maxent_uncond", "maxent_cond"]
BEYOND = ["rcs_pca_momentum", "maxent_pca_momentum"]  # extra rows (PCA seeds + momentum); the DAG tests run their stages


def _ctx(trained, name, **over):
    """The sampler's context, `over` set in its own section (common knobs and its own alike)."""
    tmp, raw = trained
    raw = json.loads(json.dumps(raw))
    raw["sample"].setdefault(name, {}).update(over)
    p = parse_params(raw)
    rp = p.sample.resolved(name)
    folder = "sup" if SAMPLERS[name].model_kind == "classifier" else "unsup"
    return p, rp, prepare_context(name, rp, tmp / folder / "model.pt", str(tmp / "data"), torch.device("cpu"))


def test_registry_has_the_papers_eight_samplers_and_two_beyond():
    assert sorted(SAMPLERS) == sorted(NAMES + BEYOND)
    assert {n for n, s in SAMPLERS.items() if s.model_kind == "classifier"} == {"ta", "langevin", "cs", "rcs",
                                                                               "rcs_pca_momentum"}
    assert {n for n, s in SAMPLERS.items() if not s.conditional} == {"pgd_uncond", "maxent_uncond"}
    assert all(SAMPLERS[n].spec.paper_fid is not None for n in NAMES)
    assert all(SAMPLERS[n].spec.paper_fid is None and SAMPLERS[n].spec.defaults["seeds"] == "pca"
               and SAMPLERS[n].spec.defaults["momentum"] > 0 for n in BEYOND)


@pytest.mark.parametrize("name", NAMES)
def test_stage_outputs_shapes_dtype_and_range(trained, tmp_path, name):
    tmp, raw = trained
    raw = json.loads(json.dumps(raw))
    raw["sample"]["out_dir"] = str(tmp_path)
    cem("sample", name, "--params", str(write_params(tmp_path, raw)))
    out = tmp_path / name
    assert len(sorted(out.glob("shard-*.pt"))) == 2
    images = torch.cat([i for i, _ in load_shards(out)])
    labels = torch.cat([l for _, l in load_shards(out)])
    assert images.shape == (20, 3, 32, 32) and images.dtype == torch.uint8
    assert images.float().std() > 1  # not a constant image
    if SAMPLERS[name].conditional:
        assert torch.equal(labels, torch.arange(20) % 10)
    else:
        assert (labels == -1).all()
    assert (out / "grid.png").stat().st_size > 500
    meta = json.loads((out / "meta.json").read_text())
    assert meta["n"] == 20 and meta["samples_per_second"] > 0 and meta["mlflow_run_id"]


@pytest.mark.parametrize("name", NAMES + BEYOND)
def test_same_params_give_identical_bytes(trained, tmp_path, name):
    tmp, _ = trained
    _, rp, _ = _ctx(trained, name)
    folder = "sup" if SAMPLERS[name].model_kind == "classifier" else "unsup"
    for run in ("a", "b"):
        run_sampling(name, rp, tmp / folder / "model.pt", str(tmp / "data"), tmp_path / run, torch.device("cpu"))
    for a in sorted((tmp_path / "a").glob("shard-*.pt")):
        assert a.read_bytes() == (tmp_path / "b" / a.name).read_bytes()


@pytest.mark.parametrize("name", NAMES)
def test_objective_increases_on_average(trained, name):
    # a small step: the tiny test encoder's pgd_cond objective sits near its maximum (1/τ + log|B_c|),
    # where a large normalised step overshoots
    _, rp, (sampler, ctx, seeds, _) = _ctx(trained, name, steps=10, step_size=0.05)
    values = []
    generate_batch(sampler, ctx, seeds, 0, 20, 0, on_step=lambda t, v: values.append(v.mean().item()))
    assert values[-1] > values[0], values


@pytest.mark.parametrize("name", ["ta", "cs", "rcs", "langevin"])
def test_conditional_samplers_raise_target_probability(trained, name):
    """From class-neutral starts (the unconditional Gaussian: on the synthetic data a class seed
    already carries its class's colour), each conditional objective pulls towards its target."""
    from pipeline.attacks import L2, ascend, frozen
    from pipeline.data import draw_seeds
    _, rp, (sampler, ctx, seeds, _) = _ctx(trained, name, steps=15)
    gen = torch.Generator().manual_seed(0)
    y = torch.arange(30) % 10
    x0 = draw_seeds(seeds, 30, gen, None)
    with frozen(ctx.model):
        x = ascend(x0, sampler.objective(ctx, y), L2(rp.eps), 15, rp.step_size, noise_std=rp.noise_std, generator=gen)
    with torch.no_grad():
        p0 = F.softmax(ctx.model(x0), 1).gather(1, y.view(-1, 1)).mean()
        p1 = F.softmax(ctx.model(x), 1).gather(1, y.view(-1, 1)).mean()
    assert p1 > p0 + 0.05, (p0, p1)


def test_maxent_spreads_samples_more_than_pgd_from_the_same_seeds(trained):
    def spread(name):
        _, rp, (sampler, ctx, seeds, _) = _ctx(trained, name, steps=20, **({"beta": 1.0} if "maxent" in name else {}))
        x0, x, _ = generate_batch(sampler, ctx, seeds, 0, 20, 0)
        z = embed_all(ctx.model, to_uint8(x))
        return torch.pdist(z).mean().item(), x0
    d_pgd, seeds_pgd = spread("pgd_uncond")
    d_max, seeds_max = spread("maxent_uncond")
    assert torch.equal(seeds_pgd, seeds_max)  # same seeds: the difference is the repulsion alone
    assert d_max > d_pgd, (d_max, d_pgd)


def test_seeds_carry_the_class_mean_colour_before_any_step(trained):
    from tests.conftest import class_colour
    _, rp, (sampler, ctx, seeds, _) = _ctx(trained, "cs", steps=0)
    x0, x, y = generate_batch(sampler, ctx, seeds, 0, 200, 0)
    assert torch.equal(x0, x)  # zero steps return the seeds
    for c in (0, 5, 9):
        colour = x0[y == c].mean(dim=(0, 2, 3)).numpy()
        assert abs(colour - class_colour(c)).max() < 0.05


def test_interrupted_sampling_resumes_byte_identical(trained, tmp_path):
    tmp, raw = trained
    p, rp, _ = _ctx(trained, "maxent_cond")
    model = tmp / "unsup" / "model.pt"
    full = run_sampling("maxent_cond", rp, model, str(tmp / "data"), tmp_path / "full", torch.device("cpu"))
    assert full["generated_now"] == 20
    run_sampling("maxent_cond", rp, model, str(tmp / "data"), tmp_path / "cut", torch.device("cpu"))
    (tmp_path / "cut" / "shard-00001.pt").unlink()  # as if killed before the second shard was written
    again = run_sampling("maxent_cond", rp, model, str(tmp / "data"), tmp_path / "cut", torch.device("cpu"))
    assert again["generated_now"] == 10
    for name in ("shard-00000.pt", "shard-00001.pt", "controls.pt"):
        assert (tmp_path / "full" / name).read_bytes() == (tmp_path / "cut" / name).read_bytes()
    # meta.json of the resumed run describes every shard, not only the one it made
    meta_full = json.loads((tmp_path / "full" / "meta.json").read_text())
    meta_cut = json.loads((tmp_path / "cut" / "meta.json").read_text())
    for key in ("n", "shards", "objective_first_step_mean", "objective_last_step_mean", "config_hash"):
        assert meta_full[key] == meta_cut[key], key


def test_shards_from_other_params_are_discarded(trained, tmp_path):
    tmp, raw = trained
    _, rp, _ = _ctx(trained, "cs")
    model = tmp / "sup" / "model.pt"
    run_sampling("cs", rp, model, str(tmp / "data"), tmp_path, torch.device("cpu"))
    _, rp2, _ = _ctx(trained, "cs", steps=1)
    again = run_sampling("cs", rp2, model, str(tmp / "data"), tmp_path, torch.device("cpu"))
    assert again["generated_now"] == 20


def test_wrong_model_kind_is_one_line(trained, tmp_path):
    tmp, raw = trained
    raw = json.loads(json.dumps(raw))
    raw["train_sup"]["out_dir"] = raw["train_unsup"]["out_dir"]
    out = cem("sample", "ta", "--params", str(write_params(tmp_path, raw)), check=False)
    assert out.returncode == 1 and out.stderr.count("\n") == 1 and "needs a classifier model" in out.stderr


def test_unknown_sampler_is_exit_2(tmp_path):
    out = cem("sample", "dream", check=False)
    assert out.returncode == 2 and "unknown sampler 'dream'" in out.stderr


def test_the_sample_grid_is_torchvisions_make_grid():
    from torchvision.utils import make_grid
    from pipeline.sampling import tile
    images = torch.rand(23, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    for n, per_row in ((23, 10), (7, 10), (1, 10), (20, 4)):
        assert torch.equal(tile(images[:n], per_row), make_grid(images[:n], nrow=per_row, padding=2, pad_value=1.0))
