"""scripts/gpu_acceptance.sh, the one command spent on a lent GPU (issue 20), runs here at tiny size
(bench.gpu --tiny, the smoke profile through dvc repro), so that it cannot rot between GPU loans."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow


def test_acceptance_script_runs_end_to_end_at_tiny_size_over_two_calls(tmp_path):
    """The first call stops the DAG at its deadline; the second (`--resume`, as on a warm lent machine)
    finishes it without re-running a finished stage, and summarises both calls."""
    out1, out = tmp_path / "out1", tmp_path / "out"
    before = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True).stdout
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "CEM_WHEELS": str(tmp_path / "no-wheels"),  # the installed environment, not a GPU machine's wheels
           "CEM_STAGE": str(tmp_path / "stage"), "CEM_ACCEPT_WORK": str(tmp_path / "accept"),
           "CEM_DATA": str(ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz")}
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
    stages = re.findall(r"^\| (prepare|train \w+|sample \w+|score \w+|tune \w+|reference-stats|report) \| [\d.]+ \| (\d+) \|$",
                        summary, re.M)
    from pipeline.sampler_specs import SPECS
    done = [name for name, rc in stages if rc == "0"]
    assert "prepare" in done and "report" in done, summary
    assert len(done) == len(set(done)), summary  # the resumed call re-ran no finished stage
    assert len(set(done)) >= 1 + 3 + 2 * len(SPECS) + 2, summary
    assert "Running stage 'report'" in (out / "acceptance.log").read_text()  # dvc's log folded in
    after = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True).stdout
    assert after == before  # the run works in a scratch copy: the checkout is untouched
