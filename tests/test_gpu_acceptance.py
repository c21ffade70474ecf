"""scripts/gpu_acceptance.sh, the one command spent on a lent GPU (issue 20), runs here at tiny size
(bench.gpu --tiny, the smoke profile through dvc repro), so that it cannot rot between GPU loans. Its DAG
runs on CIFAR-100-shaped data, so the same run is also the whole-DAG check of a dataset that is not
CIFAR-10 (100 classes, heads, seeds per class, no paper numbers): one smoke DAG for both, for CI time."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline import data
from pipeline.datasets import DATASETS
from tests.conftest import ROOT, write_image_folder

pytestmark = pytest.mark.slow


def test_acceptance_script_runs_end_to_end_at_tiny_size_over_two_calls_on_another_dataset(tmp_path):
    """The first call stops the DAG at its deadline; the second (`--resume`, as on a warm lent machine)
    finishes it without re-running a finished stage, and summarises both calls. The data: CIFAR-100's
    shape (synthetic images, 5 / 5 per class: the DAG's plumbing, not its numbers)."""
    out1, out = tmp_path / "out1", tmp_path / "out"
    name, spec = "cifar100", DATASETS["cifar100"]
    source = write_image_folder(tmp_path / "images", 5, 5, num_classes=spec.num_classes)
    before = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True).stdout
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "CEM_WHEELS": str(tmp_path / "no-wheels"),  # the installed environment, not a GPU machine's wheels
           "CEM_STAGE": str(tmp_path / "stage"), "CEM_ACCEPT_WORK": str(tmp_path / "accept"),
           "CEM_DATA": str(source),
           "CEM_ACCEPT_SETS": f"data.name={name} data.train_per_class=5 data.test_per_class=5 "
                              "train_unsup.probe.train_per_class=5"}
    script = str(ROOT / "scripts" / "gpu_acceptance.sh")
    nothing = subprocess.run(["bash", script, "--tiny", "--resume", str(tmp_path / "out0")], env=env,
                             capture_output=True, text=True, timeout=60)
    assert nothing.returncode == 2 and "nothing to resume" in nothing.stdout
    first = subprocess.run(["bash", script, "--tiny", str(out1)], capture_output=True, text=True, timeout=600,
                           env={**env, "CEM_ACCEPT_SECONDS": "110", "CEM_ACCEPT_RESERVE": "10"})
    assert first.returncode == 124, first.stdout[-3000:] + first.stderr[-3000:]
    assert (out1 / "summary.md").read_text().startswith("# GPU acceptance: dvc repro did NOT complete")
    proc = subprocess.run(["bash", script, "--tiny", "--resume", str(out)], capture_output=True, text=True,
                          timeout=1500, env={**env, "CEM_ACCEPT_SECONDS": "1200"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    files = sorted(p.name for p in out.iterdir())
    # what a lent machine sends back: at most 8 plain files, named in letters, digits, '.', '_', '-'
    assert len(files) <= 8 and all(re.fullmatch(r"[A-Za-z0-9._-]+", f) for f in files), files
    assert {"summary.md", "bench.json", "metrics.json", "report.md", "acceptance.log", "grids.png"} <= set(files)
    summary = (out / "summary.md").read_text()
    assert summary.startswith("# GPU acceptance: dvc repro completed (profile smoke)")
    assert "resumed: call 2 of this run" in summary
    row = r"^\| (prepare|train \w+|sample \w+|score \w+|tune \w+|reference-stats|report) \| [\d.]+ \| (\d+) \|$"
    stages = re.findall(row, summary, re.M)
    from pipeline.sampler_specs import SPECS
    done = [name for name, rc in stages if rc == "0"]
    assert "prepare" in done and "report" in done, summary
    # the resumed call re-ran no stage DVC had recorded: at most the two (`--jobs 2`) that were running at
    # the deadline may show twice (a stage whose process had ended when DVC, not yet recording it, stopped).
    # `prepare` finished long before that deadline, so it ran once: re-running the finished stages would fail.
    first_done = [n for n, rc in re.findall(row, (out1 / "summary.md").read_text(), re.M) if rc == "0"]
    assert "prepare" in first_done and done.count("prepare") == 1 and len(done) - len(set(done)) <= 2, summary
    assert len({n for n in done if not n.startswith("tune ")}) == 1 + 3 + 2 * len(SPECS) + 2, summary
    assert [n for n in done if n.startswith("tune ")], summary  # the tune@ stages ran too
    assert {n for n, rc in stages if rc != "0"} <= set(done), summary  # an interrupted stage finished later
    assert "Running stage 'report'" in (out / "acceptance.log").read_text()  # dvc's log folded in
    # where each finished stage's time went (pipeline/timing.py), over both calls: one row per finished stage
    run = json.loads((out / "metrics.json").read_text())
    phases = run["stage_phases"]
    assert sorted(r["command"] for r in phases) == sorted(c for c, _, rc in run["stages"]
                                                          if rc == 0 and not c.startswith("profile "))
    assert set(done) <= {r["command"] for r in phases}
    assert all(r["seconds"]["startup"] > 0 and r["seconds"]["mlflow"] > 0 for r in phases), phases
    assert "## Where each stage's time went" in summary and "Start-up, runtime set-up and MLflow:" in summary
    after = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True).stdout
    assert after == before  # the run works in a scratch copy: the checkout is untouched
    # the dataset: every stage read its facts from the registry entry
    repo = tmp_path / "accept" / "project"
    manifest = data.read_manifest(repo / "data" / "prepared")
    assert manifest["dataset"] == name and len(manifest["classes"]) == spec.num_classes
    from pipeline.checkpoints import load_model_file
    assert load_model_file(repo / "models" / "sup" / "model.pt")["num_classes"] == spec.num_classes  # heads sized
    assert load_model_file(repo / "models" / "ref" / "model.pt")["num_classes"] == spec.num_classes
    # --tiny shares the cores between the 2 stages side by side: every section's runtime got its threads
    import yaml
    from pipeline.params import RUNTIME_SECTIONS, parse_params, runtime_section
    p = parse_params(yaml.safe_load((repo / "params.yaml").read_text()))
    assert set(RUNTIME_SECTIONS) == {"train_sup", "train_ref", "train_unsup", "evaluate.sup", "evaluate.ref",
                                     "evaluate.unsup", "sample", "score"}
    assert {runtime_section(p, s).runtime.threads for s in RUNTIME_SECTIONS} \
        == {max(1, len(os.sched_getaffinity(0)) // 2)}  # what `nproc` counts
    report = (repo / "reports" / "results.md").read_text()
    assert f"Dataset: **{name}** ({spec.num_classes} classes)" in report
    assert not re.search(r"\| 9\.80 \| 55\.91 \|", report)  # no CIFAR-10 paper numbers beside another dataset
    assert "## Settings and how they were chosen" in report and "held-out tuning" in report  # tune@ ran in the DAG
    assert json.loads((repo / "tune" / "rcs_pca_momentum.json").read_text())["chosen"]["steps"] in (0, 2, 4)
