"""Seed families (pipeline/seed_families.py): the PCA truncation keeps the share it says, PCA seeds lie
in the kept span, data-jitter starts from the class's real images, the default family is today's
Gaussian bit for bit, and a new family is one registration."""
import json

import pytest
import torch

from pipeline import seed_families
from pipeline.data import draw_seeds
from pipeline.params import parse_params
from pipeline.samplers import batch_generator, generate_batch
from pipeline.sampling import prepare_context
from pipeline.seed_families import FAMILIES, pca_factor


def _ctx(trained, name="cs", **over):
    tmp, raw = trained
    raw = json.loads(json.dumps(raw))
    raw["sample"].setdefault(name, {}).update(over)
    rp = parse_params(raw).sample.resolved(name)
    folder = "sup" if name in ("ta", "langevin", "cs", "rcs", "rcs_pca_momentum") else "unsup"
    return rp, prepare_context(name, rp, tmp / folder / "model.pt", str(tmp / "data"), torch.device("cpu"))


@pytest.mark.parametrize("thin,shares", [
    (False, ((0.49, 1), (0.74, 2), (0.87, 3), (0.93, 4))),   # total 16: shares 0.5, 0.75, 0.875, 0.9375
    (True, ((0.5, 1), (0.78, 2), (0.9, 3), (0.95, 4))),      # rank 6, total 15.25: 0.525, 0.787, 0.918, 0.984
])
def test_pca_keeps_the_smallest_number_of_components_reaching_the_share(thin, shares):
    d = 12
    variances = torch.tensor([8.0, 4.0, 2.0, 1.0] + [0.125] * 8, dtype=torch.float64)  # total 16
    basis, _ = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    factor = basis * variances.sqrt()  # Σ = F Fᵀ has these eigenvalues
    if thin:
        factor = factor[:, :6]  # rank 6 (fewer images than pixels), plus the isotropic ridge below
    iso = 0.0 if not thin else 0.01
    for share, k_expected in shares:
        p, k = pca_factor(factor, iso, share)
        assert k == k_expected and p.shape == (d, k)
        kept = torch.linalg.eigvalsh((p.double() @ p.double().T)).flip(0)[:k]
        assert torch.allclose(kept, variances[:k] + iso ** 2, rtol=1e-4)


def test_pca_seeds_lie_in_the_kept_span_and_default_seeds_are_todays_gaussian(trained):
    rp, (sampler, ctx, state, _) = _ctx(trained, "cs", seeds="pca", pca_variance=0.5, steps=0)
    _, (_, _, gaussian, _) = _ctx(trained, "cs", steps=0)
    y = torch.full((200,), 3)
    g = state["classes"][3]
    assert 1 <= g["components"] < g["factor"].shape[0] and g["iso_std"] == 0.0
    x = FAMILIES["pca"].draw(state, 200, torch.Generator().manual_seed(1), y).reshape(200, -1)
    centred = x - g["mean"]
    q, _ = torch.linalg.qr(g["factor"].double())
    inside = (centred.double() @ q) @ q.T  # the part in the kept span
    unclamped = ((x > 0) & (x < 1)).all(1)  # clamping to the image box leaves the span
    assert unclamped.sum() > 20
    assert torch.allclose(inside[unclamped], centred.double()[unclamped], atol=1e-4)
    # the default family is the Gaussian of `cem prepare`, drawn by the same code: the same tensor
    x0, _, _ = generate_batch(sampler, ctx.__class__(ctx.model, rp.model_copy(update={"seeds": "gaussian"}),
                                                     ctx.num_classes), gaussian, 0, 20, 0)
    ref = draw_seeds(gaussian, 20, batch_generator(rp.seed, 0), torch.arange(20) % 10)
    assert torch.equal(x0, ref)


