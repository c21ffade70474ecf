"""Every feature space proves itself: the control sets, the pass rule, a deliberately bad
extractor failing through the real scoring code, and claims withheld in a failed space."""
import pytest
import torch

from pipeline.controls import CONTROL_SETS, FAILED_LINE, gaussian_blur, judge_space, make_control_images
from pipeline.data import load_dataset, load_seeds
from pipeline.report import claims_table
from pipeline.metrics import Space, reference_stats
from pipeline.scoring import space_controls
from tests.conftest import SHARED_ARCHIVE

CPU = torch.device("cpu")


def _rows(real, blur, noise, seeds, sd=0.5):
    return {k: {"fid": v, "fid_sd": sd} for k, v in
            (("real", real), ("blur", blur), ("noise", noise), ("seeds", seeds))}


def test_a_space_passes_only_when_it_orders_real_degraded_seeds_beyond_the_noise():
    assert judge_space(_rows(1.0, 5.0, 6.0, 20.0))["passed"]
    blind_to_blur = judge_space(_rows(1.0, 1.5, 6.0, 20.0))  # gap 0.5 < 2·√2·0.5
    assert not blind_to_blur["passed"] and "blur" in blind_to_blur["failures"][0]
    seeds_look_real = judge_space(_rows(1.0, 5.0, 6.0, 4.0))  # the old judge: blobs better than blur
    assert not seeds_look_real["passed"] and len(seeds_look_real["failures"]) == 2
    assert not judge_space({"real": {"fid": 1.0}, "seeds": {"fid": 9.0}})["passed"]  # no degraded set


def test_control_sets_are_registered_ranked_and_deterministic(prepared):
    tmp, _ = prepared
    ds, seeds = load_dataset(tmp / "data"), load_seeds(tmp / "data")
    imgs, labels = ds.test.images[:20], ds.test.labels[:20]
    a = make_control_images(imgs, labels, seeds, 0)
    b = make_control_images(imgs, labels, seeds, 0)
    assert list(a) == list(CONTROL_SETS) and {c.rank for c in CONTROL_SETS.values()} == {0, 1, 2}
    assert all(torch.equal(a[k], b[k]) and a[k].dtype == torch.uint8 and a[k].shape == imgs.shape for k in a)
    assert torch.equal(a["real"], imgs) and not torch.equal(a["blur"], imgs) and not torch.equal(a["noise"], imgs)


def test_blur_keeps_a_constant_image_and_smooths_an_edge():
    flat = torch.full((1, 3, 8, 8), 0.3)
    assert torch.allclose(gaussian_blur(flat, 1.0), flat, atol=1e-6)
    edge = torch.zeros(1, 1, 8, 8)
    edge[..., 4:] = 1
    out = gaussian_blur(edge, 1.0)
    assert 0 < out[0, 0, 0, 3] < 0.5 < out[0, 0, 0, 4] < 1


def _psnr(x: torch.Tensor, y: torch.Tensor) -> float:
    """Mean per-image PSNR (dB) of uint8 images y against x."""
    mse = ((y.double() - x.double()) / 255).pow(2).mean((1, 2, 3))
    return float((10 * torch.log10(1 / mse)).mean())


@pytest.mark.skipif(not SHARED_ARCHIVE.exists(), reason="needs ../shared/data/cifar10-jpeg.tar.gz (CI and dev machines)")
def test_the_two_degradations_are_equally_mild_on_real_cifar10_images(tmp_path):
    """BLUR_SIGMA was chosen to cost the PSNR the noise costs (~30.6 dB): neither degraded set may be
    a much larger change than the other, or "degraded < seeds" stops being an undisputed order."""
    from pipeline.data import read_source
    images = read_source(str(SHARED_ARCHIVE), tmp_path, train_per_class=1, test_per_class=30).test.images
    assert len(images) == 300
    sets = {name: CONTROL_SETS[name].make(images, None, {}, torch.Generator().manual_seed(0))
            for name in ("blur", "noise")}
    blur, noise = _psnr(images, sets["blur"]), _psnr(images, sets["noise"])
    assert 29.5 < noise < 31.5 and abs(blur - noise) < 1.0, (blur, noise)
    too_strong = _psnr(images, (gaussian_blur(images.float() / 255, 1.0).clamp(0, 1) * 255).round().to(torch.uint8))
    assert noise - too_strong > 4  # the σ = 1 px blur of the first runs: 3.5× the noise's squared error


