"""IS/FID/KID in classifier space through torch-fidelity: sanity of the metric engine, the score
stage's outputs, and the report."""
import json

import pytest
import torch

from pipeline.data import load_dataset
from pipeline.scoring import Judge, fidelity, inception_weights, mean_pairwise_distance
from tests.conftest import cem, write_params


@pytest.fixture(scope="module")
def judge_and_data(trained, tmp_path_factory):
    tmp, _ = trained
    judge = Judge(tmp / "ref" / "model.pt", torch.device("cpu"))
    ds = load_dataset(tmp / "data")
    return judge, ds, str(tmp_path_factory.mktemp("fcache"))


def _fid(judge, a, b, name, cache, **kw):
    return fidelity(a, b, name, judge.name, kid_subset_size=1000, batch_size=64, cuda=False, cache_root=cache, **kw)


def test_fid_small_between_real_sets_large_against_noise(judge_and_data):
    judge, ds, cache = judge_and_data
    noise = (torch.rand(100, 3, 32, 32) * 255).to(torch.uint8)
    real_vs_real = _fid(judge, ds.test.images, ds.train.images, "train-a", cache)
    real_vs_noise = _fid(judge, noise, ds.test.images, "test-a", cache)
    self_fid = _fid(judge, ds.test.images, ds.test.images, "test-b", cache)
    assert self_fid["fid"] < 1e-3
    assert real_vs_noise["fid"] > 10 * real_vs_real["fid"], (real_vs_real, real_vs_noise)


def test_is_of_real_images_exceeds_noise(judge_and_data):
    judge, ds, cache = judge_and_data
    noise = (torch.rand(100, 3, 32, 32) * 255).to(torch.uint8)
    real = _fid(judge, ds.test.images, ds.train.images, "train-b", cache)
    fake = _fid(judge, noise, ds.train.images, "train-b", cache)
    assert real["is"] > fake["is"] + 0.5, (real["is"], fake["is"])


def test_kid_works_below_the_default_subset_size(judge_and_data):
    judge, ds, cache = judge_and_data
    res = _fid(judge, ds.test.images[:37], ds.train.images, "train-c", cache)  # 37 < torch-fidelity's 1000
    assert res["kid"] == res["kid"]  # not NaN


def test_cache_name_includes_the_extractor_identity(judge_and_data, tmp_path):
    judge, ds, _ = judge_and_data
    _fid(judge, ds.test.images, ds.train.images, "train-d", str(tmp_path))
    cached = [p.name for p in tmp_path.rglob("*") if p.is_file()]
    assert cached and all(judge.name in name for name in cached), cached


def test_diversity_is_zero_for_copies_and_grows_with_spread():
    f = torch.randn(50, 8)
    assert mean_pairwise_distance(f[:1].repeat(10, 1)) == 0
    assert mean_pairwise_distance(3 * f) > mean_pairwise_distance(f)


def test_inception_is_unavailable_offline_and_a_bad_path_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    assert inception_weights(None) is None
    with pytest.raises(Exception, match="not found"):
        inception_weights(str(tmp_path / "missing.pth"))


def test_score_and_report_stages(trained, tmp_path):
    tmp, raw = trained
    raw = json.loads(json.dumps(raw))
    raw["sample"]["out_dir"] = str(tmp_path / "samples")
    raw["score"]["out_dir"] = str(tmp_path / "scores")
    raw["score"]["inception"] = True
    raw["report"]["out"] = str(tmp_path / "reports" / "results.md")
    params = str(write_params(tmp_path, raw))
    for name in ("cs", "maxent_uncond"):
        cem("sample", name, "--params", params)
        out = cem("score", name, "--params", params, env={"TORCH_HOME": str(tmp_path / "hub")})
        assert "inception: unavailable" in out.stderr
        s = json.loads((tmp_path / "scores" / f"{name}.json").read_text())
        assert s["inception"] == "unavailable"
        assert {"is", "fid", "kid", "diversity"} <= set(s["classifier"])
        assert {"control_seeds", "control_steps2"} <= set(s)
        assert ("target_acc" in s["classifier"]) == (name == "cs")
        assert s["judge_sha256"] and s["mlflow_run_id"]
    cem("report", "--params", params)
    text = (tmp_path / "reports" / "results.md").read_text()
    assert "| supervised | cond | CS | 20 |" in text and "| 9.77 | 56.26 |" in text
    assert "Control rows" in text and "(grids/cs.png)" in text
    assert (tmp_path / "reports" / "grids" / "cs.png").exists() and (tmp_path / "reports" / "scores.png").exists()
