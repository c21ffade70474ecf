"""Public robust models as sampler sources (train_sup.source: robustbench:<name>): a checkpoint saved
in RobustBench's format is loaded weights-only, evaluated and written like a trained model, and
`cem sample` runs from it; a pickle payload is refused without running; offline is one line."""
import json
import os

import pytest
import torch

from pipeline import model_sources
from pipeline.errors import CemError
from tests.conftest import cem, write_params

NAME = "Rice2020Overfitting"  # PreActResNet-18: the smallest L2 architecture of the zoo


class Payload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _save_robustbench_format(folder, seed=0):
    """A checkpoint as RobustBench distributes them: {'state_dict': {'module.<key>': tensor}}."""
    torch.manual_seed(seed)
    net = model_sources.architecture(NAME)
    path = model_sources.checkpoint_path(NAME, folder)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}}, path)
    return net, path


def _params(trained, tmp_path):
    _, raw = trained
    raw = json.loads(json.dumps(raw))
    raw["train_sup"].update({"source": f"robustbench:{NAME}", "out_dir": str(tmp_path / "sup")})
    raw["train_sup"]["eval"].update({"epoch_per_class": 1, "epoch_attack_steps": 1})
    raw["evaluate"]["sup"].update({"test_per_class": 1, "attack_steps": 1})
    raw["metrics_dir"] = str(tmp_path / "metrics")
    raw["sample"].update({"out_dir": str(tmp_path / "samples")})
    raw["sample"]["defaults"].update({"n": 10, "batch_size": 10, "shard_size": 10, "steps": 1})
    raw["sample"]["controls"] = {"n": 10, "steps": 1}
    return write_params(tmp_path, raw)


def test_zoo_checkpoint_becomes_the_sampled_model(trained, tmp_path):
    net, _ = _save_robustbench_format(tmp_path / "sup" / "robustbench")
    params = str(_params(trained, tmp_path))
    cem("train", "supervised", "--params", params)
    metrics = json.loads((tmp_path / "metrics" / "train_sup.json").read_text())
    assert metrics["source"] == f"robustbench:{NAME}"
    cem("evaluate", "sup", "--params", params)  # evaluated like a trained model, under the recorded threat model
    evaluated = json.loads((tmp_path / "metrics" / "evaluate_sup.json").read_text())
    assert evaluated["eval_images"] == 10 and evaluated["threat_model"] == "l2 eps=0.5 PGD-1"
    blob = torch.load(tmp_path / "sup" / "model.pt", weights_only=True)
    assert blob["arch"] == {"name": "robustbench", "model": NAME, "threat_model": "L2"}
    assert torch.equal(blob["state_dict"]["net.linear.weight"], net.state_dict()["linear.weight"])
    cem("sample", "cs", "--params", params)
    shards = list((tmp_path / "samples" / "cs").glob("shard-*.pt"))
    assert len(shards) == 1 and (tmp_path / "samples" / "cs" / "controls.pt").exists()


def test_a_pickle_payload_in_the_checkpoint_is_refused_and_never_runs(trained, tmp_path):
    marker = tmp_path / "ran"
    path = model_sources.checkpoint_path(NAME, tmp_path / "sup" / "robustbench")
    path.parent.mkdir(parents=True)
    torch.save({"state_dict": Payload(marker)}, path)
    out = cem("train", "supervised", "--params", str(_params(trained, tmp_path)), check=False)
    assert out.returncode == 1 and out.stderr.count("\n") == 1 and "refusing" in out.stderr
    assert not marker.exists() and not (tmp_path / "sup" / "model.pt").exists()


def test_offline_download_is_one_clear_line(tmp_path, monkeypatch):
    import robustbench.utils

    def unreachable(*_a, **_k):
        raise ConnectionError("no route to host")
    monkeypatch.setattr(robustbench.utils, "download_gdrive", unreachable)
    with pytest.raises(CemError, match="cannot download RobustBench model .* place its checkpoint at"):
        model_sources.fetch(NAME, tmp_path)
    assert not list(tmp_path.rglob("*.pt")) and not list(tmp_path.rglob(".*download*"))


def test_unknown_names_and_the_judge_are_refused():
    from pipeline.params import parse_params
    with pytest.raises(CemError, match="not a RobustBench CIFAR-10 L2 model"):
        model_sources.architecture("NoSuchModel2099")
    with pytest.raises(CemError, match="train_ref.source must be 'train'"):
        parse_params({"train_ref": {"source": f"robustbench:{NAME}"}})
    with pytest.raises(CemError, match="robustbench:<model name>"):
        parse_params({"train_sup": {"source": "huggingface:x"}})
