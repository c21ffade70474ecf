"""The GPU acceptance run's summary (scripts/gpu_acceptance.sh): summary.md (targets met or not, every
stage's time, compile cold vs warm), metrics.json (every metric, stage time, compile run, the params and
the GPU), report.md and grids.png — with acceptance.log, bench.json and scores.png 7 files, under the 8
a lent GPU machine sends back."""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from pipeline.timing import phase_table, read_stage_times  # noqa: E402

TARGETS = [  # (what, value key in `facts`, at least, unit): issue 20's targets
    ("ResNet-18 PGD-3 AT (train_sup, after the first step)", "sup_img_s", 15_000, "img/s"),
    ("ResNet-18 PGD-3 AT step compiled (bench, bs 512)", "sup_compiled_img_s", 15_000, "img/s"),
    ("contrastive ResNet-18 AT (train_unsup, after the first step)", "unsup_img_s", 8_000, "img/s"),
    ("samplers on ResNet-18 (bench, slowest)", "r18_sampler_min", 2_000, "samples/s"),
    ("samplers on ResNet-50 (bench, slowest)", "r50_sampler_min", 500, "samples/s"),
    ("ResNet-50 PGD-7 AT, bs 512 (bench)", "r50_at", 3_000, "img/s"),
    ("gpu-profile ResNet-18 clean accuracy", "sup_clean", 80.0, "%"),
    ("gpu-profile ResNet-18 L2 PGD-20 accuracy", "sup_robust", 58.0, "%"),
]
DAG_TARGET_S = 8 * 60


def read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def stage_rows(out: Path) -> list[tuple[str, float, int]]:
    rows = []
    tsv = out / "stages.tsv"
    for line in (tsv.read_text().splitlines() if tsv.exists() else []):
        parts = line.split("\t")
        if len(parts) == 3 and parts[1].isdigit():
            rows.append((parts[0], int(parts[1]) / 1000, int(parts[2])))
    return rows


def yaml_or_none(path: Path):
    """The params the run used (scripts/gpu_record.py records them beside the stage times)."""
    try:
        import yaml
        return yaml.safe_load(path.read_text())
    except (OSError, ImportError, ValueError):
        return None


def bench_rate(bench: dict | None, prefix: str):
    rates = [r["items_per_s"] for r in (bench or {}).get("rows", []) if r["case"].startswith(prefix)]
    return min(rates) if rates else None


def sampler_min(bench: dict | None, arch: str):
    """The slowest sampler on `arch` (the target holds for every sampler)."""
    rates = [r["items_per_s"] for r in (bench or {}).get("rows", [])
             if r["case"].startswith("sampler") and f" {arch}," in r["case"]]
    return min(rates) if rates else None


