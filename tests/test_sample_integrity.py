"""Nothing wrong is ever scored (issue 18): every shard proves its origin, a folder with a missing,
foreign, resized or half-written shard is refused in one line naming the file, and bad sampling
params are refused before any output is touched."""
import json
import shutil

import pytest
import torch

from tests.conftest import cem, write_params


def one_line(proc):
    lines = [l for l in proc.stderr.strip().splitlines() if l.strip()]
    assert proc.returncode != 0 and len(lines) == 1, (proc.returncode, proc.stderr)
    return lines[0]


@pytest.fixture(scope="module")
def sampled(trained, tmp_path_factory):
    """cs and ta sampled once (2 shards each), reference statistics written: (params dict, folder)."""
    tmp, raw = trained
    work = tmp_path_factory.mktemp("integrity")
    raw = json.loads(json.dumps(raw))
    raw["sample"]["out_dir"] = str(work / "samples")
    raw["score"]["out_dir"] = str(work / "scores")
    raw["score"]["reference_dir"] = str(work / "refstats")
    raw["report"]["out"] = str(work / "reports" / "results.md")
    params = write_params(work, raw)
    cem("reference-stats", "--params", str(params))
    for name in ("cs", "ta"):
        cem("sample", name, "--params", str(params))
    return raw, work


@pytest.fixture
def copy(sampled, tmp_path):
    """A private copy of the sampled folders and their params."""
    raw, work = sampled
    raw = json.loads(json.dumps(raw))
    shutil.copytree(work / "samples", tmp_path / "samples")
    shutil.copytree(work / "refstats", tmp_path / "refstats")
    raw["sample"]["out_dir"] = str(tmp_path / "samples")
    raw["score"]["out_dir"] = str(tmp_path / "scores")
    raw["score"]["reference_dir"] = str(tmp_path / "refstats")
    return str(write_params(tmp_path, raw)), tmp_path


def _score_fails(params, tmp_path, name="ta"):
    line = one_line(cem("score", name, "--params", params, check=False))
    assert not (tmp_path / "scores" / f"{name}.json").exists()
    return line


def test_every_shard_records_what_made_it(copy):
    _, tmp = copy
    blob = torch.load(tmp / "samples" / "ta" / "shard-00000.pt", weights_only=True)
    prov = blob["provenance"]
    cfg = json.loads((tmp / "samples" / "ta" / "config.json").read_text())
    assert prov["sampler"] == "ta" and prov["config_hash"] == cfg["hash"] and prov["index"] == 0
    assert prov["shape"] == [10, 3, 32, 32] and prov["dtype"] == "uint8" and len(prov["model_sha256"]) == 64
    assert "mlflow_run_id" not in json.dumps(prov)  # identical work, identical bytes


def test_a_deleted_shard_is_refused_by_score(copy):
    params, tmp = copy
    (tmp / "samples" / "ta" / "shard-00001.pt").unlink()
    assert "1 of 2 shards missing (shard-00001.pt)" in _score_fails(params, tmp)


def test_a_foreign_shard_is_refused_by_score_and_replaced_by_sample(copy):
    params, tmp = copy
    shutil.copy(tmp / "samples" / "cs" / "shard-00000.pt", tmp / "samples" / "ta" / "shard-00000.pt")
    line = _score_fails(params, tmp)
    assert "shard-00000.pt does not belong" in line and "'cs'" in line
    cem("sample", "ta", "--params", params)  # the writer discards it and makes the real one again
    prov = torch.load(tmp / "samples" / "ta" / "shard-00000.pt", weights_only=True)["provenance"]
    assert prov["sampler"] == "ta"
    cem("score", "ta", "--params", params)


def test_a_folder_left_by_a_killed_sampler_is_refused(copy):
    params, tmp = copy
    (tmp / "samples" / "ta" / "meta.json").unlink()  # `cem sample` removes it first and writes it last
    assert "not a finished sample folder" in _score_fails(params, tmp)


def test_meta_of_another_run_is_refused(copy):
    params, tmp = copy
    meta = tmp / "samples" / "ta" / "meta.json"
    meta.write_text(json.dumps({**json.loads(meta.read_text()), "config_hash": "0123456789abcdef"}))
    assert "describes another run" in _score_fails(params, tmp)


def test_resized_images_are_refused(copy):
    params, tmp = copy
    path = tmp / "samples" / "ta" / "shard-00000.pt"
    blob = torch.load(path, weights_only=True)
    blob["images"] = torch.nn.functional.interpolate(blob["images"].float(), size=64).to(torch.uint8)
    torch.save(blob, path)
    assert "expected uint8 (N, 3, 32, 32)" in _score_fails(params, tmp)


@pytest.mark.parametrize("damage", ["no images", "labels", "truncated"])
def test_damaged_shards_are_one_line(copy, damage):
    params, tmp = copy
    path = tmp / "samples" / "ta" / "shard-00001.pt"
    blob = torch.load(path, weights_only=True)
    if damage == "no images":
        del blob["images"]
        torch.save(blob, path)
    elif damage == "labels":
        blob["labels"] = blob["labels"][:3]
        torch.save(blob, path)
    else:
        path.write_bytes(path.read_bytes()[:300])
    assert "shard-00001.pt" in _score_fails(params, tmp)


