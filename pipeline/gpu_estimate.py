"""What a profile will cost on a GPU, printed by `cem profile gpu|paper` before `dvc repro` starts. Built
from measurements only, never guessed; a stage nobody measured says so.

Two measured sources, both written from a GPU acceptance run (scripts/gpu_acceptance.sh, recorded with
scripts/gpu_record.py):

* docs/gpu_throughput.json (`python -m bench.gpu --out`): the steady rate of each step (a training step at
  a batch size, a sampler batch), eager and compiled (`compile` per row), and each case's first call.
* docs/gpu_stages.json: every stage's wall time inside a whole `dvc repro` (start-up included), with the
  seconds of its training or sampling loop, the section params it ran with and the commit it ran at.

A stage's estimate = its measured fixed part (wall time minus its loop: process start, data, final
evaluation) + its loop at this profile's size from the bench rate (+ the first step: compilation or
cuDNN autotuning). A measurement whose stage code changed since its commit is marked stale (git diff
of the stage's code deps in dvc.yaml); a fixed part measured under other evaluation settings says so.
A training rate matches only at the section's batch size and compile setting (both move a GPU's rate
by 1.3-3x)."""
from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Optional

from .datasets import require_dataset
from .model_kinds import MODEL_KINDS
from .params import EVALUATED, EVALUATED_AS
from .sampler_specs import SPECS

LOOP_KEYS = {"optim", "runtime", "checkpoint_every", "out_dir"}
"""Section keys that change only the loop (its length and speed), not the measured fixed part."""


def _row(rows: list[dict], pattern: str, compile_: bool, table_compile: bool = False) -> Optional[dict]:
    for row in rows:
        if re.search(pattern, row["case"]) and bool(row.get("compile", table_compile)) == compile_:
            return row
    return None


def _missing(rows: list[dict], pattern: str, bs: int, compile_: bool) -> str:
    """Why no rate matched: say which batch sizes / compile settings were measured for this step."""
    seen = sorted({(int(m.group(1)), bool(r.get("compile"))) for r in rows if re.search(pattern, r["case"])
                   for m in [re.search(r", bs (\d+)", r["case"])] if m})
    mode = "compiled" if compile_ else "eager"
    return (f"no {mode} measurement at bs {bs} (measured: "
            + ", ".join(f"bs {b} {'compiled' if c else 'eager'}" for b, c in seen) + ")" if seen
            else f"no row matching {pattern!r}")


def _dvc(dvc_yaml: Path) -> dict:
    """dvc.yaml as data; {} where there is none (an estimate outside a checkout)."""
    import yaml
    return (yaml.safe_load(dvc_yaml.read_text()) or {}) if dvc_yaml.is_file() else {}


def stage_code(dvc_yaml: Path, stage: str) -> list[str]:
    """The code files (pipeline/, stages/) a dvc.yaml stage depends on (`sample@ta` -> the foreach body)."""
    spec = _dvc(dvc_yaml).get("stages", {}).get(stage.split("@")[0], {})
    deps = (spec.get("do") or spec).get("deps", [])
    return [d for d in deps if isinstance(d, str) and d.endswith(".py")]


