"""runtime.*: the bf16 decision (hardware-based, logged), bf16 autocast working on CPU, and
`runtime.compile` reaching the networks that attacks, training and samplers call."""
import json

import pytest
import torch

from pipeline import runtime
from pipeline.data import load_dataset
from pipeline.distributed import NullRun
from pipeline.params import RuntimeParams, parse_params

CPU = torch.device("cpu")


@pytest.mark.parametrize("amp, flag, want", [
    (False, "amx_bf16", False), (True, None, True), ("auto", "amx_bf16", True), ("auto", "avx512_bf16", True),
    ("auto", None, False)])
def test_amp_decision_on_cpu(monkeypatch, amp, flag, want):
    monkeypatch.setattr(runtime, "cpu_bf16_flag", lambda: flag)
    enabled, why = runtime.amp_decision(RuntimeParams(amp=amp), CPU)
    assert enabled is want and why.startswith("bf16" if want else "fp32")
    if amp == "auto" and flag:
        assert runtime.CPU_BF16_FLAGS[flag] in why


def test_bf16_detection_reads_the_cpu_flags(tmp_path, monkeypatch):
    import builtins
    real_open = builtins.open
    fake = tmp_path / "cpuinfo"
    fake.write_text("processor : 0\nflags : fpu avx512f avx512_bf16 amx_bf16 amx_tile\n")
    monkeypatch.setattr(builtins, "open", lambda p, *a, **k: real_open(fake if p == "/proc/cpuinfo" else p, *a, **k))
    assert runtime.cpu_bf16_flag() == "amx_bf16"
    fake.write_text("processor : 0\nflags : fpu avx2 avx512f avx512_bf16\n")  # AMD Zen 4
    assert runtime.cpu_bf16_flag() == "avx512_bf16"
    fake.write_text("processor : 0\nflags : fpu avx2 fma\n")  # AMD Zen 3: no native bf16
    assert runtime.cpu_bf16_flag() is None


def test_amp_values_are_validated():
    from pipeline.errors import ParamsError
    assert parse_params({"train_sup": {"runtime": {"amp": "auto"}}}).train_sup.runtime.amp == "auto"
    with pytest.raises(ParamsError, match="train_sup.runtime.amp"):
        parse_params({"train_sup": {"runtime": {"amp": "fast"}}})


def test_bf16_autocast_training_and_sampling_run_on_cpu(prepared, tmp_path):
    """The forced bf16 path (runtime.amp: true) trains, evaluates and samples on a CPU; the run is
    tagged with the decision."""
    from pipeline.sampling import run_sampling
    from pipeline.train import train_supervised
    tmp, raw = prepared
    raw = json.loads(json.dumps(raw))
    raw["train_sup"].update({"out_dir": str(tmp_path / "sup"), "runtime": {"threads": 1, "amp": True}})
    # tiny on purpose: on AVX2-only CPUs bf16 runs ~500x slower than fp32 (one step, 10 eval images)
    raw["train_sup"]["optim"]["epochs"] = 0.25
    raw["train_sup"]["eval"].update({"test_per_class": 1, "attack_steps": 1, "epoch_per_class": 1})
    raw["metrics_dir"] = str(tmp_path / "metrics")
    p = parse_params(raw)
    tags = {}

    class Run(NullRun):
        def set_tags(self, t):
            tags.update(t)

    metrics = train_supervised(p.train_sup, load_dataset(tmp / "data"), Run(), "t", "train_sup", tmp_path / "metrics")
    assert tags["runtime.amp"].startswith("bf16") and 0 <= metrics["robust_acc"] <= 100
    rp = parse_params({"sample": {"defaults": {"n": 10, "batch_size": 10, "shard_size": 10, "steps": 2}}}).sample
    stats = run_sampling("cs", rp.resolved("cs"), tmp_path / "sup" / "model.pt", str(tmp / "data"),
                         tmp_path / "samples", CPU, runtime=RuntimeParams(amp=True))
    assert stats["n"] == 10


def test_compile_flag_reaches_training_and_sampling(prepared, tmp_path, monkeypatch):
    import pipeline.recipes as recipes
    import pipeline.sampling as sampling
    import pipeline.train as train
    seen = []

    def record(model, rt):
        seen.append(rt.compile)
        return model
    monkeypatch.setattr(recipes, "maybe_compile", record)
    monkeypatch.setattr(sampling, "maybe_compile", record)
    tmp, raw = prepared
    raw = json.loads(json.dumps(raw))
    raw["train_sup"].update({"out_dir": str(tmp_path / "sup"), "runtime": {"threads": 1, "compile": True}})
    raw["train_sup"]["optim"]["epochs"] = 0.5
    p = parse_params(raw)
    train.train_supervised(p.train_sup, load_dataset(tmp / "data"), NullRun(), "t", "train_sup", tmp_path)
    sampling.prepare_context("cs", p.sample.resolved("cs"), tmp_path / "sup" / "model.pt", str(tmp / "data"), CPU,
                             RuntimeParams(compile=True))
    assert seen == [True, True, True]  # training forward, attack, sampler network
    assert isinstance(runtime.maybe_compile(torch.nn.Linear(2, 2), RuntimeParams(compile=True)),
                      torch._dynamo.eval_frame.OptimizedModule)
    lin = torch.nn.Linear(2, 2)
    assert runtime.maybe_compile(lin, RuntimeParams(compile=False)) is lin
