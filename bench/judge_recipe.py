"""Which reference classifier (the judge) to train on the CPU: accuracy on the full 10,000-image
test set against training time, for recipe variants run through the real stages (`cem train
reference`, then `cem evaluate ref`), one after another in this process's machine state.

    python -m bench.judge_recipe                      # the variants below, on data/prepared
    python -m bench.judge_recipe --variant 'name=--set a=b --set c=d' ...

Each variant is the default profile's `train_ref` plus its `--set` overrides; evaluation is on
all test images (`evaluate.ref.test_per_class=1000`, the JPEG CIFAR-10 copy has 1,000 per class).
Machines are noisy: the baseline runs first and last, and each variant's time is printed beside
the mean of the two baseline runs (docs/judge.md has the results and the hardware)."""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import hardware

ROOT = Path(__file__).resolve().parents[1]
BASELINE = ("baseline", [])
VARIANTS = [
    BASELINE,
    ("whiten+flip-tta", ["train_ref.arch.whiten=true", "train_ref.arch.tta=flip"]),
]


def run_variant(name: str, sets: list[str], params: Path, work: Path, extra: list[str], per_class: int = 1000
                ) -> dict:
    out = work / name
    common = ["--params", str(params), "--set", f"train_ref.out_dir={out / 'ref'}",
              "--set", f"metrics_dir={out / 'metrics'}"]
    train = [sys.executable, "-m", "stages.cli", "train", "reference", "--restart", *common,
             "--set", "train_ref.eval.every_steps=1000000"]
    for s in sets + extra:
        train += ["--set", s]
    evaluate = [sys.executable, "-m", "stages.cli", "evaluate", "ref", *common,
                "--set", f"evaluate.ref.test_per_class={per_class}"]
    for s in extra:  # overrides for every variant (e.g. a tiny run) reach the evaluation too
        evaluate += ["--set", s]
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}", "CI": "1"}
    t0 = time.perf_counter()
    subprocess.run(train, cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    subprocess.run(evaluate, cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL)
    m = {**json.loads((out / "metrics" / "train_ref.json").read_text()),
         **json.loads((out / "metrics" / "evaluate_ref.json").read_text())}
    return {"variant": name, "sets": sets, "test_acc": m["clean_acc"], "eval_images": m["eval_images"],
            "train_seconds": m["train_seconds"], "wall_seconds": round(wall, 1)}


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default=str(ROOT / "params.yaml"))
    ap.add_argument("--variant", action="append", default=[],
                    help="'name=key=value key=value ...' (repeatable; default: the built-in list)")
    ap.add_argument("--set", action="append", default=[], help="an override applied to every variant (e.g. a tiny run)")
    ap.add_argument("--out", default=None, help="write the rows as JSON here")
    ap.add_argument("--test-per-class", type=int, default=1000, help="test images per class to evaluate on")
    ap.add_argument("--no-baseline", action="store_true", help="skip the two baseline runs (times are then absolute only)")
    args = ap.parse_args(argv)
    variants = VARIANTS if not args.variant else [BASELINE] + [
        (v.split("=", 1)[0], shlex.split(v.split("=", 1)[1])) for v in args.variant]
    again = [("baseline (again)", [])]
    if args.no_baseline:
        variants, again = [v for v in variants if v is not BASELINE], []
    rows = []
    print(hardware())
    with tempfile.TemporaryDirectory() as tmp:
        for name, sets in variants + again:
            row = run_variant(name.replace(" ", "_").replace("(", "").replace(")", ""), sets, Path(args.params),
                              Path(tmp), args.set, args.test_per_class)
            row["variant"] = name
            rows.append(row)
            print(f"{name:40s} test acc {row['test_acc']:6.2f} % on {row['eval_images']} images, "
                  f"train {row['train_seconds']:7.1f} s, wall {row['wall_seconds']:7.1f} s", flush=True)
    if args.no_baseline:
        if args.out:
            Path(args.out).write_text(json.dumps({"hardware": hardware(), "rows": rows}, indent=1) + "\n")
        return rows
    base = (rows[0]["train_seconds"] + rows[-1]["train_seconds"]) / 2
    print(f"\nbaseline training time (mean of first and last run): {base:.1f} s")
    for r in rows[1:-1]:
        r["time_vs_baseline"] = round(r["train_seconds"] / base, 3)
        print(f"{r['variant']:40s} {r['test_acc']:6.2f} %   time x{r['time_vs_baseline']:.2f} of the baseline")
    if args.out:
        Path(args.out).write_text(json.dumps({"hardware": hardware(), "rows": rows}, indent=1) + "\n")
    return rows


if __name__ == "__main__":
    main()
