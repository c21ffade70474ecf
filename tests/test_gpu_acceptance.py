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


def test_acceptance_script_runs_end_to_end_at_tiny_size(tmp_path):
    out = tmp_path / "out"
    before = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True).stdout
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "CEM_WHEELS": str(tmp_path / "no-wheels"),  # the installed environment, not a GPU machine's wheels
           "CEM_STAGE": str(tmp_path / "stage"), "CEM_ACCEPT_SECONDS": "1200",
           "CEM_DATA": str(ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz")}
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_acceptance.sh"), "--tiny", str(out)], env=env,
                          capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    files = sorted(p.name for p in out.iterdir())
    # what a lent machine sends back: at most 8 plain files, named in letters, digits, '.', '_', '-'
    assert len(files) <= 8 and all(re.fullmatch(r"[A-Za-z0-9._-]+", f) for f in files), files
    assert {"summary.md", "bench.json", "metrics.json", "report.md", "acceptance.log", "grids.png"} <= set(files)
    summary = (out / "summary.md").read_text()
    assert summary.startswith("# GPU acceptance: dvc repro completed (profile smoke)")
    stages = re.findall(r"^\| (prepare|train \w+|sample \w+|score \w+|reference-stats|report) \| [\d.]+ \| (\d+) \|$",
                        summary, re.M)
    from pipeline.sampler_specs import SPECS
    assert len(stages) == 1 + 3 + 2 * len(SPECS) + 2 and all(rc == "0" for _, rc in stages), summary
    assert "Running stage 'report'" in (out / "acceptance.log").read_text()  # dvc's log folded in
    after = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True).stdout
    assert after == before  # the run works in a scratch copy: the checkout is untouched
