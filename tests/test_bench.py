"""The benchmarks run (tiny shapes on the CPU), so they cannot rot; their numbers are only
meaningful on the hardware they were made for (docs/performance.md)."""
import json

import torch

from bench.common import our_at_step
from pipeline.models import build_classifier
from pipeline.params import ArchParams


def test_gpu_bench_dry_run_covers_every_case():
    from bench import gpu
    from pipeline.sampler_specs import SPECS
    rows = gpu.main(["--tiny"])
    names = [r["case"] for r in rows]
    assert any("PGD-1 AT" in n for n in names) and any("contrastive" in n for n in names)
    assert all(any(f"sampler {s} " in n for n in names) for s in SPECS)
    assert all(r["items_per_s"] > 0 and r["tflops"] > 0 for r in rows)


def test_bench_at_step_is_the_stage_step():
    """With its defaults the benchmark's step is recipes.SupervisedRecipe.train_step: it changes weights."""
    model = build_classifier(ArchParams(widths=[8, 16, 32]), 10)
    before = [p.detach().clone() for p in model.parameters()]
    x = (torch.rand(16, 3, 32, 32) * 255).to(torch.uint8)
    our_at_step(model, x, torch.arange(16) % 10, "l2", 0.5, 2, 0.6)()
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def _profile(name):
    import yaml

    from pipeline.params import parse_params
    from stages.profile import deep_merge
    from tests.conftest import ROOT
    return parse_params(deep_merge(yaml.safe_load((ROOT / "profiles" / "cpu.yaml").read_text()),
                                   yaml.safe_load((ROOT / "profiles" / f"{name}.yaml").read_text())))


def test_profile_time_estimate_uses_measurements_only():
    """Every stage: measured fixed part + loop from a measured rate at the section's batch size and compile
    setting; a stage without measurements is unknown, never guessed."""
    from pipeline.gpu_estimate import estimate
    p = _profile("gpu")
    table = {"rows": [{"case": "resnet18 PGD-3 AT, bs 512", "items_per_s": 10_000, "first_call_s": 2.0},
                      {"case": "resnet18 PGD-3 AT, bs 512", "items_per_s": 14_000, "first_call_s": 5.0, "compile": True},
                      {"case": "resnet18 PGD-3 AT, bs 128", "items_per_s": 4_000},
                      {"case": "sampler cs resnet18, 60 steps, bs 2000", "items_per_s": 1_000}]}
    stages = {"date": "d", "commit": "", "stages": {
        "prepare": {"seconds": 30.0},
        "train_sup": {"seconds": 180.0, "loop_seconds": 80.0, "first_step_seconds": 40.0, "compile": True,
                      "section": p.train_sup.model_dump(mode="json")},
        "sample@ta": {"seconds": 30.0, "loop_seconds": 10.0}, "sample@cs": {"seconds": 20.0, "loop_seconds": 10.0}}}
    rows = {name: (secs, why) for name, secs, why in estimate(p, table, stages)}
    epochs = p.train_sup.optim.epochs
    # eager (the gpu profile): the eager rate and the bench's first call, plus the measured fixed 100 s
    assert abs(rows["train_sup"][0] - (epochs * 50_000 / 10_000 + 2.0 + 100.0)) < 1e-6
    assert "fixed 100 s" in rows["train_sup"][1]
    compiled = p.model_copy(update={"train_sup": p.train_sup.model_copy(update={
        "runtime": p.train_sup.runtime.model_copy(update={"compile": True})})})
    secs = dict((n, s) for n, s, _ in estimate(compiled, table, stages))["train_sup"]
    assert abs(secs - (epochs * 50_000 / 14_000 + 40.0 + 100.0)) < 1e-6  # the measured cold compile
    other_bs = p.model_copy(update={"train_sup": p.train_sup.model_copy(update={
        "optim": p.train_sup.optim.model_copy(update={"batch_size": 256})})})
    secs, why = next((s, w) for n, s, w in estimate(other_bs, table, stages) if n == "train_sup")
    assert secs is None and "bs 128" in why and "bs 512" in why
    assert rows["prepare"][0] == 30.0
    assert abs(rows["sample@ta"][0] - (10_000 / 1_000 + 20.0)) < 1e-6
    assert abs(rows["sample@rcs"][0] - (10_000 / 1_000 + 15.0)) < 1e-6  # fixed part: the mean of the measured
    assert rows["score@cs"][0] is None and rows["report"][0] is None and rows["train_unsup"][0] is None
    assert rows["train_ref"][0] is None  # no standard-training rate in the table
    assert rows["evaluate@sup"][0] is None and "not measured" in rows["evaluate@sup"][1]
    # a training measured before the final evaluation left it: its fixed part is flagged as including it
    old = json.loads(json.dumps(stages))
    old["stages"]["train_sup"]["section"]["eval"]["test_per_class"] = None
    why = next(w for n, _, w in estimate(p, table, old) if n == "train_sup")
    assert "then including the final evaluation (now evaluate@sup's" in why
    # tune@: chains of max(tune.steps) steps per setting at the per-step rate; unknown until a tune stage is measured
    secs, why = rows["tune@rcs_pca_momentum"]
    chains = p.tune.n * max(p.tune.steps) / (1_000 * p.sample.resolved("rcs_pca_momentum").steps)
    assert secs is None and f"chains {chains:.0f} s" in why and "not measured" in why
    stages["stages"]["tune@rcs_pca_momentum"] = {"seconds": 50.0, "loop_seconds": 10.0}
    secs = dict((n, s) for n, s, _ in estimate(p, table, stages))["tune@rcs_pca_momentum"]
    assert abs(secs - (chains + 40.0)) < 1e-6


