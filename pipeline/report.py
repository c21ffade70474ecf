"""The report: our table beside the paper's (science.md §5), the control rows, model accuracies,
grids, a plot, and which of the paper's qualitative claims hold in this run."""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Optional

from .data import atomic_write_text
from .params import SAMPLER_NAMES

# Wang et al. 2022, Table (CIFAR-10, 50k samples, Inception IS / FID). Unsupervised rows: ResNet-18.
PAPER = {
    "ta": ("supervised", "cond", "TA", 9.26, 56.72),
    "langevin": ("supervised", "cond", "Langevin", 9.65, 63.34),
    "cs": ("supervised", "cond", "CS", 9.77, 56.26),
    "rcs": ("supervised", "cond", "RCS", 9.80, 55.91),
    "pgd_uncond": ("unsupervised", "uncond", "PGD", 5.35, 74.27),
    "maxent_uncond": ("unsupervised", "uncond", "MaxEnt", 8.24, 41.80),
    "pgd_cond": ("unsupervised", "cond", "PGD", 5.85, 68.54),
    "maxent_cond": ("unsupervised", "cond", "MaxEnt", 8.68, 36.44),
}
ORDER = ["ta", "langevin", "cs", "rcs", "pgd_uncond", "maxent_uncond", "pgd_cond", "maxent_cond"]


def _f(v, digits=2) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def load_scores(score_dir: Path) -> dict[str, dict]:
    out = {}
    for name in SAMPLER_NAMES:
        path = Path(score_dir) / f"{name}.json"
        if path.exists():
            out[name] = json.loads(path.read_text())
    return out


def claims(scores: dict[str, dict], space: str = "classifier") -> list[tuple[str, Optional[bool], str]]:
    """The paper's qualitative claims, judged by FID in one feature space (lower is better)."""
    def fid(name):
        s = scores.get(name, {}).get(space)
        return s.get("fid") if isinstance(s, dict) else None

    rows = []

    def claim(text, names, test, detail):
        vals = [fid(n) for n in names]
        if any(v is None for v in vals):
            rows.append((text, None, "not scored"))
        else:
            rows.append((text, bool(test(*vals)), detail(*vals)))

    claim("CS beats TA (FID)", ["cs", "ta"], lambda a, b: a < b, lambda a, b: f"CS {a:.2f} vs TA {b:.2f}")
    claim("RCS beats TA (FID)", ["rcs", "ta"], lambda a, b: a < b, lambda a, b: f"RCS {a:.2f} vs TA {b:.2f}")
    claim("Langevin has the worst FID of the four supervised samplers", ["langevin", "ta", "cs", "rcs"],
          lambda l, *o: l > max(o), lambda l, *o: f"Langevin {l:.2f} vs worst other {max(o):.2f}")
    claim("MaxEnt beats PGD, unconditional", ["maxent_uncond", "pgd_uncond"], lambda a, b: a < b,
          lambda a, b: f"MaxEnt {a:.2f} vs PGD {b:.2f}")
    claim("MaxEnt beats PGD, conditional", ["maxent_cond", "pgd_cond"], lambda a, b: a < b,
          lambda a, b: f"MaxEnt {a:.2f} vs PGD {b:.2f}")
    claim("Conditional beats unconditional (PGD)", ["pgd_cond", "pgd_uncond"], lambda a, b: a < b,
          lambda a, b: f"cond {a:.2f} vs uncond {b:.2f}")
    claim("Conditional beats unconditional (MaxEnt)", ["maxent_cond", "maxent_uncond"], lambda a, b: a < b,
          lambda a, b: f"cond {a:.2f} vs uncond {b:.2f}")
    return rows


