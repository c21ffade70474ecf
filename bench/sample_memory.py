"""(d) Peak RSS of `cem sample` at N=1,000 vs N=10,000 (memory must be flat in N: shards are
streamed to disk). Uses a prepared data folder and a trained supervised model from a params file;
steps are set to 1 because memory does not depend on them.

    python bench/sample_memory.py --params params.yaml [--sampler cs]
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.common import hardware


CHILD = """
import resource, runpy, sys
sys.argv = ["cem"] + sys.argv[1:]
try:
    runpy.run_module("stages.cli", run_name="__main__")
finally:
    print("PEAK_RSS_KB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)
"""


def peak_rss_mb(args: list[str]) -> float:
    """Run `cem ARGS` in a fresh process that reports its own peak RSS."""
    proc = subprocess.run([sys.executable, "-c", CHILD, *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(proc.stderr)
    line = [l for l in proc.stderr.splitlines() if l.startswith("PEAK_RSS_KB")][-1]
    return int(line.split()[1]) / 1024


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--sampler", default="cs")
    args = ap.parse_args()
    out = tempfile.mkdtemp()
    common = ["--params", args.params, "--set", f"sample.out_dir={out}", "--set", "sample.defaults.steps=1",
              "--set", "sample.defaults.shard_size=500", "--set", "sample.defaults.batch_size=250"]
    small = peak_rss_mb(["sample", args.sampler, *common, "--n", "1000"])
    large = peak_rss_mb(["sample", args.sampler, *common, "--n", "10000"])
    print(f"hardware: {hardware()}")
    print(f"peak RSS cem sample {args.sampler}: N=1,000 {small:.0f} MB, N=10,000 {large:.0f} MB")
    print(f"ratio = {large / small:.3f}  (target <= 1.2)")
    print(f"shards written: {len(list(Path(out, args.sampler).glob('shard-*.pt')))}")


if __name__ == "__main__":
    main()