def stale_files(root: Path, commit: str, files: list[str]) -> Optional[list[str]]:
    """Which of `files` changed since `commit` (None when git cannot tell: no repository, unknown commit)."""
    if not commit or not files:
        return None
    try:
        out = subprocess.run(["git", "diff", "--name-only", commit, "--", *files], cwd=root, capture_output=True,
                             text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.split() if out.returncode == 0 else None


REPO = Path(__file__).resolve().parents[1]


def tuned_samplers(dvc_yaml: Path) -> list[str]:
    """The samplers dvc.yaml tunes (its `tuned` vars: one tune@NAME stage each); none without a dvc.yaml."""
    for entry in _dvc(dvc_yaml).get("vars", []):
        if isinstance(entry, dict) and "tuned" in entry:
            return list(entry["tuned"] or [])
    return []


class Estimator:
    def __init__(self, p, table: dict, stages: Optional[dict] = None, root: Optional[Path] = None):
        self.p, self.rows, self.table_compile = p, table.get("rows", []), bool(table.get("compile", False))
        self.stages = stages or {}
        self.measured = self.stages.get("stages", {})
        self.root = Path(root) if root else None

    def _stale(self, stage: str) -> str:
        commit = self.stages.get("commit", "")
        if self.root is None or stage not in self.measured:
            return ""
        changed = stale_files(self.root, commit, stage_code(self.root / "dvc.yaml", stage))
        if changed is None:
            return f"; staleness unknown (git cannot compare with {commit[:9] or 'no commit'})"
        return f"; STALE: {len(changed)} code file(s) changed since {commit[:9]}" if changed else ""

    def _fixed(self, stage: str, section: Optional[dict] = None) -> tuple[Optional[float], str]:
        m = self.measured.get(stage)
        if m is None:
            return None, "start-up and evaluation not measured"
        fixed = m["seconds"] - m.get("loop_seconds", 0.0)
        note = f"fixed {fixed:.0f} s measured {self.stages.get('date', '?')}"
        if section is not None and m.get("section") is not None:
            now = {k: v for k, v in section.items() if k not in LOOP_KEYS}
            then = {k: v for k, v in m["section"].items() if k not in LOOP_KEYS}
            if "test_per_class" in (m["section"].get("eval") or {}):  # measured before `cem evaluate` existed
                note += (f", then including the final evaluation (now evaluate@{EVALUATED_AS.get(stage, 'NAME')}'s: "
                         "an overestimate here)")
            elif now != then:
                note += " with other evaluation/attack settings"
        return fixed, note + self._stale(stage)

    def training(self, name: str, sec) -> tuple[str, Optional[float], str]:
        ds = require_dataset(self.p.data.name)
        n_train = ds.train_size if self.p.data.train_per_class is None else ds.num_classes * self.p.data.train_per_class
        compile_ = sec.runtime.compile
        if name == "train_unsup":
            pattern = rf"^contrastive AT {sec.arch.name} PGD-{sec.attack.steps}\b"
        else:
            a = sec.attack
            pattern = rf"^{sec.arch.name} PGD-{a.steps} AT" if a.eps > 0 and a.steps > 0 else \
                rf"^{sec.arch.name} standard training"
        row = _row(self.rows, rf"{pattern}.*, bs {sec.optim.batch_size}\b", compile_, self.table_compile)
        if row is None:
            return name, None, _missing(self.rows, pattern, sec.optim.batch_size, compile_)
        loop = sec.optim.epochs * n_train / float(row["items_per_s"])
        m = self.measured.get(name, {})
        first = m["first_step_seconds"] if m.get("compile") == compile_ and "first_step_seconds" in m \
            else float(row.get("first_call_s", 0.0))
        fixed, note = self._fixed(name, sec.model_dump(mode="json"))
        why = f"{row['case']}{' compiled' if compile_ else ''} + first step {first:.0f} s; {note}"
        return name, loop + first + (fixed or 0.0), why

    def _sampler_row(self, name: str, steps: int) -> tuple[Optional[dict], str]:
        """This sampler's measured rate on its model's arch at `steps` steps (else any sampler's there)."""
        arch = getattr(self.p, MODEL_KINDS[SPECS[name].model_kind].section).arch.name
        compile_ = self.p.sample.runtime.compile
        row = _row(self.rows, rf"^sampler ({name} )?{arch}, {steps} steps", compile_, self.table_compile) or \
            _row(self.rows, rf"^sampler \w+ {arch}, {steps} steps", compile_, self.table_compile)
        return row, f"no {'compiled' if compile_ else 'eager'} sampler rate on {arch} at {steps} steps"

    def sampling(self, name: str) -> tuple[str, Optional[float], str]:
        rp = self.p.sample.resolved(name)
        compile_ = self.p.sample.runtime.compile
        row, missing = self._sampler_row(name, rp.steps)
        stage = f"sample@{name}"
        if row is None:
            return stage, None, missing
        loop = rp.n / float(row["items_per_s"])
        fixed, note = self._fixed(stage)
        if fixed is None:  # another sampler's stage: the same start-up, seeds, controls and grid
            others = [m["seconds"] - m.get("loop_seconds", 0.0) for k, m in self.measured.items()
                      if k.startswith("sample@")]
            if others:
                fixed, note = sum(others) / len(others), f"fixed part from {len(others)} other sample stage(s)"
        return stage, loop + (fixed or 0.0), f"{row['case']}{' compiled' if compile_ else ''}; {note}"

    def tuning(self, name: str) -> tuple[str, Optional[float], str]:
        """`cem tune NAME`: one chain of max(tune.steps) steps per (step size, momentum) setting, at the
        sampler's measured rate per step; its start-up and scoring (every setting × step count) are
        known only from a measured tune stage."""
        stage, tp, rp = f"tune@{name}", self.p.tune, self.p.sample.resolved(name)
        row, missing = self._sampler_row(name, rp.steps)
        if row is None:
            return stage, None, missing
        settings = len(tp.step_size or [rp.step_size]) * len(tp.momentum or [rp.momentum])
        loop = settings * tp.n * max(tp.steps) / (float(row["items_per_s"]) * rp.steps)
        m = self.measured.get(stage)
        if m is None:
            return stage, None, (f"chains {loop:.0f} s from {row['case']}; start-up and scoring "
                                 f"{settings * len(tp.steps) * tp.n:,} images not measured")
        if "loop_seconds" not in m:  # the whole stage as measured (scripts/gpu_record.py), valid at its size
            other = m.get("section") not in (None, tp.model_dump(mode="json"))
            return stage, m["seconds"], (f"measured {self.stages.get('date', '?')}"
                                         + (" with other tune settings" if other else " at this stage's size")
                                         + self._stale(stage))
        fixed = m["seconds"] - m["loop_seconds"]
        return stage, loop + fixed, (f"{row['case']}; fixed {fixed:.0f} s (start-up, scoring) measured "
                                     f"{self.stages.get('date', '?')}{self._stale(stage)}")

    def measured_only(self, stage: str) -> tuple[str, Optional[float], str]:
        m = self.measured.get(stage)
        if m is None:
            return stage, None, "not measured on a GPU yet"
        return stage, m["seconds"], f"measured {self.stages.get('date', '?')} at this stage's size{self._stale(stage)}"


def estimate(p, table: dict, stages: Optional[dict] = None, root: Optional[Path] = None) \
        -> list[tuple[str, Optional[float], str]]:
    """(dvc stage, seconds or None, which measurements) for every stage of the DAG."""
    e = Estimator(p, table, stages, root)
    rows = [e.measured_only("prepare")]
    rows += [e.training(name, getattr(p, name)) for name in ("train_sup", "train_ref", "train_unsup")]
    rows += [e.measured_only(f"evaluate@{n}") for n in EVALUATED]
    rows += [e.sampling(name) for name in SPECS]
    rows += [e.measured_only("reference_stats")] + [e.measured_only(f"score@{n}") for n in SPECS]
    rows += [e.tuning(n) for n in tuned_samplers((Path(root) if root else REPO) / "dvc.yaml")]
    rows += [e.measured_only("report")]
    return rows


def critical_path(rows: list[tuple[str, Optional[float], str]], dag: dict[str, list[str]]) \
        -> tuple[float, list[str], int]:
    """The DAG's longest chain of estimated stage times: (seconds, its stages, how many of them are unmeasured).

    With enough `cem repro --jobs` and stages that do not slow each other, the whole DAG cannot finish sooner;
    on one GPU, side-by-side stages share it, so this is a floor, not a forecast. Unmeasured stages count 0 s."""
    secs = {name: s for name, s, _ in rows}
    best: dict[str, tuple[float, list[str]]] = {}

    def longest(chains) -> tuple[float, list[str]]:  # ties: the longer chain (it ends at the report)
        return max(chains, key=lambda t: (t[0], len(t[1])), default=(0.0, []))

    def finish(stage: str) -> tuple[float, list[str]]:
        if stage not in best:
            before = longest(finish(u) for u in dag.get(stage, []))
            best[stage] = (before[0] + (secs.get(stage) or 0.0), before[1] + [stage])
        return best[stage]

    total, chain = longest(finish(s) for s in dag)
    return total, chain, sum(secs.get(s) is None for s in chain)


def _duration(secs: float) -> str:
    return f"{secs / 3600:6.2f} h" if secs >= 3600 else f"{secs / 60:6.1f} min"


def summary(p, path: Path, stages_path: Optional[Path] = None, root: Optional[Path] = None,
            dag: Optional[dict[str, list[str]]] = None) -> Optional[str]:
    """A few lines for `cem profile`, or None when no throughput file exists. `dag` (`dvc dag` of `root`
    when not given) adds the critical path."""
    if not Path(path).exists():
        return None
    table = json.loads(Path(path).read_text())
    stages = json.loads(Path(stages_path).read_text()) if stages_path and Path(stages_path).exists() else None
    rows = estimate(p, table, stages, root)
    known = [s for _, s, _ in rows if s is not None]
    unknown = [n for n, s, _ in rows if s is None]
    lines = [f"estimated GPU time on {table.get('device', '?')} (bench {table.get('date', '?')}"
             + (f", stages {stages.get('date', '?')} at {stages.get('commit', '?')[:9]}" if stages else "") + "):"]
    width = max(len("total (known stages)"), *(len(name) for name, _, _ in rows))
    for name, secs, why in rows:
        lines.append(f"  {name:{width}s} " + (_duration(secs) if secs is not None else "   unknown") + f"  [{why}]")
    lines.append(f"  {'total (known stages)':{width}s} {_duration(sum(known))}"
                 + (f" + {len(unknown)} stage(s) not measured" if unknown else "") + ", one stage at a time")
    jobs = int((stages or {}).get("jobs", 1))
    if jobs > 1:
        lines.append(f"  (the stage times were measured with {jobs} stages side by side: "
                     "each includes their contention)")
    if stages and stages.get("dag_exit") == 0 and stages.get("dag_seconds"):
        lines.append(f"  measured: the whole DAG took {_duration(float(stages['dag_seconds'])).strip()}"
                     + (f" with `cem repro --jobs {jobs}`" if jobs > 1 else " with `dvc repro`"))
    else:
        lines.append("  `cem repro --jobs 4` runs independent stages side by side (not yet measured on a GPU)")
    if dag is None and root is not None and (Path(root) / "dvc.yaml").is_file():
        from .errors import CemError
        from .repro import read_dag
        try:
            dag = read_dag(Path(root))
        except CemError as e:
            lines.append(f"  (no critical path: {e})")
    if dag:
        secs, chain, unmeasured = critical_path(rows, dag)
        lines.append(f"  critical path {_duration(secs).strip()}: {' -> '.join(chain)}"
                     + (f" ({unmeasured} of them not measured, counted 0 s)" if unmeasured else "")
                     + "; side by side (`cem repro --jobs N`) the DAG cannot finish sooner, and on one GPU "
                       "the stages beside it slow it")
    return "\n".join(lines)
