"""The projected-gradient engine: threat models, and a cross-check against torchattacks."""
import pytest
import torch

from pipeline.attacks import L2, Linf, ascend, frozen, pgd
from pipeline.checkpoints import build_trained_model, load_model_file
from pipeline.data import load_dataset


def _accuracy(model, x, y):
    with torch.no_grad():
        return 100.0 * (model(x).argmax(1) == y).float().mean().item()


@pytest.fixture(scope="module")
def victim(trained):
    tmp, _ = trained
    model = build_trained_model(load_model_file(tmp / "ref" / "model.pt"))
    ds = load_dataset(tmp / "data")
    return model, ds.test.images.float() / 255, ds.test.labels


@pytest.mark.parametrize("norm, eps, alpha", [("linf", 8 / 255, 2 / 255), ("l2", 0.5, 0.1)])
def test_engine_is_at_least_as_strong_as_torchattacks(victim, norm, eps, alpha):
    import torchattacks
    model, x, y = victim
    steps = 10
    gen = torch.Generator().manual_seed(0)
    ours = pgd(model, x, y, norm, eps, steps, alpha, random_start=True, generator=gen)
    torch.manual_seed(0)
    cls = torchattacks.PGD if norm == "linf" else torchattacks.PGDL2
    theirs = cls(model, eps=eps, alpha=alpha, steps=steps, random_start=True)(x, y)
    clean, acc_ours, acc_theirs = _accuracy(model, x, y), _accuracy(model, ours, y), _accuracy(model, theirs, y)
    assert acc_ours <= acc_theirs + 1.0, (clean, acc_ours, acc_theirs)
    assert acc_ours < clean  # the attack does something on this model
    delta = (ours - x).flatten(1)
    norms = delta.abs().max(1).values if norm == "linf" else delta.norm(dim=1)
    assert (norms <= eps + 1e-6).all()
    assert ours.min() >= 0 and ours.max() <= 1


def test_threat_model_projections_and_steps():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(8, 3, 4, 4)
    for tm in (L2(0.3), Linf(0.05)):
        d = tm.project(torch.randn(8, 3, 4, 4) * 5)
        n = d.flatten(1).norm(dim=1) if isinstance(tm, L2) else d.flatten(1).abs().max(1).values
        assert (n <= tm.eps + 1e-6).all()
        r = tm.random_perturb(x, gen)
        assert torch.equal(tm.project(r), r) or torch.allclose(tm.project(r), r)
    step = L2(1.0).step(torch.randn(8, 3, 4, 4), 0.5)
    assert torch.allclose(step.flatten(1).norm(dim=1), torch.full((8,), 0.5), atol=1e-5)


def test_ascend_increases_a_concave_objective_and_respects_the_ball():
    target = torch.full((4, 3, 4, 4), 0.9)
    x0 = torch.full((4, 3, 4, 4), 0.1)
    objective = lambda x: -((x - target) ** 2).flatten(1).sum(1)  # noqa: E731
    x = ascend(x0, objective, L2(0.5), steps=20, step_size=0.1)
    assert (objective(x) > objective(x0)).all()
    assert torch.allclose((x - x0).flatten(1).norm(dim=1), torch.full((4,), 0.5), atol=1e-4)


def test_frozen_restores_requires_grad():
    m = torch.nn.Linear(3, 3)
    m.bias.requires_grad_(False)
    with frozen(m):
        assert not any(p.requires_grad for p in m.parameters())
    assert m.weight.requires_grad and not m.bias.requires_grad


def test_autoattack_is_at_least_as_strong_as_pgd20_on_the_same_images(trained):
    """eval.final_attack = autoattack: AutoAttack (standard) accuracy ≤ PGD-20 accuracy, same images."""
    from pipeline.checkpoints import build_trained_model, load_model_file
    from pipeline.data import load_dataset
    from pipeline.params import EvalAttackParams
    from pipeline.evaluation import evaluate
    from pipeline.final_evaluation import autoattack_accuracy
    tmp, _ = trained
    model = build_trained_model(load_model_file(tmp / "sup" / "model.pt"))
    ds = load_dataset(tmp / "data")
    x, y = ds.test.images[:30], ds.test.labels[:30]
    attack = EvalAttackParams(norm="l2", eps=6.0)  # the synthetic classes are colours far apart: a large ball
    pgd20 = evaluate(model, x, y, attack, 20, 30, torch.device("cpu"), False)["robust_acc"]
    aa = autoattack_accuracy(model, x, y, attack, 30, torch.device("cpu"), 10)
    assert aa <= pgd20, (aa, pgd20)
    assert aa < evaluate(model, x, y, attack, 0, 30, torch.device("cpu"), False)["clean_acc"]  # it attacks at all


