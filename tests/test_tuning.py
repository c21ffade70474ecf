"""`cem tune` (pipeline/tuning.py): the held-out split is disjoint from the reference set, one chain's
iterates are exactly the runs of fewer steps, the one-standard-error choice, the stage's outputs."""
import json

import pytest
import torch

from pipeline.errors import CemError
from pipeline.params import parse_params
from pipeline.samplers import generate_batch
from pipeline.sampling import prepare_context
from pipeline.scoring import reference_images
from pipeline.tuning import TUNE_BATCHES, chains, choose, heldout_split, image_keys
from tests.conftest import cem, write_params


def test_the_heldout_split_is_disjoint_from_the_reference_set(trained):
    """Plant training images (hence possible reference images) among the test images: they are dropped,
    and no held-out image's bytes occur in the reference set the report scores against."""
    from pipeline.data import Dataset, Split, load_dataset
    tmp, raw = trained
    ds = load_dataset(tmp / "data")
    planted = torch.cat([ds.test.images, ds.train.images[:7]])
    labels = torch.cat([ds.test.labels, ds.train.labels[:7]])
    held = heldout_split(planted, labels, ds.train.images, None, 0)
    assert held.dropped >= 7 and len(held.images) == len(planted) - held.dropped
    p = parse_params(raw)
    reference, _, _ = reference_images(p.data.out_dir, p.score, Dataset(ds.train, Split(planted, labels), ds.classes))
    assert not image_keys(held.images) & image_keys(reference)
    assert not image_keys(held.images) & image_keys(ds.train.images)
    with pytest.raises(CemError, match="fewer than 2 held-out test images"):
        heldout_split(ds.train.images[:5], ds.train.labels[:5], ds.train.images, None, 0)


@pytest.mark.parametrize("name, over", [("rcs_pca_momentum", {}), ("langevin", {"momentum": 0.3})])
def test_one_chain_gives_exactly_the_runs_of_fewer_steps(trained, name, over):
    """The iterate after t steps of the longest chain is the same tensor a run of t steps returns
    (momentum and Langevin noise included): one chain serves every step count of the curve."""
    tmp, raw = trained
    raw = json.loads(json.dumps(raw))
    raw["sample"].setdefault(name, {}).update(over)
    raw["tune"] = {"n": 10, "steps": [0, 2, 5], "seed": 3}
    p = parse_params(raw)
    rp = p.sample.resolved(name)
    sampler, ctx, seeds, _ = prepare_context(name, rp, tmp / "sup" / "model.pt", str(tmp / "data"),
                                             torch.device("cpu"))
    got = chains(name, rp, ctx, sampler, seeds, p.tune, torch.device("cpu"))
    assert sorted(got) == [(rp.step_size, rp.momentum, t) for t in (0, 2, 5)]
    for t in (0, 2, 5):
        _, x, _ = generate_batch(sampler, ctx, seeds, 0, 10, TUNE_BATCHES + 3_000_000, steps=t)
        assert torch.equal(got[(rp.step_size, rp.momentum, t)], (x.clamp(0, 1) * 255).round().to(torch.uint8))


def test_the_choice_is_the_cheapest_setting_within_noise_of_the_best():
    def row(steps, fid, sd, ss=0.5, mu=0.0):
        return {"steps": steps, "step_size": ss, "momentum": mu, "classifier": {"fid": fid, "fid_sd": sd}}
    rows = [row(0, 50.0, 1.0), row(10, 30.0, 2.0), row(20, 28.0, 1.0), row(40, 25.0, 1.0), row(80, 24.0, 1.0)]
    assert choose(rows, "classifier")["steps"] == 40  # 25 − 24 ≤ √2; 28 − 24 > √2
    rows.append(row(40, 24.5, 1.0, ss=0.25))
    assert choose(rows, "classifier")["step_size"] == 0.25  # same steps: the smaller step size
    with pytest.raises(CemError, match="no setting has a finite FID"):
        choose([row(0, None, None)], "classifier")


def test_tune_stage_writes_the_curve_the_plot_and_the_choice(trained, tmp_path):
    tmp, raw = trained
    raw = json.loads(json.dumps(raw))
    raw["tune"] = {"out_dir": str(tmp_path / "tune"), "n": 10, "steps": [0, 3], "momentum": [0.0, 0.5]}
    params = write_params(tmp_path, raw)
    out = cem("tune", "rcs_pca_momentum", "--params", str(params))
    result = json.loads((tmp_path / "tune" / "rcs_pca_momentum.json").read_text())
    assert len(result["rows"]) == 4 and {r["momentum"] for r in result["rows"]} == {0.0, 0.5}
    assert result["heldout"]["split"] == "test" and result["heldout"]["n"] > 0 and result["mlflow_run_id"]
    assert result["chosen"] in result["rows"] and result["space"] == "classifier"
    for r in result["rows"]:
        assert r["classifier"]["fid"] > 0 and r["classifier"]["fid_sd"] > 0
        assert r["classifier"]["is"] is None or r["classifier"]["is"] >= 1  # 10 samples: IS may be undefined
    curve = json.loads((tmp_path / "tune" / "rcs_pca_momentum_curve.json").read_text())
    assert [c["steps"] for c in curve] == [0, 3, 0, 3] and all("fid" in c for c in curve)
    assert (tmp_path / "tune" / "rcs_pca_momentum.png").stat().st_size > 1000
    assert "chosen steps=" in out.stderr + out.stdout


def test_tune_refuses_bad_settings_in_one_line(trained, tmp_path):
    tmp, raw = trained
    for key, value, message in (("tune", {"steps": [10, 0]}, "tune.steps: Value error, must be distinct"),
                                ("tune", {"momentum": [1.0]}, "tune.momentum: Value error, 1.0 is out of range"),
                                ("sample", {**raw["sample"], "ta": {"return_best": True}},
                                 "return_best returns the best iterate")):
        bad = json.loads(json.dumps(raw))
        bad[key] = value
        res = cem("tune", "ta", "--params", str(write_params(tmp_path, bad)), check=False)
        assert res.returncode != 0 and message in res.stderr, res.stderr[-500:]
        assert len(res.stderr.strip().splitlines()) == 1
