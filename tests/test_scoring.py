"""IS/FID/KID through torch-fidelity: the metric engine in classifier space, the reference
statistics (npz, no pickle), the score stage's outputs, NaN-free JSON, and the report."""
import json

import numpy as np
import pytest
import torch

from pipeline.data import load_dataset
from pipeline.errors import CemError
from pipeline.metrics import (Judge, extract, json_safe, mean_pairwise_distance, metrics_from_features,
                              read_reference_stats, reference_stats, write_reference_stats)
from tests.conftest import cem, write_params

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def judge_and_data(trained):
    tmp, _ = trained
    return Judge(tmp / "ref" / "model.pt"), load_dataset(tmp / "data")


def _score(space, images, reference, kid=1000):
    ref = reference_stats(space, reference, 64, CPU, 0, {})
    return metrics_from_features(extract(space, images, 64, CPU, "test"), ref, space, kid)


def test_fid_small_between_real_sets_large_against_noise(judge_and_data):
    judge, ds = judge_and_data
    noise = (torch.rand(100, 3, 32, 32) * 255).to(torch.uint8)
    real_vs_real = _score(judge.space, ds.test.images, ds.train.images)
    real_vs_noise = _score(judge.space, noise, ds.test.images)
    self_fid = _score(judge.space, ds.test.images, ds.test.images)
    assert self_fid["fid"] < 1e-3
    assert real_vs_noise["fid"] > 10 * real_vs_real["fid"], (real_vs_real, real_vs_noise)


def test_is_of_real_images_exceeds_noise(judge_and_data):
    judge, ds = judge_and_data
    noise = (torch.rand(100, 3, 32, 32) * 255).to(torch.uint8)
    real = _score(judge.space, ds.test.images, ds.train.images)
    fake = _score(judge.space, noise, ds.train.images)
    assert real["is"] > fake["is"] + 0.5, (real["is"], fake["is"])


def test_kid_works_below_the_default_subset_size(judge_and_data):
    judge, ds = judge_and_data
    res = _score(judge.space, ds.test.images[:37], ds.train.images)  # 37 < torch-fidelity's 1000
    assert np.isfinite(res["kid"])


def independent_fid(f1: np.ndarray, f2: np.ndarray) -> float:
    """FID by a route other than torch-fidelity's eigvals(Σ1·Σ2): symmetric square roots (eigh)."""
    mu1, mu2 = f1.mean(0), f2.mean(0)
    s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    w, v = np.linalg.eigh(s1)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    inner = np.linalg.eigvalsh(root1 @ s2 @ root1)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.sqrt(np.clip(inner, 0, None)).sum())


def test_torch_fidelity_fid_through_the_judge_equals_an_independent_computation(judge_and_data):
    import torch_fidelity
    from pipeline.metrics import UInt8Images
    judge, ds = judge_and_data
    a, b = ds.test.images[:60], ds.train.images[:80]
    res = torch_fidelity.calculate_metrics(input1=UInt8Images(a), input2=UInt8Images(b), fid=True, cache=False,
                                           feature_extractor=judge.name, cuda=False, verbose=False)
    fa = extract(judge.space, a, 64, CPU, "a")["features"].numpy()
    fb = extract(judge.space, b, 64, CPU, "b")["features"].numpy()
    assert res["frechet_inception_distance"] == pytest.approx(independent_fid(fa, fb), rel=1e-4, abs=1e-6)


def test_reference_stats_roundtrip_without_pickle_and_refuse_other_data(judge_and_data, tmp_path):
    judge, ds = judge_and_data
    stats = reference_stats(judge.space, ds.train.images, 64, CPU, 0, {"data_sha256": "abc"})
    path = tmp_path / "classifier.npz"
    write_reference_stats(stats, path)
    with np.load(path, allow_pickle=False) as z:  # readable without pickle
        assert set(z.files) == {"mu", "sigma", "kid_features", "meta"}
    back = read_reference_stats(path, judge.space, {"data_sha256": "abc"})
    assert np.array_equal(back.mu, stats.mu) and back.meta["n"] == len(ds.train.images)
    with pytest.raises(CemError, match="rerun `cem reference-stats`"):
        read_reference_stats(path, judge.space, {"data_sha256": "other"})
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    (tmp_path / "obj.npy").rename(tmp_path / "bad.npz")
    with pytest.raises(CemError, match="not a statistics file"):
        read_reference_stats(tmp_path / "bad.npz", judge.space, {})


def test_diversity_is_zero_for_copies_grows_with_spread_and_is_none_when_undefined():
    f = torch.randn(50, 8)
    assert mean_pairwise_distance(f[:1].repeat(10, 1)) == 0
    assert mean_pairwise_distance(3 * f) > mean_pairwise_distance(f)
    assert mean_pairwise_distance(f[:3], torch.tensor([0, 1, 2])) is None  # no class holds two samples


def test_json_safe_turns_nan_into_null_and_says_so():
    warnings = []
    out = json_safe({"a": {"fid": float("nan"), "kid": 1.0}, "b": [float("inf")]}, warnings_out=warnings)
    text = json.dumps(out, allow_nan=False)  # valid JSON
    assert json.loads(text) == {"a": {"fid": None, "kid": 1.0}, "b": [None]}
    assert len(warnings) == 2 and "a.fid" in warnings[0]


