"""`cem evaluate NAME`: the final evaluation of each trained model, apart from its training."""
import json

import pytest
import torch

from pipeline.errors import ParamsError
from pipeline.files import atomic_torch_save
from pipeline.params import parse_params
from tests.conftest import cem


@pytest.fixture(scope="module")
def evaluated(trained):
    tmp, raw = trained
    for name in ("sup", "ref", "unsup"):
        cem("evaluate", name, "--params", str(tmp / "params.yaml"))
    return tmp, {name: json.loads((tmp / "metrics" / f"evaluate_{name}.json").read_text())
                 for name in ("sup", "ref", "unsup")}


def test_each_model_is_measured_under_the_threat_model_its_file_records(evaluated):
    _, m = evaluated
    assert m["sup"]["threat_model"] == "l2 eps=0.5 PGD-3" and m["sup"]["eval_images"] == 50
    assert m["unsup"]["threat_model"] == "linf eps=0.03137 PGD-3"  # the encoder's linear probe, L-inf
    for name in ("sup", "unsup"):
        assert 0 <= m[name]["robust_acc"] <= m[name]["clean_acc"] <= 100
    # the judge: clean accuracy only, in fp32 (as scoring uses it); it learned the synthetic classes
    assert m["ref"]["threat_model"] == "none (clean only)" and "robust_acc" not in m["ref"]
    assert m["ref"]["bf16"] is False and m["ref"]["clean_acc"] > 30
    assert "autoattack_acc" not in m["sup"]  # autoattack: false


def test_the_same_params_give_the_same_numbers(evaluated, tmp_path):
    tmp, m = evaluated
    cem("evaluate", "sup", "--params", str(tmp / "params.yaml"), "--set", f"metrics_dir={tmp_path}",
        env={"CEM_STAGE_TIMES": str(tmp_path / "times.jsonl")})
    again = json.loads((tmp_path / "evaluate_sup.json").read_text())
    timing = {"eval_seconds", "autoattack_seconds"}
    assert {k: v for k, v in again.items() if k not in timing} == {k: v for k, v in m["sup"].items() if k not in timing}
    # where the stage's time went (the GPU estimate plans from it): loading and the evaluation, each named
    phases = json.loads((tmp_path / "times.jsonl").read_text())["seconds"]
    assert phases["load"] > 0 and phases["eval"] > 0 and "autoattack" not in phases


def test_the_unsupervised_model_is_measured_through_its_stored_probe(evaluated):
    """The linear probe training fitted travels in the model file; evaluating refits nothing."""
    from pipeline.checkpoints import load_model_file
    from pipeline.final_evaluation import network
    tmp, _ = evaluated
    blob = load_model_file(tmp / "unsup" / "model.pt")
    net = network(blob, torch.device("cpu"), False)
    assert torch.equal(net.fc.weight, blob["probe_state_dict"]["weight"])


def test_bad_requests_are_one_line_and_write_nothing(evaluated, tmp_path):
    tmp, raw = evaluated
    out = cem("evaluate", "nope", "--params", str(tmp / "params.yaml"), check=False)
    assert out.returncode != 0 and out.stderr.strip().count("\n") == 0 and "sup, ref, unsup" in out.stderr
    # AutoAttack asked of a clean-only evaluation
    out = cem("evaluate", "ref", "--params", str(tmp / "params.yaml"), "--set", "evaluate.ref.autoattack=true",
              "--set", f"metrics_dir={tmp_path / 'm1'}", check=False)
    assert out.returncode != 0 and out.stderr.strip().count("\n") == 0 and "no attack to run" in out.stderr
    assert not (tmp_path / "m1" / "evaluate_ref.json").exists()
    # a model file from before the threat model was recorded
    blob = torch.load(tmp / "sup" / "model.pt", weights_only=True)
    del blob["threat_model"]
    atomic_torch_save(blob, tmp_path / "old" / "model.pt")
    out = cem("evaluate", "sup", "--params", str(tmp / "params.yaml"), "--set", f"train_sup.out_dir={tmp_path / 'old'}",
              "--set", f"metrics_dir={tmp_path / 'm2'}", check=False)
    assert out.returncode != 0 and "records no threat model" in out.stderr and out.stderr.strip().count("\n") == 0
    assert not (tmp_path / "m2").exists() or not any((tmp_path / "m2").iterdir())
    # no model at all
    out = cem("evaluate", "sup", "--params", str(tmp / "params.yaml"), "--set", f"train_sup.out_dir={tmp_path / 'none'}",
              check=False)
    assert out.returncode != 0 and "run the training stage first" in out.stderr


def test_a_final_evaluation_key_left_in_a_training_section_says_where_it_went():
    with pytest.raises(ParamsError, match=r"train_sup\.eval\.test_per_class: .*evaluate\.sup\.test_per_class"):
        parse_params({"train_sup": {"eval": {"test_per_class": 10}}})
    with pytest.raises(ParamsError, match=r"evaluate\.unsup\.autoattack"):
        parse_params({"train_unsup": {"eval": {"final_attack": "autoattack"}}})