def montage(paths: list[Path], dest: Path) -> bool:
    """The sampler grids side by side, 4 per row, each titled, in one PNG."""
    if not paths:
        return False
    from PIL import Image, ImageDraw
    tiles = [(p.parent.name if p.name == "grid.png" else p.stem, Image.open(p).convert("RGB")) for p in paths]
    w = max(t.width for _, t in tiles)
    h = max(t.height for _, t in tiles) + 14
    cols = min(4, len(tiles))
    sheet = Image.new("RGB", (cols * w, -(-len(tiles) // cols) * h), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (name, tile) in enumerate(tiles):
        x, y = (i % cols) * w, (i // cols) * h
        draw.text((x + 2, y + 1), name, fill="black")
        sheet.paste(tile, (x, y + 14))
    sheet.save(dest)
    return True


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", required=True, type=Path)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--dag-seconds", type=float, required=True)
    ap.add_argument("--dag-exit", type=int, required=True)
    ap.add_argument("--total-seconds", type=float, required=True)
    ap.add_argument("--profile", required=True)
    ap.add_argument("--jobs", type=int, default=1, help="stages the DAG ran side by side (cem repro --jobs)")
    ap.add_argument("--note", action="append", default=[])
    a = ap.parse_args(argv)
    work, out = a.work, a.out
    bench = read_json(out / "bench.json")
    compile_runs = [read_json(work / f"compile-{i}.json") for i in (1, 2)]
    metrics = {p.stem: read_json(p) for p in sorted((work / "metrics").glob("*.json"))}
    scores = {p.stem: read_json(p) for p in sorted((work / "scores").glob("*.json"))}
    samples = {p.parent.name: read_json(p) for p in sorted((work / "samples").glob("*/meta.json"))}
    stages = stage_rows(out)
    smi = (out / "nvidia-smi.txt").read_text().strip() if (out / "nvidia-smi.txt").exists() else "no nvidia-smi"
    sup, unsup = metrics.get("train_sup") or {}, metrics.get("train_unsup") or {}
    sup_eval = metrics.get("evaluate_sup") or {}  # the final evaluation (cem evaluate sup)
    first_calls = [next((r["first_call_s"] for r in (c or {}).get("rows", [])), None) for c in compile_runs]
    compiled_rate = next((r["items_per_s"] for c in compile_runs for r in (c or {}).get("rows", [])), None)
    cold, warm_s = first_calls
    facts = {"sup_img_s": sup.get("images_per_second_after_first_step"), "sup_compiled_img_s": compiled_rate,
             "unsup_img_s": unsup.get("images_per_second_after_first_step"),
             "r18_sampler_min": sampler_min(bench, "resnet18"),
             "r50_sampler_min": sampler_min(bench, "resnet50"),
             "r50_at": bench_rate(bench, "resnet50 PGD-7 AT, bs 512"),
             "sup_clean": sup_eval.get("clean_acc"), "sup_robust": sup_eval.get("robust_acc")}
    L = [f"# GPU acceptance: {'dvc repro completed' if a.dag_exit == 0 else 'dvc repro did NOT complete'}"
         f" (profile {a.profile})", ""]
    L += [f"- NOTE: {n}" for n in a.note] + ([""] if a.note else [])
    L += [f"- GPU: {smi}", f"- bench device: {(bench or {}).get('device', '?')}, torch {(bench or {}).get('torch', '?')}",
          f"- the DAG (`cem repro --jobs {a.jobs}`: DVC's stages, {a.jobs} at a time): {a.dag_seconds:.0f} s "
          f"(target <= {DAG_TARGET_S} s: "
          f"{'met' if a.dag_exit == 0 and a.dag_seconds <= DAG_TARGET_S else 'NOT met'}); whole acceptance "
          f"{a.total_seconds:.0f} s", ""]
    L += ["## Targets", "", "| what | measured | target | met |", "|---|---|---|---|"]
    for what, key, least, unit in TARGETS:
        v = facts.get(key)
        L.append(f"| {what} | {'not measured' if v is None else f'{v:,.1f} {unit}'} | >= {least:,} {unit} | "
                 f"{'-' if v is None else ('yes' if v >= least else 'no')} |")
    L += ["", "## torch.compile (ResNet-18 PGD-3 AT step, bs 512, two new processes sharing the on-disk cache)", "",
          f"- first process (cold unless a compiled stage filled the cache): "
          f"{'not measured' if cold is None else f'{cold:.1f} s'} to the first step",
          f"- second process (warm): {'not measured' if warm_s is None else f'{warm_s:.1f} s'} to the first step",
          f"- compiled rate: {'not measured' if compiled_rate is None else f'{compiled_rate:,.0f} img/s'} "
          f"(eager, bench: {bench_rate(bench, 'resnet18 PGD-3 AT, bs 512') or 'not measured'})",
          f"- train_sup's first step in the DAG: {sup.get('first_step_seconds', 'not measured')} s", ""]
    L += ["## Stages (wall time of each `cem` process, start-up included"
          + (f"; {a.jobs} ran side by side, so each includes their contention and the sum exceeds the DAG's time"
             if a.jobs > 1 else "") + ")", "", "| stage | s | exit |", "|---|---|---|"]
    L += [f"| {name} | {sec:.1f} | {rc} |" for name, sec, rc in stages]
    L += [f"| **sum** | {sum(s for _, s, _ in stages):.1f} | |", ""]
    phases = read_stage_times(out / "stage_times.jsonl")
    L += ["## Where each stage's time went (s; pipeline/timing.py: start-up = imports before the stage body, "
          "runtime = device set-up incl. the CUDA context, mlflow = import + run open/close)", ""]
    L += phase_table(phases)
    if samples:
        L += ["## Sampling rate per stage", "", "| sampler | samples/s (whole stage loop) |", "|---|---|"]
        L += [f"| {k} | {v.get('samples_per_second')} |" for k, v in samples.items() if v]
    (out / "summary.md").write_text("\n".join(L) + "\n")
    (out / "metrics.json").write_text(json.dumps(
        {"gpu": smi, "dag_seconds": a.dag_seconds, "dag_exit": a.dag_exit, "jobs": a.jobs, "stages": stages,
         "facts": facts,
         "stage_phases": phases,
         "compile_first_call_s": {"first_process": cold, "second_process": warm_s}, "compile_runs": compile_runs,
         "metrics": metrics, "scores": scores, "samples": samples,
         "params": yaml_or_none(work / "params.yaml")}, indent=1) + "\n")
    report = work / "reports" / "results.md"
    if report.exists():
        shutil.copyfile(report, out / "report.md")
    if (work / "reports" / "scores.png").exists():
        shutil.copyfile(work / "reports" / "scores.png", out / "scores.png")
    montage(sorted((work / "samples").glob("*/grid.png")), out / "grids.png")
    dvc_log = out / "dvc.log"
    if dvc_log.exists():  # folded into acceptance.log: 8 files at most come back
        with open(out / "acceptance.log", "a") as f:
            f.write("\n===== dvc repro output =====\n" + dvc_log.read_text()[-200_000:])
        dvc_log.unlink()
    for extra in ("stages.tsv", "stage_times.jsonl", "nvidia-smi.txt"):
        (out / extra).unlink(missing_ok=True)
    print((out / "summary.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
