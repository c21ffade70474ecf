"""One fact in one place: dvc.yaml's code deps equal each stage's import closure, its sampler list
equals the registry, the registry refuses duplicates, the default profile is params.yaml."""
import importlib
import subprocess
import sys

import pytest
import yaml

from pipeline.params import SAMPLER_NAMES, Params, load_params
from pipeline.sampler_specs import SPECS, spec
from tests.conftest import ROOT

sys.path.insert(0, str(ROOT / "scripts"))
import dvc_deps  # noqa: E402


def test_every_stage_lists_exactly_its_import_closure():
    wrong = dvc_deps.check()
    assert not wrong, "\n".join(f"{k}: must list {w}, lists {h}" for k, (w, h) in wrong.items())


def test_the_check_can_fail(tmp_path):
    text = (ROOT / "dvc.yaml").read_text().replace("      - pipeline/params.py\n", "", 1)
    (tmp_path / "dvc.yaml").write_text(text)
    assert "prepare" in dvc_deps.check(tmp_path / "dvc.yaml")
    dvc_deps.write(tmp_path / "dvc.yaml")  # --write puts it back
    assert not dvc_deps.check(tmp_path / "dvc.yaml")


def test_write_refuses_a_stage_without_code_deps_rather_than_shift_the_lists(tmp_path):
    """Code-dep blocks are matched to stages in order; a new stage with none would get its neighbour's."""
    import re
    lines = (ROOT / "dvc.yaml").read_text().splitlines()
    start = lines.index("  report:")
    text = "\n".join(line for i, line in enumerate(lines)
                     if i < start or not re.match(r"\s+- (pipeline|stages)/", line)) + "\n"
    (tmp_path / "dvc.yaml").write_text(text)
    with pytest.raises(SystemExit, match="report list no code deps"):
        dvc_deps.write(tmp_path / "dvc.yaml")
    assert (tmp_path / "dvc.yaml").read_text() == text


def test_an_edit_reruns_exactly_the_stages_that_import_it():
    """The issue's measurements, as properties of the closures."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    users = lambda f: {n for n, s in stages.items() if f in s.get("do", s).get("deps", [])}  # noqa: E731
    assert users("pipeline/energies.py") == {"sample", "tune"}  # the samplers (and their tuning), no training stage
    assert users("pipeline/params.py") == set(stages)
    assert users("stages/sample.py") == {"sample"} and users("stages/score.py") == {"score"}
    assert users("pipeline/losses.py") == {"train_sup", "train_ref", "train_unsup"}
    assert users("pipeline/inception.py") == {"reference_stats", "score", "tune"}
    assert users("pipeline/tuning.py") == {"tune"} and users("pipeline/report.py") == {"report"}
    # how a model is finally measured (AutoAttack, the stage) reruns its evaluation, never its training
    assert users("pipeline/final_evaluation.py") == {"evaluate"} and users("stages/evaluate.py") == {"evaluate"}


def test_dvc_sampler_list_is_the_registry():
    dvc_vars = {k: v for entry in yaml.safe_load((ROOT / "dvc.yaml").read_text())["vars"] for k, v in entry.items()}
    samplers = dvc_vars["samplers"]
    assert list(samplers) == list(SPECS)
    for name, item in samplers.items():
        want = "models/sup" if SPECS[name].model_kind == "classifier" else "models/unsup"
        assert item["model"] == want, name
    tuned = dvc_vars["tuned"]  # tune@NAME: the same facts
    assert tuned and all(tuned[name] == samplers[name] for name in tuned)


def test_dvc_evaluated_models_are_the_schemas():
    """evaluate@NAME: one per entry of pipeline.params.EVALUATED, each reading its training section's model."""
    from pipeline.params import EVALUATED, Params
    dvc_vars = {k: v for entry in yaml.safe_load((ROOT / "dvc.yaml").read_text())["vars"] for k, v in entry.items()}
    defaults = Params()
    assert {name: item["model"] for name, item in dvc_vars["evaluated"].items()} == \
        {name: getattr(defaults, section).out_dir for name, section in EVALUATED.items()}
    assert set(EVALUATED) == set(Params.model_fields["evaluate"].annotation.model_fields)
    # the report reads every model's evaluation and training metrics: each is a dep, so it reruns when one changes
    report = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["report"]["deps"]
    for name, section in EVALUATED.items():
        assert f"${{metrics_dir}}/evaluate_{name}.json" in report and f"${{metrics_dir}}/{section}.json" in report


def test_registry_refuses_duplicates_and_objectives_match():
    with pytest.raises(ValueError, match="registered twice"):
        spec("ta", "classifier", True, "", "TA", None, None)
    samplers = importlib.import_module("pipeline.samplers")
    assert list(samplers.SAMPLERS) == list(SPECS) == list(SAMPLER_NAMES)
    with pytest.raises(ValueError, match="two objectives"):
        samplers.objective("ta")(lambda ctx, y: None)


def test_schema_sections_and_defaults_come_from_the_registry():
    p = Params()
    assert p.sample.resolved("langevin").noise_std == SPECS["langevin"].defaults["noise_std"]
    assert all(hasattr(p.sample, name) for name in SPECS)
    with pytest.raises(Exception, match="'return_best' is not a knob of sample.cs; it is read only by ta"):
        load_params(ROOT / "params.yaml", ["sample.cs.return_best=true"])


def test_params_yaml_is_the_cpu_profile_and_agrees_with_the_schema_defaults():
    assert (ROOT / "params.yaml").read_text() == (ROOT / "profiles" / "cpu.yaml").read_text()
    p, d = load_params(ROOT / "params.yaml"), Params()
    assert p.sample.defaults == d.sample.defaults and p.sample.controls == d.sample.controls
    assert p.score.model_dump() == d.score.model_dump()
    for name in SPECS:
        assert p.sample.resolved(name) == d.sample.resolved(name), name


def test_the_check_script_runs():
    out = subprocess.run([sys.executable, "scripts/dvc_deps.py"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0 and "match the import closures" in out.stdout


@pytest.mark.parametrize("profile", ["cpu", "smoke", "gpu", "paper"])
def test_every_param_a_stage_declares_is_written_by_each_profile(tmp_path, profile):
    """DVC refuses a stage whose declared param is missing from params.yaml ("Parameters 'data.name' are
    missing"): every key dvc.yaml names must be in the file `cem profile` writes, for every profile."""
    import yaml

    from tests.conftest import cem
    out = tmp_path / "params.yaml"
    cem("profile", profile, "--params", str(out), "--profiles-dir", str(ROOT / "profiles"),
        "--throughput", str(tmp_path / "none.json"))
    written = yaml.safe_load(out.read_text())
    spec = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    dvc_vars = {k: v for entry in spec["vars"] for k, v in entry.items()}
    keys = []
    for st in spec["stages"].values():  # a foreach stage's ${key}: every key of the vars it runs over
        items = dvc_vars[st["foreach"].strip("${}")] if "foreach" in st else {"": None}
        keys += [k.replace("${key}", item) for k in (st.get("do") or st).get("params", []) for item in items]
    for key in keys:
        key = key.strip('"')
        node = written
        for part in key.split("."):
            assert isinstance(node, dict) and part in node, f"{profile}: dvc.yaml declares {key}, params.yaml lacks it"
            node = node[part]