@pytest.mark.parametrize("name, text", [("meta.json", "{\"sampler\": "), ("config.json", "[1, 2]")])
def test_malformed_json_beside_the_samples_is_one_line(copy, name, text):
    params, tmp = copy
    (tmp / "samples" / "ta" / name).write_text(text)
    assert name in _score_fails(params, tmp)


def test_malformed_controls_file_is_one_line(copy):
    params, tmp = copy
    (tmp / "refstats" / "controls.json").write_text("{\"spaces\": 3}")
    line = one_line(cem("report", "--params", params, check=False))
    assert "controls.json is not a controls file" in line


@pytest.mark.parametrize("override, words", [
    ("sample.rcs.lam=.nan", "sample.rcs.lam: Input should be a finite number"),
    ("data.cov_ridge=.inf", "data.cov_ridge: Input should be a finite number"),
    ("sample.defaults.eps=.inf", "sample.defaults.eps: Input should be a finite number"),
    ("sample.ta.n=1000000000000", "sample.ta.n: Input should be less than or equal to 1000000"),
])
def test_non_finite_or_huge_params_are_refused_before_outputs_are_touched(copy, override, words):
    params, tmp = copy
    before = sorted(p.name for p in (tmp / "samples" / "ta").iterdir())
    line = one_line(cem("sample", "ta", "--params", params, "--set", override, check=False))
    assert words in line
    assert sorted(p.name for p in (tmp / "samples" / "ta").iterdir()) == before


def test_n_that_is_not_a_number_is_one_line(copy):
    params, _ = copy
    proc = cem("sample", "ta", "--params", params, "--n", "abc", check=False)
    assert proc.returncode == 2 and "Invalid value for '--n'" in one_line(proc)


def test_a_model_with_other_classes_than_the_data_is_refused_before_shards_go(copy, trained):
    params, tmp = copy
    tmp_model = tmp / "model10.pt"
    blob = torch.load(trained[0] / "sup" / "model.pt", weights_only=True)
    blob["num_classes"] = 2
    blob["state_dict"]["fc.weight"] = blob["state_dict"]["fc.weight"][:2]
    torch.save(blob, tmp_model)
    raw = json.loads(json.dumps(__import__("yaml").safe_load(open(params))))
    raw["train_sup"]["out_dir"] = str(tmp)  # model_path_for reads <train_sup.out_dir>/model.pt
    (tmp / "model.pt").write_bytes(tmp_model.read_bytes())
    p2 = write_params(tmp, raw)
    before = sorted(p.name for p in (tmp / "samples" / "ta").iterdir())
    assert "has 2 classes but the prepared data" in one_line(cem("sample", "ta", "--params", str(p2), check=False))
    assert sorted(p.name for p in (tmp / "samples" / "ta").iterdir()) == before


@pytest.mark.parametrize("which, text, words", [
    ("score", "{\"sampler\": \"ta\", \"sam", "not a readable score file"),
    ("score", "{\"sampler\": \"ta\", \"samples\": {\"classifier\": {\"fid\": 1.0}}}", "no 'n'"),
    ("train_sup", "{\"clean_acc\": ", "not a readable training metrics file"),
    ("manifest", "[]", "not a prepare manifest file"),
])
def test_malformed_scores_metrics_and_manifest_are_one_line(copy, which, text, words):
    params, tmp = copy
    raw = __import__("yaml").safe_load(open(params))
    if which == "score":
        path = tmp / "scores" / "ta.json"
    elif which == "train_sup":
        path = tmp / "metrics" / "train_sup.json"
        raw["metrics_dir"] = str(tmp / "metrics")
    else:
        shutil.copytree(raw["data"]["out_dir"], tmp / "data")
        raw["data"]["out_dir"] = str(tmp / "data")
        path = tmp / "data" / "manifest.json"
    params = str(write_params(tmp, raw))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    cmd = ("sample", "ta") if which == "manifest" else ("report",)
    line = one_line(cem(*cmd, "--params", params, check=False))
    assert words in line and path.name in line


def test_reference_statistics_with_the_right_metadata_but_wrong_shapes_are_one_line(copy):
    import numpy as np
    params, tmp = copy
    path = tmp / "refstats" / "classifier.npz"
    with np.load(path, allow_pickle=False) as z:
        parts = {k: z[k] for k in z.files}
    parts["sigma"] = parts["sigma"][:-1]  # the metadata still says it is right
    np.savez(path, **parts)
    assert "do not fit together" in _score_fails(params, tmp)


@pytest.mark.parametrize("stage", ["score", "reference-stats"])
def test_a_second_score_or_reference_stats_on_the_same_folder_refuses(copy, stage):
    import fcntl
    import os
    params, tmp = copy
    lock = tmp / "scores" / ".ta.lock" if stage == "score" else tmp / ".refstats.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # another cem process holds it
    try:
        args = ("score", "ta") if stage == "score" else ("reference-stats",)
        assert "another cem process is writing" in one_line(cem(*args, "--params", params, check=False))
    finally:
        os.close(fd)