def test_data_jitter_starts_from_real_images_of_the_target_class(trained):
    from pipeline.data import load_dataset
    tmp, _ = trained
    rp, (sampler, ctx, state, _) = _ctx(trained, "cs", seeds="data_jitter", jitter_std=0.0, steps=0)
    x0, x, y = generate_batch(sampler, ctx, state, 0, 30, 0)
    train = load_dataset(tmp / "data").train
    real = {bytes(img.numpy()) for img in train.images}
    as_u8 = (x0 * 255).round().to(torch.uint8)
    assert all(bytes(img.numpy()) in real for img in as_u8)  # σ = 0: the seeds are training images
    for img, c in zip(as_u8, y):
        same = (train.images == img).flatten(1).all(1)
        assert (train.labels[same] == c).all()
    rp2, (_, ctx2, state2, _) = _ctx(trained, "cs", seeds="data_jitter", jitter_std=0.2, steps=0)
    x0n, _, _ = generate_batch(sampler, ctx2, state2, 0, 30, 0)
    assert 0.1 < (x0n - x0).std() < 0.25  # the same images (same generator draws), plus the noise


def test_a_new_seed_family_is_one_registration(trained):
    @seed_families.family("grey", "mid-grey images (a toy)")
    def _grey():
        return (lambda stats, rp, images, labels: {"value": torch.tensor(0.5)},
                lambda state, n, gen, cond: torch.full((n, 3, 32, 32), float(state["value"])))
    try:
        rp, (sampler, ctx, state, _) = _ctx(trained, "cs", steps=0)
        rp = rp.model_copy(update={"seeds": "grey"})
        state = FAMILIES["grey"].prepare(None, rp, None, None)
        ctx.params = rp
        x0, _, _ = generate_batch(sampler, ctx, state, 0, 4, 0)
        assert torch.equal(x0, torch.full((4, 3, 32, 32), 0.5))
    finally:
        FAMILIES.pop("grey", None)
        seed_families._ops.cache_clear()


def test_seed_knobs_are_refused_in_one_line_when_wrong():
    from pipeline.errors import ParamsError
    from pipeline.params import parse_params as parse
    for section, message in (({"cs": {"seeds": "uniform"}}, "sample.cs.seeds: Input should be 'gaussian'"),
                             ({"defaults": {"pca_variance": 1.5}}, "sample.defaults.pca_variance"),
                             ({"pgd_cond": {"seeds": "data_jitter", "condition": "kmeans"}}, "no classes of images")):
        with pytest.raises(ParamsError, match=message.replace("(", r"\(").replace(".", r"\.")):
            parse({"sample": section})


def test_pca_state_is_the_eigendecomposition_truncated_without_decomposing_in_the_stage(trained, monkeypatch):
    """The PCA seeds of a stage equal Σ's top components computed from scratch (float64 eigh), while the
    stage itself runs no decomposition: `cem prepare` stored principal factors, which it only slices."""
    _, (_, _, gaussian, _) = _ctx(trained, "cs", steps=0)

    def refuse(*a, **k):
        raise AssertionError("the pca family decomposed a matrix in the sampling stage")
    for fn in ("eigh", "svd", "eigvalsh"):
        monkeypatch.setattr(torch.linalg, fn, refuse)
    _, (_, _, state, _) = _ctx(trained, "cs", seeds="pca", pca_variance=0.8, steps=0)
    monkeypatch.undo()
    for c in (0, 6):
        g, p = gaussian["classes"][c], state["classes"][c]
        f, iso = g["factor"].double(), float(g["iso_std"])
        sigma = f @ f.T
        sigma.diagonal().add_(iso ** 2)
        w, v = torch.linalg.eigh(sigma)
        w, v = w.flip(0), v.flip(1)
        k = int((torch.cumsum(w, 0) / w.sum() < 0.8).sum()) + 1
        assert p["components"] == k
        ref = (v[:, :k] * w[:k]) @ v[:, :k].T
        got = p["factor"].double() @ p["factor"].double().T
        assert torch.allclose(got, ref, atol=1e-5 * float(w[0]))
