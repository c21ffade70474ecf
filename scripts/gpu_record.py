"""Record a GPU acceptance run (scripts/gpu_acceptance.sh's files) as the measurements `cem profile`
estimates from: docs/gpu_throughput.json (bench rows, eager and compiled) and docs/gpu_stages.json (each
stage's wall time, loop seconds, section params, commit).

    python scripts/gpu_record.py --run OUT_DIR [--bench extra.json ...] --commit SHA [--params params.yaml]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

STAGE_NAMES = {"prepare": "prepare", "train supervised": "train_sup", "train reference": "train_ref",
               "train unsupervised": "train_unsup", "reference-stats": "reference_stats", "report": "report"}


def dvc_stage(command: str) -> str | None:
    """`sample ta` -> sample@ta (and evaluate, score, tune); `train supervised` -> train_sup; `profile ...` -> None (not a DAG stage)."""
    words = command.split()
    if words and words[0] in ("sample", "score", "evaluate", "tune") and len(words) > 1:
        return f"{words[0]}@{words[1]}"
    return STAGE_NAMES.get(" ".join(words[:2])) or STAGE_NAMES.get(words[0] if words else "")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", required=True, type=Path, help="the acceptance run's OUT folder")
    ap.add_argument("--bench", action="append", default=[], type=Path, help="more bench.gpu JSON (e.g. --compile)")
    ap.add_argument("--commit", required=True)
    ap.add_argument("--params", type=Path, help="the params.yaml the run used (else the run's metrics.json)")
    ap.add_argument("--docs", type=Path, default=Path("docs"))
    a = ap.parse_args(argv)
    run = json.loads((a.run / "metrics.json").read_text())
    params = yaml.safe_load(a.params.read_text()) if a.params else run.get("params")
    if params is None:
        sys.exit("no params: pass --params")
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from pipeline.params import parse_params
    parsed = parse_params(params)
    tables = [json.loads((a.run / "bench.json").read_text())]
    tables += [t for t in run.get("compile_runs", []) if t]  # the compiled step, cold and warm processes
    tables += [json.loads(p.read_text()) for p in [a.run / "compile_warm.json", *a.bench] if p.exists()]
    rows = [{**r, "compile": bool(t.get("compile"))} for t in tables for r in t["rows"]]
    first = tables[0]
    (a.docs / "gpu_throughput.json").write_text(json.dumps(
        {"device": first["device"], "torch": first.get("torch"), "date": first.get("date"),
         "source": "python -m bench.gpu --quick (eager) and --compile, in scripts/gpu_acceptance.sh",
         "bf16_peak_tflops": first.get("bf16_peak_tflops"), "rows": rows}, indent=1) + "\n")
    stages = {}
    metrics, samples = run.get("metrics", {}), run.get("samples", {})
    phases = {dvc_stage(r["command"]): r["seconds"] for r in run.get("stage_phases", [])}
    for command, seconds, rc in run["stages"]:
        name = dvc_stage(command)
        if name is None or rc != 0:
            continue
        entry = {"seconds": round(seconds, 1)}
        if name in phases:  # start-up, runtime set-up, MLflow and the stage's own phases (pipeline/timing.py)
            entry["phases"] = phases[name]
        section = name if name.startswith("train_") else None
        if section and section in metrics:
            m = metrics[section]
            entry.update(loop_seconds=m["train_seconds"], first_step_seconds=m.get("first_step_seconds"),
                         compile=getattr(parsed, section).runtime.compile,
                         section=getattr(parsed, section).model_dump(mode="json"))
        elif name.startswith("sample@") and name[7:] in samples:
            s = samples[name[7:]]
            entry.update(loop_seconds=round(s["n"] / s["samples_per_second"], 1), n=s["n"])
        elif name.startswith("tune@"):
            entry.update(section=parsed.tune.model_dump(mode="json"))  # valid at these tune settings
        stages[name] = entry
    (a.docs / "gpu_stages.json").write_text(json.dumps(
        {"device": first["device"], "torch": first.get("torch"), "date": first.get("date"), "commit": a.commit,
         "source": "scripts/gpu_acceptance.sh (the gpu profile through DVC, `jobs` stages at a time; stages it "
                   "did not reach are absent)",
         "dag_exit": run.get("dag_exit"), "dag_seconds": run.get("dag_seconds"), "jobs": run.get("jobs", 1),
         "stages": stages}, indent=1) + "\n")
    print(f"recorded {len(rows)} bench rows and {len(stages)} stages")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
