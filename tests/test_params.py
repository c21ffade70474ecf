"""Bad params: one line naming the key, exit code 2, nothing written."""

import pytest
import yaml

from pipeline.errors import ParamsError
from pipeline.params import load_params, parse_params
from tests.conftest import ROOT, cem, tiny_params, write_params


@pytest.mark.parametrize("section, value, key, words", [
    ({"train_sup": {"attack": {"epsilon": 0.5}}}, None, "train_sup.attack.epsilon", "unknown key"),
    ({"train_sup": {"attack": {"eps": "0.5"}}}, None, "train_sup.attack.eps", "valid number"),
    ({"train_sup": {"attack": {"eps": -0.5}}}, None, "train_sup.attack.eps", "greater than or equal to 0"),
    ({"sample": {"defaults": {"steps": 2.5}}}, None, "sample.defaults.steps", "integer"),
    ({"data": {"train_per_class": 0}}, None, "data.train_per_class", "greater than 0"),
])
def test_bad_params_exit_2_one_line_no_outputs(tmp_path, image_folder, section, value, key, words):
    raw = tiny_params(tmp_path, image_folder)
    for sec, content in section.items():
        for k, v in content.items():
            if isinstance(v, dict):
                raw[sec].setdefault(k, {}).update(v)
            else:
                raw[sec][k] = v
    params = write_params(tmp_path, raw)
    before = sorted(p.name for p in tmp_path.iterdir())
    proc = cem("prepare", "--params", str(params), check=False)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert key in lines[0] and words in lines[0], lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written, not even a data folder


def test_unknown_top_level_section_is_refused():
    with pytest.raises(ParamsError, match="trian_sup: unknown key"):
        parse_params({"trian_sup": {}})


def test_missing_params_file_is_one_clear_line(tmp_path):
    proc = cem("prepare", "--params", str(tmp_path / "nope.yaml"), check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"error: params file not found: {tmp_path / 'nope.yaml'}"


def test_set_override_is_validated(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("{}")
    assert load_params(path, ["train_sup.optim.epochs=3"]).train_sup.optim.epochs == 3
    with pytest.raises(ParamsError, match="train_sup.optim.epochs"):
        load_params(path, ["train_sup.optim.epochs=-1"])


@pytest.mark.parametrize("name", ["cpu", "smoke", "paper", "gpu"])
def test_every_profile_is_valid_and_switchable(tmp_path, name):
    out = tmp_path / "params.yaml"
    cem("profile", name, "--params", str(out), "--profiles-dir", str(ROOT / "profiles"))
    p = load_params(out)
    if name == "paper":
        assert p.train_sup.arch.name == "resnet50" and p.train_sup.optim.epochs == 150
        assert p.sample.defaults.n == 50000
    if name == "smoke":
        assert p.data.train_per_class == 50
    if name in ("gpu", "paper"):
        assert p.score.inception and p.sample.runtime.amp == "auto"  # the paper's metric, bf16 where fast
        # a GPU profile never falls back to the CPU silently: no CUDA is one line, not hours of CPU training
        assert all(getattr(p, s).runtime.device == "cuda" for s in ("train_sup", "train_ref", "train_unsup", "sample"))
        assert not p.train_ref.arch.whiten and p.train_ref.arch.tta == "none"
    if name == "cpu":
        assert not p.score.inception  # opt-in on a CPU (~0.1 s per image)


def test_committed_params_file_is_valid():
    load_params(ROOT / "params.yaml")


def test_sampler_sections_override_defaults():
    p = parse_params({"sample": {"defaults": {"steps": 7}, "cs": {"steps": 3}}})
    assert p.sample.resolved("cs").steps == 3 and p.sample.resolved("ta").steps == 7
    assert p.sample.resolved("langevin").noise_std == 0.01  # JEM's decoupled noise (docs/science.md reading)
    assert p.sample.resolved("ta").noise_std == 0.0


def test_params_yaml_lists_every_samplers_own_knobs_at_the_registry_defaults():
    """So that `dvc exp run -S sample.rcs.lam=2` works as written (DVC can only -S keys that exist)."""
    from pipeline.sampler_specs import COMMON_KNOBS, SPECS
    from tests.conftest import ROOT
    sample = yaml.safe_load((ROOT / "params.yaml").read_text())["sample"]
    assert set(sample["defaults"]) == set(COMMON_KNOBS)
    for name, spec in SPECS.items():
        assert sample[name] == {**spec.defaults, **spec.knobs}, name


@pytest.mark.parametrize("override, words", [
    ("sample.cs.lam=2", "sample.cs.lam: 'lam' is not a knob of sample.cs; it is read only by rcs, rcs_pca_momentum "
                        "(set it there"),
    ("sample.defaults.beta=2", "sample.defaults.beta: 'beta' is not a knob of sample.defaults; it is read only by "
                               "maxent_uncond, maxent_cond, maxent_pca_momentum"),
    ("sample.ta.tau=0.1", "read only by pgd_uncond, maxent_uncond, pgd_cond, maxent_cond, maxent_pca_momentum"),
    ("sample.pgd_uncond.condition=kmeans", "read only by pgd_cond, maxent_cond, maxent_pca_momentum"),
    ("sample.rcs.colour=2", "sample.rcs.colour: unknown key"),
])
def test_a_knob_its_sampler_does_not_read_is_one_line(override, words):
    from pipeline.params import ParamsError, load_params
    from tests.conftest import ROOT
    with pytest.raises(ParamsError) as err:
        load_params(ROOT / "params.yaml", [override])
    assert words in str(err.value) and "\n" not in str(err.value)


def test_own_knobs_reach_the_resolved_sampler_and_nothing_else():
    p = parse_params({"sample": {"rcs": {"lam": 2.0}, "maxent_cond": {"beta": 3.0, "bank_size": 50}}})
    assert p.sample.resolved("rcs").lam == 2.0 and p.sample.resolved("cs").lam == 1.0
    assert p.sample.resolved("maxent_cond").beta == 3.0 and p.sample.resolved("maxent_uncond").beta == 1.0
    assert p.sample.resolved("maxent_cond").bank_size == 50 and p.sample.resolved("pgd_cond").bank_size == 1000
