"""docs/science.md §2 identities, autograd vs closed form, float64, tolerance 1e-5."""
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.energies import conditional_energy, log_posterior, lse, pair_energy
from pipeline.losses import nt_xent


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 32), nn.Tanh(), nn.Linear(32, 10)).double()


def test_identity1_pgd_on_ce_is_langevin_on_log_px_plus_bias():
    """∇ₓ CE(x, y) = ∇ₓ LSE(x) − ∇ₓ f(x, y)."""
    model = _model()
    x = torch.rand(6, 3, 8, 8, dtype=torch.float64, requires_grad=True)
    y = torch.arange(6) % 10
    g_ce, = torch.autograd.grad(F.cross_entropy(model(x), y, reduction="sum"), x)
    g_lse, = torch.autograd.grad(lse(model(x)).sum(), x)
    g_f, = torch.autograd.grad(conditional_energy(model(x), y).sum(), x)
    assert torch.allclose(g_ce, g_lse - g_f, atol=1e-5, rtol=0)
    assert g_ce.abs().max() > 1e-3  # not trivially zero


def test_identity2_expected_contrastive_part_is_minus_at_gradient():
    """E_{ŷ~p(ŷ|x̂)}[∇θ f(x̂, y) − ∇θ f(x̂, ŷ)] = −∇θ CE(x̂, y): AT is biased MLE of the CEM."""
    model = _model()
    params = list(model.parameters())
    x_hat = torch.rand(5, 3, 8, 8, dtype=torch.float64)
    y = torch.tensor([1, 4, 4, 7, 9])
    probs = F.softmax(model(x_hat), dim=1).detach()

    def grad_of(scalar):
        return torch.cat([g.flatten() for g in torch.autograd.grad(scalar, params)])

    expected = torch.zeros_like(grad_of(model(x_hat).sum()))
    for k in range(10):  # the exact expectation over ŷ, weighted by p(ŷ = k | x̂)
        logits = model(x_hat)
        per_sample = conditional_energy(logits, y) - logits[:, k]
        expected += grad_of((probs[:, k] * per_sample).sum())
    at_grad = grad_of(F.cross_entropy(model(x_hat), y, reduction="sum"))
    assert torch.allclose(expected, -at_grad, atol=1e-5, rtol=0)
    assert at_grad.abs().max() > 1e-3


def test_identity3_infonce_is_nt_xent():
    """InfoNCE(x, x⁺, {x_k}) = −[f(x, x⁺) − log Σ_{k≠x} exp f(x, x_k)] for every anchor."""
    torch.manual_seed(1)
    z1, z2 = torch.randn(4, 16, dtype=torch.float64), torch.randn(4, 16, dtype=torch.float64)
    tau = 0.5
    ours = nt_xent(z1, z2, tau)
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    for i in range(8):
        pos = (i + 4) % 8
        f = pair_energy(z[i:i + 1], z, tau)[0]
        others = torch.cat([f[:i], f[i + 1:]])
        manual = -(f[pos] - torch.logsumexp(others, 0))
        assert abs(ours[i].item() - manual.item()) < 1e-10


def test_log_posterior_is_minus_ce():
    logits = torch.randn(7, 10, dtype=torch.float64)
    y = torch.arange(7)
    assert torch.allclose(log_posterior(logits, y), -F.cross_entropy(logits, y, reduction="none"), atol=1e-12)


def test_pair_energies_and_nt_xent_stay_fp32_under_bf16_autocast():
    """docs/science.md §8: autocast would run their matmuls in bf16 (8 mantissa bits: f moves by ~0.01
    at τ = 0.5); they are computed in fp32 whatever the surrounding autocast says."""
    torch.manual_seed(0)
    za, zb = F.normalize(torch.randn(64, 128), dim=1), F.normalize(torch.randn(48, 128), dim=1)
    want_pair, want_nt = pair_energy(za, zb, 0.5), nt_xent(za, zb[:64 - 16].repeat(2, 1)[:64], 0.5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got_pair = pair_energy(za, zb, 0.5)
        got_nt = nt_xent(za, zb[:64 - 16].repeat(2, 1)[:64], 0.5)
        bf16_pair = za @ zb.T / 0.5  # what autocast alone does
    assert got_pair.dtype == torch.float32 and got_nt.dtype == torch.float32
    assert torch.equal(got_pair, want_pair) and torch.equal(got_nt, want_nt)
    assert bf16_pair.dtype == torch.bfloat16 and not torch.equal(bf16_pair.float(), want_pair)  # the rule matters
    with torch.autocast("cpu", dtype=torch.bfloat16):  # bf16 inputs (a bf16 encoder) are computed in fp32 too
        assert pair_energy(za.bfloat16(), zb.bfloat16(), 0.5).dtype == torch.float32