def plot_scores(scores: dict[str, dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = [n for n in ORDER if n in scores]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2), dpi=110)
    for ax, key, title in ((axes[0], "is", "IS (classifier space) ↑"), (axes[1], "fid", "FID (classifier space) ↓")):
        vals = [scores[n]["classifier"][key] for n in names]
        seeds = [scores[n]["control_seeds"][key] for n in names]
        x = range(len(names))
        ax.bar([i - 0.2 for i in x], vals, width=0.4, label="samples")
        ax.bar([i + 0.2 for i in x], seeds, width=0.4, label="control: seeds", alpha=0.6)
        ax.set_xticks(list(x), names, rotation=45, ha="right", fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def model_rows(model_metrics: dict[str, Path]) -> list[str]:
    lines = ["| model | clean acc (%) | robust acc (%) | attack | eval images | train s | img/s |",
             "|---|---|---|---|---|---|---|"]
    for label, path in model_metrics.items():
        path = Path(path)
        if not path.exists():
            lines.append(f"| {label} | not trained | | | | | |")
            continue
        m = json.loads(path.read_text())
        clean = m.get("clean_acc", m.get("probe_clean_acc"))
        robust = m.get("robust_acc", m.get("probe_robust_acc"))
        lines.append(f"| {label} | {_f(clean)} | {_f(robust)} | {m.get('eval_attack', '')} | "
                     f"{m.get('eval_images', '')} | {m.get('train_seconds', '')} | {m.get('images_per_second', '')} |")
    return lines


def write_report(score_dir: Path, sample_dir: Path, model_metrics: dict[str, Path], out: Path,
                 profile_note: str = "") -> Path:
    scores = load_scores(score_dir)
    out = Path(out)
    folder = out.parent
    (folder / "grids").mkdir(parents=True, exist_ok=True)
    any_score = next(iter(scores.values()), {})
    judge = any_score.get("judge_sha256", "")[:12]
    ctrl_key = next((k for k in any_score if k.startswith("control_steps")), "control_steps2")
    incep = any(isinstance(s.get("inception"), dict) for s in scores.values())
    L = ["# Results: adversarial sampling, ours beside Wang et al. (ICLR 2022)", ""]
    if profile_note:
        L += [profile_note, ""]
    L += [f"Feature space of our numbers: **classifier** (the reference classifier, judge sha256 `{judge}`), "
          "against the prepared training images. These numbers are comparable only between runs with the same "
          "judge; they are **not** comparable to the paper's Inception numbers, which are shown for orientation. "
          + ("Inception-space numbers follow in their own table." if incep else
             "Inception space: unavailable in this run (no weights on this machine)."), ""]
    L += ["## Samplers", "",
          "| training | sampling | method | n | IS ↑ | FID ↓ | KID ↓ | target acc (%) | diversity | paper IS | paper FID |",
          "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name in ORDER:
        tr, cond, method, pis, pfid = PAPER[name]
        s = scores.get(name)
        if s is None:
            L.append(f"| {tr} | {cond} | {method} | not scored | | | | | | {pis} | {pfid} |")
            continue
        c = s["classifier"]
        L.append(f"| {tr} | {cond} | {method} | {s['n']} | {_f(c['is'])} | {_f(c['fid'])} | {_f(c['kid'], 4)} | "
                 f"{_f(c.get('target_acc'), 1)} | {_f(c['diversity'], 3)} | {pis} | {pfid} |")
    if incep:
        L += ["", "### Inception space (inception-v3-compat)", "", "| method | IS | FID | KID |", "|---|---|---|---|"]
        for name in ORDER:
            s = scores.get(name, {})
            i = s.get("inception")
            if isinstance(i, dict):
                L.append(f"| {name} | {_f(i['is'])} | {_f(i['fid'])} | {_f(i['kid'], 4)} |")
    L += ["", "## Control rows (science.md §6: a standard judge is easy to fool)", "",
          "The same seeds as each sampler's first samples, scored untouched and after "
          f"{ctrl_key.replace('control_steps', '')} sampler steps. A sampler is only credited with what it adds "
          "beyond these rows. Diversity is the mean pairwise distance of judge features (within class for "
          "conditional samplers); real training images give the yardstick in the last column.", "",
          "| method | seeds IS | seeds FID | seeds target acc | few-step IS | few-step FID | few-step target acc | "
          "final FID | diversity | real diversity |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name in ORDER:
        s = scores.get(name)
        if s is None:
            continue
        a, b, c = s["control_seeds"], s.get(ctrl_key, {}), s["classifier"]
        L.append(f"| {name} | {_f(a['is'])} | {_f(a['fid'])} | {_f(a.get('target_acc'), 1)} | {_f(b.get('is'))} | "
                 f"{_f(b.get('fid'))} | {_f(b.get('target_acc'), 1)} | {_f(c['fid'])} | {_f(c['diversity'], 3)} | "
                 f"{_f(s.get('real_diversity'), 3)} |")
    L += ["", "## The paper's qualitative claims in this run (classifier-space FID)", "",
          "| claim | holds | numbers |", "|---|---|---|"]
    for text, holds, detail in claims(scores):
        L.append(f"| {text} | {'–' if holds is None else ('yes' if holds else 'no')} | {detail} |")
    L += ["", "## Trained models", ""] + model_rows(model_metrics)
    if scores:
        plot_scores(scores, folder / "scores.png")
        L += ["", "## IS and FID per sampler", "", "![IS and FID per sampler](scores.png)"]
    L += ["", "## Sample grids", "", "Conditional samplers: one row per class (airplane … truck, top to bottom).", ""]
    for name in ORDER:
        grid = Path(sample_dir) / name / "grid.png"
        if grid.exists():
            shutil.copyfile(grid, folder / "grids" / f"{name}.png")
            L += [f"### {name}", "", f"![{name}](grids/{name}.png)", ""]
    atomic_write_text(out, "\n".join(L) + "\n")
    return out