def test_critical_path_is_the_longest_chain_and_counts_what_is_unmeasured():
    """The floor of `cem repro --jobs N`: an evaluation beside the samplers is off the path, a slow one is on it."""
    from pipeline.gpu_estimate import critical_path
    dag = {"prepare": [], "train_sup": ["prepare"], "evaluate@sup": ["train_sup", "prepare"],
           "sample@ta": ["train_sup"], "score@ta": ["sample@ta"], "report": ["score@ta", "evaluate@sup"]}
    rows = [("prepare", 30.0, ""), ("train_sup", 100.0, ""), ("evaluate@sup", 40.0, ""), ("sample@ta", 50.0, ""),
            ("score@ta", None, ""), ("report", None, "")]
    assert critical_path(rows, dag) == (180.0, ["prepare", "train_sup", "sample@ta", "score@ta", "report"], 2)
    rows[2] = ("evaluate@sup", 60.0, "")
    assert critical_path(rows, dag) == (190.0, ["prepare", "train_sup", "evaluate@sup", "report"], 1)


def test_estimate_marks_measurements_of_changed_code_stale(tmp_path):
    import subprocess

    from pipeline.gpu_estimate import Estimator
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    (tmp_path / "pipeline").mkdir()
    (tmp_path / "pipeline" / "data.py").write_text("x = 1\n")
    (tmp_path / "dvc.yaml").write_text("stages:\n  prepare:\n    cmd: cem prepare\n    deps: [pipeline/data.py, x.tar]\n")
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run([*git, "add", "-A"], cwd=tmp_path, check=True)
    subprocess.run([*git, "commit", "-qm", "m"], cwd=tmp_path, check=True)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True, text=True).stdout.strip()
    stages = {"commit": commit, "stages": {"prepare": {"seconds": 30.0}}}
    e = Estimator(_profile("gpu"), {"rows": []}, stages, tmp_path)
    assert "STALE" not in e.measured_only("prepare")[2]
    (tmp_path / "pipeline" / "data.py").write_text("x = 2\n")
    assert "STALE: 1 code file(s) changed" in e.measured_only("prepare")[2]
    e = Estimator(_profile("gpu"), {"rows": []}, {**stages, "commit": "0" * 40}, tmp_path)
    assert "staleness unknown" in e.measured_only("prepare")[2]


def test_record_maps_acceptance_stages_to_dvc_stages():
    import importlib.util

    from tests.conftest import ROOT
    spec = importlib.util.spec_from_file_location("gpu_record", ROOT / "scripts" / "gpu_record.py")
    rec = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rec)
    assert [rec.dvc_stage(c) for c in ("prepare", "train supervised", "train unsupervised", "sample maxent_cond",
                                       "score ta", "reference-stats", "report", "profile gpu --set x=1")] == \
        ["prepare", "train_sup", "train_unsup", "sample@maxent_cond", "score@ta", "reference_stats", "report", None]


def test_profile_command_prints_the_estimate(tmp_path):
    from tests.conftest import ROOT, cem
    out = cem("profile", "paper", "--params", str(tmp_path / "p.yaml"), "--profiles-dir", str(ROOT / "profiles"),
              "--throughput", str(ROOT / "docs" / "gpu_throughput.json"))
    assert "estimated GPU time" in out.stderr and "train_sup" in out.stderr
    assert "critical path" in out.stderr and "prepare -> train_" in out.stderr  # from this checkout's `dvc dag`


def test_cpu_amp_bench_runs():
    """The bf16-vs-fp32 measurement behind runtime.amp's CPU rule runs (tiny shapes: numbers meaningless)."""
    from bench import cpu_amp
    assert cpu_amp.main(["--tiny"]) > 0


def test_judge_recipe_bench_runs_the_stage(prepared):
    """bench.judge_recipe at a test's size: it trains through `cem train reference` and reads its metrics."""
    from bench import judge_recipe
    tmp, _ = prepared
    rows = judge_recipe.main(["--params", str(tmp / "params.yaml"), "--test-per-class", "5", "--no-baseline",
                              "--variant", "tiny=train_ref.arch.whiten=true train_ref.arch.tta=flip",
                              "--set", "train_ref.optim.epochs=1"])
    assert len(rows) == 1 and rows[0]["eval_images"] == 50 and 0 <= rows[0]["test_acc"] <= 100
