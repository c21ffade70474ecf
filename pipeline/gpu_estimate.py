"""What a profile will cost on a GPU, from measured throughputs (`python -m bench.gpu --out FILE`),
printed by `cem profile` so a user knows before `dvc repro` starts. Only measured rates are used;
a stage without a matching measurement is reported as unknown, never guessed. A training rate
matches only at the section's batch size (on a GPU it moves the rate 3x: issue 12's table)."""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Optional

from .sampler_specs import SPECS

CIFAR10_TRAIN = 50_000


def _rate(rows: list[dict], pattern: str) -> Optional[tuple[float, str]]:
    for row in rows:
        if re.search(pattern, row["case"]):
            note = f"; {row['note']}" if row.get("note") else ""
            return float(row["items_per_s"]), row["case"] + note
    return None


def _missing(rows: list[dict], pattern: str, bs: int) -> str:
    """Why no rate matched: say which batch sizes were measured for this step, if any."""
    other = sorted({int(m.group(1)) for r in rows if re.search(pattern, r["case"])
                    for m in [re.search(r", bs (\d+)", r["case"])] if m})
    return (f"no measurement at bs {bs} (measured: bs {', '.join(map(str, other))})" if other
            else f"no row matching {pattern!r}")


def estimate(p, table: dict) -> list[tuple[str, Optional[float], str]]:
    """(stage, seconds or None, which measurement) for the training stages and the sampling."""
    rows = table.get("rows", [])
    n_train = CIFAR10_TRAIN if p.data.train_per_class is None else 10 * p.data.train_per_class
    out = []
    for name, sec in (("train_sup", p.train_sup), ("train_ref", p.train_ref)):
        arch, a, bs = sec.arch.name, sec.attack, sec.optim.batch_size
        pattern = (rf"^{arch} PGD-{a.steps} AT" if a.eps > 0 and a.steps > 0 else rf"^{arch} standard training")
        found = _rate(rows, rf"{pattern}, bs {bs}\b")
        images = sec.optim.epochs * n_train
        out.append((name, images / found[0] if found else None, found[1] if found else _missing(rows, pattern, bs)))
    u = p.train_unsup
    pattern = rf"^contrastive AT {u.arch.name}\b"
    found = _rate(rows, rf"{pattern}.*, bs {u.optim.batch_size}\b")
    out.append(("train_unsup", u.optim.epochs * n_train / found[0] if found else None,
                found[1] if found else _missing(rows, pattern, u.optim.batch_size)))
    total, missing = 0.0, []
    for name, spec in SPECS.items():
        rp = p.sample.resolved(name)
        arch = (p.train_sup if spec.model_kind == "classifier" else p.train_unsup).arch.name
        found = _rate(rows, rf"^sampler ({name} )?{arch}, {rp.steps} steps")
        if found:
            total += rp.n / found[0]
        else:
            missing.append(name)
    out.append(("sample (all samplers)", None if missing else total,
                "measured sampler rates" if not missing else f"no rate for {', '.join(missing)}"))
    return out


def _duration(secs: float) -> str:
    return f"{secs / 3600:6.2f} h" if secs >= 3600 else f"{secs / 60:6.1f} min"


def summary(p, path: Path) -> Optional[str]:
    """A few lines for `cem profile`, or None when no throughput file exists."""
    if not Path(path).exists():
        return None
    table = json.loads(Path(path).read_text())
    rows = estimate(p, table)
    known = [s for _, s, _ in rows if s is not None]
    lines = [f"estimated GPU time on {table.get('device', '?')} ({table.get('source', path)}):"]
    for name, secs, why in rows:
        lines.append(f"  {name:22s} " + (_duration(secs) if secs is not None else "   unknown") + f"  [{why}]")
    lines.append(f"  {'total (known stages)':22s} {_duration(sum(known))} (+ scoring and start-up)")
    return "\n".join(lines)