def test_final_autoattack_reports_both_numbers_on_one_subset(trained):
    from pipeline.checkpoints import load_model_file
    from pipeline.data import load_dataset
    from pipeline.final_evaluation import evaluate_model
    from pipeline.params import FinalEvalParams
    tmp, _ = trained
    fp = FinalEvalParams(test_per_class=5, attack_steps=3, autoattack=True, autoattack_per_class=1,
                         runtime={"amp": False})
    res = evaluate_model(load_model_file(tmp / "sup" / "model.pt"), tmp / "sup" / "model.pt",
                         load_dataset(tmp / "data"), fp, torch.device("cpu"), "sup")
    assert res["eval_images"] == 50 and res["autoattack_images"] == 10
    assert res["autoattack_acc"] <= res["pgd_acc_on_autoattack_images"]


def test_autoattack_runs_on_a_channels_last_network(trained):
    """All four attacks run (the tiny model resists a small ball, so FAB-T and Square are reached);
    torchattacks' FAB used to fail on channels_last gradients."""
    from pipeline.checkpoints import build_trained_model, load_model_file
    from pipeline.data import load_dataset
    from pipeline.params import EvalAttackParams
    from pipeline.final_evaluation import autoattack_accuracy
    tmp, _ = trained
    model = build_trained_model(load_model_file(tmp / "sup" / "model.pt")).to(memory_format=torch.channels_last)
    ds = load_dataset(tmp / "data")
    acc = autoattack_accuracy(model, ds.test.images[:10], ds.test.labels[:10], EvalAttackParams(norm="l2", eps=0.3),
                              10, torch.device("cpu"), 10)
    assert 0 <= acc <= 100


def test_momentum_zero_is_the_plain_step_and_momentum_moves_further():
    """Issue 22: heavy-ball momentum on the one ascent engine. μ = 0 computes exactly the plain step (the
    default: every existing shard stays the same bytes); μ > 0 accumulates the normalised steps."""
    from pipeline.attacks import L2, ascend
    torch.manual_seed(0)
    w = torch.randn(3 * 8 * 8)
    objective = lambda x: (x.flatten(1) * w).sum(1)  # noqa: E731  a linear J: its gradient never changes
    x0 = torch.rand(4, 3, 8, 8) * 0.1 + 0.45
    plain = ascend(x0, objective, L2(100.0), 5, 0.01)
    assert torch.equal(ascend(x0, objective, L2(100.0), 5, 0.01, momentum=0.0), plain)
    fast = ascend(x0, objective, L2(100.0), 5, 0.01, momentum=0.5)
    # a constant direction: 5 plain steps move 5·0.01; with μ = 0.5 the velocities sum 1+1.5+1.75+1.875+1.9375
    moved = lambda x: (x - x0).flatten(1).norm(dim=1)  # noqa: E731
    assert torch.allclose(moved(plain), torch.full((4,), 0.05), atol=1e-4)
    assert torch.allclose(moved(fast), torch.full((4,), 0.080625), atol=1e-4)


def test_momentum_zero_and_gaussian_seeds_keep_the_config_hash_of_earlier_runs(trained):
    import hashlib
    import json

    from pipeline import sampling
    from pipeline.params import parse_params
    tmp, raw = trained
    p = parse_params(raw)
    model, data_dir = tmp / "sup" / "model.pt", str(tmp / "data")
    rp = p.sample.resolved("cs")
    later = ("momentum", "seeds", "pca_variance", "jitter_std")  # knobs added after the first shards were made
    old = {k: v for k, v in rp.model_dump().items() if k not in later}  # the record before they existed
    h = hashlib.sha256()
    h.update(json.dumps({"sampler": "cs", **old}, sort_keys=True).encode())
    h.update(sampling.sha256_file(model).encode())
    h.update(sampling.sha256_file(tmp / "data" / "seeds.pt").encode())
    assert sampling.config_hash("cs", rp, model, data_dir) == h.hexdigest()[:16]
    moved = rp.model_copy(update={"momentum": 0.5})
    assert sampling.config_hash("cs", moved, model, data_dir) != sampling.config_hash("cs", rp, model, data_dir)
    pca = rp.model_copy(update={"seeds": "pca"})
    assert sampling.config_hash("cs", pca, model, data_dir) != sampling.config_hash("cs", rp, model, data_dir)
    assert sampling.config_hash("cs", pca.model_copy(update={"pca_variance": 0.5}), model, data_dir) != \
        sampling.config_hash("cs", pca, model, data_dir)
    # a family's knob is in the hash only when that family is picked (it changes nothing otherwise)
    assert sampling.config_hash("cs", rp.model_copy(update={"pca_variance": 0.5}), model, data_dir) == \
        sampling.config_hash("cs", rp, model, data_dir)
    assert sampling.config_hash("cs", pca.model_copy(update={"jitter_std": 0.5}), model, data_dir) == \
        sampling.config_hash("cs", pca, model, data_dir)