def _score_params(trained, tmp_path, **score):
    tmp, raw = trained
    raw = json.loads(json.dumps(raw))
    raw["sample"]["out_dir"] = str(tmp_path / "samples")
    raw["score"]["out_dir"] = str(tmp_path / "scores")
    raw["score"]["reference_dir"] = str(tmp_path / "refstats")
    raw["score"].update(score)
    raw["report"]["out"] = str(tmp_path / "reports" / "results.md")
    return raw, str(write_params(tmp_path, raw))


def test_score_and_report_stages(trained, tmp_path):
    raw, params = _score_params(trained, tmp_path)
    cem("reference-stats", "--params", params)
    assert sorted(p.name for p in (tmp_path / "refstats").iterdir()) == ["classifier.npz", "controls.json"]
    controls = json.loads((tmp_path / "refstats" / "controls.json").read_text())
    assert set(controls["spaces"]["classifier"]["sets"]) == {"real", "blur", "noise", "seeds"}
    assert controls["n"] == 20 and isinstance(controls["spaces"]["classifier"]["passed"], bool)
    for name in ("cs", "maxent_uncond"):
        cem("sample", name, "--params", params)
        assert (tmp_path / "samples" / name / "controls.pt").exists()
        cem("score", name, "--params", params)
        text = (tmp_path / "scores" / f"{name}.json").read_text()
        s = json.loads(text)
        assert "NaN" not in text
        assert s["samples"]["inception"] == "disabled"
        c = s["samples"]["classifier"]
        assert {"is", "fid", "kid", "diversity", "n", "reference_n"} <= set(c)
        assert {"control_seeds", "control_steps2"} <= set(s) and s["controls"] == {"n": 10, "steps": 2}
        assert ("target_acc" in c) == (name == "cs")
        assert s["judge_sha256"] and s["mlflow_run_id"]
    cem("report", "--params", params)
    text = (tmp_path / "reports" / "results.md").read_text()
    assert "| supervised | cond | CS | 20 |" in text and "| 9.77 | 56.26 |" in text
    assert "Inception space" in text and "Not computed in this run" in text
    assert "Control rows" in text and "(grids/cs.png)" in text
    assert "Controls of every feature space" in text and "real test images (IS ceiling)" in text
    if not controls["spaces"]["classifier"]["passed"]:  # the tiny synthetic judge may fail: then it says so
        assert "instrument failed its controls: verdicts withheld" in text and "| withheld |" in text
    assert (tmp_path / "reports" / "grids" / "cs.png").exists() and (tmp_path / "reports" / "scores.png").exists()


def test_score_refuses_statistics_of_another_reference_set(trained, tmp_path):
    raw, params = _score_params(trained, tmp_path)
    cem("reference-stats", "--params", params)
    cem("sample", "cs", "--params", params)
    raw["score"]["reference_per_class"] = 5
    params = str(write_params(tmp_path, raw))
    out = cem("score", "cs", "--params", params, check=False)
    assert out.returncode == 1 and out.stderr.count("\n") == 1 and "reference-stats" in out.stderr
    assert not (tmp_path / "scores" / "cs.json").exists()


@pytest.mark.parametrize("n", [20, 200])  # N below and above the feature dimension: both routes of fid_exact
def test_fid_noise_uses_an_fid_that_equals_torch_fidelitys(judge_and_data, n):
    from pipeline.metrics import fid_bootstrap_sd, fid_exact
    judge, ds = judge_and_data
    space = judge.space
    ref = reference_stats(space, ds.train.images, 64, CPU, 0, {})
    noise = (torch.rand(n, 3, 32, 32) * 255).to(torch.uint8)
    images = torch.cat([ds.test.images, noise])[:n]
    feats = extract(space, images, 64, CPU, "test")
    f = feats[space.fid_layer]
    ours = fid_exact(f.double(), torch.from_numpy(ref.mu).double(), torch.from_numpy(ref.sigma).double(),
                     None if n <= f.shape[1] else _root(ref.sigma))
    theirs = metrics_from_features(feats, ref, space, 1000)["fid"]
    assert abs(ours - theirs) <= 1e-6 * max(1.0, abs(theirs)), (ours, theirs)
    sd = fid_bootstrap_sd(f, ref)
    assert sd is not None and 0 < sd < theirs


def _root(sigma):
    s = torch.from_numpy(sigma).double()
    w, v = torch.linalg.eigh(s)
    return (v * w.clamp(min=0).sqrt()) @ v.T


def test_fid_noise_shrinks_with_more_samples(judge_and_data):
    """The bootstrap noise is the noise of this N: 4x the samples, about half the spread."""
    from pipeline.metrics import fid_bootstrap_sd
    judge, ds = judge_and_data
    ref = reference_stats(judge.space, ds.test.images, 64, CPU, 0, {})
    f = extract(judge.space, ds.train.images, 64, CPU, "test")[judge.space.fid_layer]
    small, large = (fid_bootstrap_sd(f[:k], ref, reps=20) for k in (len(f) // 4, len(f)))
    assert large < 0.8 * small, (small, large)
