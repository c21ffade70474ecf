"""Print `cem tune` results side by side at equal gradient steps (docs/results.md "Beyond the paper").

    python scripts/tune_table.py LABEL=tune/rcs.json LABEL2=other/rcs_pca_momentum.json ... [--space classifier]

Each file's rows are keyed by (step size, momentum); a file with a momentum grid gives one column per
momentum. For every step count present in all columns: held-out FID ± bootstrap sd and IS ± sd.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def columns(label: str, path: Path, space: str) -> dict[str, dict[int, dict]]:
    doc = json.loads(Path(path).read_text())
    out: dict[str, dict[int, dict]] = {}
    settings = sorted({(r["step_size"], r["momentum"]) for r in doc["rows"]})
    for ss, mu in settings:
        name = label if len(settings) == 1 else f"{label} (step {ss:g}, μ {mu:g})"
        out[name] = {r["steps"]: r[space] for r in doc["rows"] if (r["step_size"], r["momentum"]) == (ss, mu)}
    return out


def num(m: dict, key: str) -> str:
    v, sd = m.get(key), m.get(f"{key}_sd")
    return "–" if v is None else f"{v:.2f} ± {sd:.2f}" if sd is not None else f"{v:.2f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="+", help="LABEL=path/to/NAME.json")
    ap.add_argument("--space", default="classifier")
    args = ap.parse_args()
    cols: dict[str, dict[int, dict]] = {}
    for item in args.files:
        label, _, path = item.partition("=")
        cols.update(columns(label, Path(path), args.space))
    steps = sorted(set.intersection(*(set(c) for c in cols.values())))
    for metric in ("fid", "is"):
        print(f"\nheld-out {metric.upper()} ({args.space} space), ± bootstrap sd\n")
        print("| steps | " + " | ".join(cols) + " |")
        print("|---|" + "---|" * len(cols))
        for t in steps:
            print(f"| {t} | " + " | ".join(num(c[t], metric) for c in cols.values()) + " |")


if __name__ == "__main__":
    main()