def _register_mean_colour_extractor():
    """A deliberately bad instrument: it sees only each image's mean colour (blind to blur)."""
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY, register_feature_extractor

    from pipeline.metrics import uint8_extractor_base

    class MeanColour(uint8_extractor_base()):
        @staticmethod
        def get_provided_features_list():
            return ("features",)

        @staticmethod
        def get_default_feature_layer_for_metric(metric):
            return "features"

        def forward(self, x):
            m = x.double().mean((2, 3)) / 255
            return (torch.cat([m, m * m, m.prod(1, keepdim=True)], 1),)

    if "test-mean-colour" not in FEATURE_EXTRACTORS_REGISTRY:
        register_feature_extractor("test-mean-colour", MeanColour)
    return Space("meancolour", "test-mean-colour", "test", "features", None)


def test_a_deliberately_bad_extractor_fails_its_controls(prepared):
    tmp, _ = prepared
    ds, seeds = load_dataset(tmp / "data"), load_seeds(tmp / "data")
    space = _register_mean_colour_extractor()
    ref = reference_stats(space, ds.train.images, 64, CPU, 0, {})
    images = make_control_images(ds.test.images, ds.test.labels, seeds, 0)
    result = space_controls(space, images, ds.test.labels, ref, 64, 10, CPU)
    assert not result["passed"]
    assert any("blur" in f for f in result["failures"])  # blurring keeps the mean colour: it cannot tell


def _scores():
    fids = {"ta": 10.0, "cs": 5.0, "rcs": 6.0, "langevin": 20.0, "pgd_uncond": 30.0, "maxent_uncond": 20.0,
            "pgd_cond": 12.0, "maxent_cond": 8.0}
    ises = {"ta": 5.0, "cs": 6.0, "rcs": 6.5, "langevin": 5.5, "pgd_uncond": 2.0, "maxent_uncond": 3.0,
            "pgd_cond": 2.5, "maxent_cond": 3.5}
    return {n: {"samples": {sp: {"fid": fids[n] * (1 if sp == "classifier" else 3), "fid_sd": 0.3,
                                 "is": ises[n], "is_sd": 0.1} for sp in ("classifier", "inception")}}
            for n in fids}


@pytest.mark.parametrize("inception_passed", [True, False])
def test_claims_are_withheld_in_a_failed_space_and_agreement_is_stated(inception_passed):
    controls = {"spaces": {"classifier": {"passed": True, "sets": {}},
                           "inception": {"passed": inception_passed, "sets": {}}}}
    table = {text: (cells, agree) for text, cells, agree in
             claims_table(_scores(), controls, ["classifier", "inception"])}
    cells, agree = table["CS beats TA"]
    assert cells[("classifier", "fid")][0] == "yes" and cells[("classifier", "is")][0] == "yes"
    if inception_passed:
        assert cells[("inception", "fid")][0] == "yes" and agree == "yes"
    else:
        assert cells[("inception", "fid")] == ("withheld", FAILED_LINE) and agree == "–"
    lang, _ = table["Langevin has the worst FID of the four supervised samplers"]
    assert lang[("classifier", "fid")][0] == "yes" and lang[("classifier", "is")][0] == "n/a"


def test_spaces_that_disagree_are_flagged():
    scores = _scores()
    scores["cs"]["samples"]["inception"]["fid"] = 60.0  # worse than TA's 30 in Inception only
    controls = {"spaces": {"classifier": {"passed": True, "sets": {}}, "inception": {"passed": True, "sets": {}}}}
    table = {text: agree for text, _, agree in claims_table(scores, controls, ["classifier", "inception"])}
    assert table["CS beats TA"] == "no" and table["RCS beats TA"] == "yes"


def test_no_controls_file_withholds_everything():
    table = claims_table(_scores(), None, ["classifier"])
    assert all(cells[("classifier", "fid")][0] == "withheld" for _, cells, _ in table)
