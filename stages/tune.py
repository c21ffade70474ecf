"""`cem tune NAME`: a sampler's FID/IS against held-out real images for each step count (and optionally
step size and momentum), the curve as a DVC plot and an MLflow run, and the setting chosen."""
from __future__ import annotations

import json
from pathlib import Path

from pipeline import data as data_mod
from pipeline.checkpoints import load_model_file, model_run_id
from pipeline.files import atomic_write_text
from pipeline.locks import exclusive
from pipeline.params import SAMPLER_NAMES
from pipeline.progress import log
from pipeline.runtime import amp_decision, setup_runtime
from pipeline.sampler_specs import require_sampler
from pipeline.sampling import model_path_for, prepare_context
from pipeline.metrics import json_safe, spaces
from pipeline.tracking import stage_run
from pipeline.tuning import RULE, chains, check_tunable, choose, heldout_split, plot_curve, score_settings

import typer
from typing import Annotated

from .common import Overrides, ParamsPath, load, user_errors


@user_errors
def tune(
    name: Annotated[str, typer.Argument(help=f"Sampler to tune: {', '.join(SAMPLER_NAMES)}.")],
    params: ParamsPath = Path("params.yaml"),
    overrides: Overrides = None,
):
    """Write tune.out_dir/NAME.json (curve + choice), NAME_curve.json (DVC plot) and NAME.png."""
    require_sampler(name)
    p = load(params, overrides)
    rp, tp = p.sample.resolved(name), p.tune
    model_path = model_path_for(p, name)
    device = setup_runtime(p.sample.runtime)
    check_tunable(name, rp)
    load_model_file(model_path)  # every input checked before a run opens
    ds = data_mod.load_dataset(p.data.out_dir)
    heldout = heldout_split(ds.test.images, ds.test.labels, ds.train.images, tp.heldout_per_class, p.score.seed)
    _, enabled = spaces(p.score)
    primary = "inception" if p.score.inception else "classifier"
    out_dir = Path(tp.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with exclusive(out_dir / name, f"tune {name}"), \
            stage_run(p.experiment, f"tune_{name}", tp, tags={"sampler": name},
                      upstream={"prepare": data_mod.read_manifest(p.data.out_dir).get("mlflow_run_id", ""),
                                "model": model_run_id(model_path)}) as run:
        sampler, ctx, seeds, _ = prepare_context(name, rp, model_path, p.data.out_dir, device, p.sample.runtime)
        amp, _ = amp_decision(p.sample.runtime, device)
        samples = chains(name, rp, ctx, sampler, seeds, tp, device, amp)
        rows = json_safe(score_settings(samples, heldout, enabled, p.score.batch_size, p.score.kid_subset_size,
                                        device))  # a non-finite number (tiny N) becomes null, as in scores
        chosen = choose(rows, primary)
        for r in rows:
            tag = f"ss{r['step_size']:g}_mu{r['momentum']:g}"
            run.log_metrics({f"{space}_{m}_{tag}": r[space][m] for space in (s.name for s in enabled)
                             for m in ("fid", "fid_sd", "is", "is_sd") if isinstance(r[space].get(m), float)},
                            step=r["steps"])
        result = {"sampler": name, "space": primary, "rule": RULE, "chosen": chosen,
                  "used": {"steps": rp.steps, "step_size": rp.step_size, "momentum": rp.momentum},
                  "heldout": {"split": "test", "n": len(heldout.images), "dropped_also_in_train": heldout.dropped,
                              "per_class": tp.heldout_per_class},
                  "n_per_setting": tp.n, "seed": tp.seed, "rows": rows, "mlflow_run_id": run.run_id}
        curve = [{"steps": r["steps"], "setting": f"step {r['step_size']:g}, momentum {r['momentum']:g}",
                  **{f"{m}": r[primary].get(m) for m in ("fid", "fid_sd", "is", "is_sd")}} for r in rows]
        plot_curve(rows, primary, name, chosen, out_dir / f"{name}.png")
        atomic_write_text(out_dir / f"{name}_curve.json", json.dumps(curve, indent=2) + "\n")
        atomic_write_text(out_dir / f"{name}.json", json.dumps(result, indent=2) + "\n")
        run.set_tags({"chosen": f"steps={chosen['steps']} step_size={chosen['step_size']:g} "
                                f"momentum={chosen['momentum']:g}"})
        run.log_artifact(out_dir / f"{name}.png")
        run.log_artifact(out_dir / f"{name}.json")
    log(f"tune {name}: held-out = {len(heldout.images)} test images ({heldout.dropped} also in the training split "
        f"removed); FID/IS in the {primary} space, {tp.n} samples per setting:")
    def num(v) -> str:
        return f"{v:.2f}" if isinstance(v, float) else "–"
    for r in rows:
        m = r[primary]
        log(f"  steps {r['steps']:>4}  step {r['step_size']:g}  momentum {r['momentum']:g}:  "
            f"FID {num(m.get('fid'))} ± {num(m.get('fid_sd'))}  IS {num(m.get('is'))} ± {num(m.get('is_sd'))}")
    log(f"tune {name}: chosen steps={chosen['steps']} step_size={chosen['step_size']:g} "
        f"momentum={chosen['momentum']:g} ({RULE}); this run's params use steps={rp.steps}"
        + ("" if chosen["steps"] == rp.steps else f" — apply with `dvc exp run -S sample.{name}.steps={chosen['steps']}`"))
