"""Training stages: outputs, true resume after SIGKILL, divergence stop, foreign checkpoints."""
import json
import os
import signal
import subprocess
import sys
import time

import torch

from pipeline.checkpoints import load_model_file
from tests.conftest import ROOT, cem, write_params


def test_outputs_metrics_and_plots_are_written(trained):
    tmp, _ = trained
    for section, folder in (("train_sup", "sup"), ("train_ref", "ref"), ("train_unsup", "unsup")):
        metrics = json.loads((tmp / "metrics" / f"{section}.json").read_text())
        history = json.loads((tmp / "metrics" / f"{section}_history.json").read_text())
        assert (tmp / folder / "curve.png").stat().st_size > 1000
        assert history and history[-1]["step"] == metrics["steps"]
        assert history[-1]["clean_acc"] is not None  # the curve has its final point (probe accuracy for unsup)
        assert not list((tmp / folder / "checkpoints").glob("*.pt"))  # dropped once training ends
        blob = load_model_file(tmp / folder / "model.pt")
        assert "mlflow_run_id" not in blob  # lineage beside the artifact, not in it
        assert json.loads((tmp / folder / "lineage.json").read_text())["mlflow_run_id"]
    assert load_model_file(tmp / "ref" / "model.pt")["temperature"] > 0  # the judge is calibrated
    sup = json.loads((tmp / "metrics" / "train_sup.json").read_text())
    assert {"steps", "train_seconds", "images_per_second"} <= set(sup)
    assert "clean_acc" not in sup  # the final evaluation is `cem evaluate`'s (tests/test_evaluate.py)
    history = json.loads((tmp / "metrics" / "train_unsup_history.json").read_text())
    assert {"probe_clean_acc", "probe_robust_acc"} <= set(history[-1])
    # every model file records the threat model `cem evaluate` attacks it under
    assert load_model_file(tmp / "sup" / "model.pt")["threat_model"] == {"norm": "l2", "eps": 0.5, "step_size": None,
                                                                         "random_start": True}
    assert load_model_file(tmp / "unsup" / "model.pt")["threat_model"]["norm"] == "linf"
    # the tiny supervised model learns the synthetic classes (chance is 10 %): the curve's last point
    assert json.loads((tmp / "metrics" / "train_ref_history.json").read_text())[-1]["clean_acc"] > 30


def _params_for(tmp, raw, name, **optim):
    folder = tmp / name
    folder.mkdir(exist_ok=True)
    raw = json.loads(json.dumps(raw))
    raw["train_sup"]["out_dir"] = str(tmp / "resume_model")  # same out_dir: same params hash
    raw["metrics_dir"] = str(folder / "metrics")
    raw["train_sup"]["optim"].update({"epochs": 8.0, "batch_size": 20, **optim})
    raw["train_sup"]["checkpoint_every"] = 3
    return write_params(folder, raw)


def test_sigkill_then_resume_is_bit_identical(prepared, tmp_path):
    tmp, raw = prepared
    params = _params_for(tmp_path, raw, "a")
    ckpt_dir = tmp_path / "resume_model" / "checkpoints"
    env = {**os.environ, "CI": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "stages.cli", "train", "supervised", "--params", str(params)],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not list(ckpt_dir.glob("ckpt-*.pt")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "training finished before it could be killed"
    ckpts = list(ckpt_dir.glob("ckpt-*.pt"))
    assert ckpts and not (tmp_path / "resume_model" / "model.pt").exists()
    killed_at = torch.load(ckpts[0], weights_only=True)["step"]
    assert 0 < killed_at < 80

    resumed = cem("train", "supervised", "--params", str(params))
    assert "resuming from" in resumed.stderr
    resumed_weights = load_model_file(tmp_path / "resume_model" / "model.pt")["state_dict"]
    resumed_bytes = (tmp_path / "resume_model" / "model.pt").read_bytes()

    cem("train", "supervised", "--params", str(params), "--restart")  # the uninterrupted run
    straight = load_model_file(tmp_path / "resume_model" / "model.pt")["state_dict"]
    assert resumed_weights.keys() == straight.keys()
    for k in straight:
        assert torch.equal(resumed_weights[k], straight[k]), k
    # and the same bytes: the run id lives in lineage.json, not in the model file (DVC caches work)
    assert (tmp_path / "resume_model" / "model.pt").read_bytes() == resumed_bytes


def test_checkpoint_from_other_params_is_refused(prepared, tmp_path):
    tmp, raw = prepared
    params_a = _params_for(tmp_path, raw, "a")
    params_b = _params_for(tmp_path, raw, "b", lr=0.01)
    env = {**os.environ, "CI": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "stages.cli", "train", "supervised", "--params", str(params_a)],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt_dir = tmp_path / "resume_model" / "checkpoints"
    deadline = time.time() + 120
    while not list(ckpt_dir.glob("ckpt-*.pt")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.kill()
    proc.wait()
    ckpt = next(ckpt_dir.glob("ckpt-*.pt"))
    out = cem("train", "supervised", "--params", str(params_b), "--resume", str(ckpt), check=False)
    assert out.returncode == 1
    assert out.stderr.count("\n") == 1 and "made with other params" in out.stderr and "refusing" in out.stderr
    assert not (tmp_path / "resume_model" / "model.pt").exists()


def test_divergence_stops_with_one_line_and_no_output(prepared, tmp_path):
    tmp, raw = prepared
    raw = json.loads(json.dumps(raw))
    raw["train_sup"]["out_dir"] = str(tmp_path / "nan_model")
    raw["metrics_dir"] = str(tmp_path / "metrics")
    raw["train_sup"]["optim"].update({"lr": 1.0e12, "schedule": "constant", "warmup_frac": 0.0})  # diverges at once
    out = cem("train", "supervised", "--params", str(write_params(tmp_path, raw)), check=False)
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "loss became" in lines[0] and "epoch" in lines[0] and "step" in lines[0], out.stderr
    assert not (tmp_path / "nan_model" / "model.pt").exists()
    assert not (tmp_path / "metrics").exists()


def test_corrupt_checkpoint_is_one_line(prepared, tmp_path):
    tmp, raw = prepared
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    raw = json.loads(json.dumps(raw))
    raw["train_sup"]["out_dir"] = str(tmp_path / "m")
    out = cem("train", "supervised", "--params", str(write_params(tmp_path, raw)), "--resume", str(bad), check=False)
    assert out.returncode == 1 and out.stderr.count("\n") == 1 and "cannot load checkpoint" in out.stderr


def test_every_schedule_honours_the_warmup():
    """Large-batch GPU runs (the paper profile's bs 512, lr 0.4) warm up under the step schedule too."""
    from pipeline.params import OptimParams
    from pipeline.train import lr_factor
    step = OptimParams(schedule="step", warmup_frac=0.1, milestones=[0.5, 0.75], gamma=0.1)
    assert [round(lr_factor(step, t), 6) for t in (0.0, 0.05, 0.1, 0.4, 0.5, 0.8)] == [0.0, 0.5, 1.0, 1.0, 0.1, 0.01]
    assert lr_factor(OptimParams(schedule="step", warmup_frac=0.0), 0.0) == 1.0  # no warmup: the paper's schedule
    assert lr_factor(OptimParams(schedule="constant", warmup_frac=0.2), 0.1) == 0.5
    tri = OptimParams(schedule="triangle", warmup_frac=0.2)
    assert [lr_factor(tri, t) for t in (0.1, 0.2, 0.6)] == [0.5, 1.0, 0.5]
