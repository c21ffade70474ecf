"""report.claims: the paper's orderings are called only where the numbers support them."""
from pipeline.report import claims
from pipeline.sampler_specs import SPECS


def _scores(fids: dict, sd: float | None):
    return {name: {"samples": {"classifier": {"fid": fid, **({"fid_sd": sd} if sd is not None else {})}}}
            for name, fid in fids.items()}


FIDS = {"ta": 10.0, "cs": 9.0, "rcs": 6.0, "langevin": 20.0,
        "pgd_uncond": 30.0, "maxent_uncond": 29.0, "pgd_cond": 12.0, "maxent_cond": 14.5}


def test_orderings_are_called_only_beyond_the_noise():
    got = {text: verdict for text, verdict, _ in claims(_scores(FIDS, sd=0.5))}  # margin 3·√2·0.5 = 2.12
    assert got["CS beats TA"] == "within noise"            # gap 1.0
    assert got["RCS beats TA"] == "yes"                    # gap 4.0
    assert got["Langevin has the worst FID of the four supervised samplers"] == "yes"
    assert got["MaxEnt beats PGD, unconditional"] == "within noise"
    assert got["MaxEnt beats PGD, conditional"] == "no"          # reversed by 2.5
    assert got["Conditional beats unconditional (PGD)"] == "yes"


def test_detail_states_gap_and_noise_and_old_scores_fall_back_to_the_sign():
    rows = {text: (verdict, detail) for text, verdict, detail in claims(_scores(FIDS, sd=0.5))}
    assert rows["CS beats TA"][1] == "FID CS 9.00 vs TA 10.00, gap +1.00 vs noise ±2.12"
    no_sd = {text: verdict for text, verdict, _ in claims(_scores(FIDS, sd=None))}
    assert no_sd["CS beats TA"] == "yes" and no_sd["MaxEnt beats PGD, conditional"] == "no"
    missing = dict((t, v) for t, v, _ in claims(_scores({k: v for k, v in FIDS.items() if k != "ta"}, 0.5)))
    assert missing["CS beats TA"] == "not scored"


def test_the_new_rows_are_called_against_their_paper_sampler():
    got = {text: verdict for text, verdict, _ in claims(_scores({**FIDS, "rcs_pca_momentum": 2.0,
                                                                 "maxent_pca_momentum": 14.0}, sd=0.5))}
    assert got["(ours) RCS + PCA seeds + momentum beats RCS"] == "yes"                       # gap 4.0
    assert got["(ours) MaxEnt + PCA seeds + momentum beats MaxEnt (cond)"] == "within noise"  # gap 0.5


def test_settings_section_states_what_ran_and_whether_the_heldout_choice_was_used():
    from pipeline.report import settings_section
    cfg = {"steps": 60, "step_size": 0.5, "momentum": 0.5, "seeds": "pca"}
    scores = {"rcs": {"sampler_config": {"steps": 60, "step_size": 0.5, "momentum": 0.0, "seeds": "gaussian"}},
              "rcs_pca_momentum": {"sampler_config": cfg}, "maxent_pca_momentum": {"sampler_config": cfg}}

    def tuned(steps):
        return {"chosen": {"steps": steps, "step_size": 0.5, "momentum": 0.5, "classifier": {"fid": 20.0, "fid_sd": 1.0}},
                "space": "classifier", "rule": "RULE", "heldout": {"n": 1000}}
    lines = "\n".join(settings_section(scores, {"rcs_pca_momentum": tuned(60), "maxent_pca_momentum": tuned(40)}))
    assert "| rcs | gaussian | 60 | 0.500 | 0.00 | params.yaml (not tuned) |" in lines
    assert "| rcs_pca_momentum | pca | 60 |" in lines and "chose steps 60, step size 0.5, momentum 0.5: **used**" in lines
    assert "chose steps 40" in lines and "**not used** (apply: `dvc exp run -S sample.maxent_pca_momentum.steps=40`)" \
        in lines
    assert "1000 test images, classifier FID 20.00 ± 1.00" in lines and "Tuning rule: RULE." in lines


def test_a_heldout_choice_in_a_space_that_failed_its_controls_is_withheld():
    """Like a claim, a step count chosen by a failed instrument is shown but not to be trusted."""
    from pipeline.report import settings_section
    cfg = {"steps": 60, "step_size": 0.5, "momentum": 0.5, "seeds": "pca"}
    tuned = {"chosen": {"steps": 0, "step_size": 0.5, "momentum": 0.5, "classifier": {"fid": 18.7, "fid_sd": 0.8}},
             "space": "classifier", "rule": "RULE", "heldout": {"n": 1000}}
    scores = {"rcs_pca_momentum": {"sampler_config": cfg}}

    def row(controls):
        return next(l for l in settings_section(scores, {"rcs_pca_momentum": tuned}, controls)
                    if l.startswith("| rcs_pca_momentum"))
    passed = {"spaces": {"classifier": {"passed": True}}}
    failed = {"spaces": {"classifier": {"passed": False}}}
    assert "withheld" not in row(passed) and "unchecked" not in row(passed)
    assert row(failed).endswith("; **withheld**: the classifier space failed its controls |")
    assert "unchecked: no controls for this space" in row(None)



def test_another_dataset_is_named_and_gets_no_paper_numbers(tmp_path):
    """The report labels its rows from the dataset's registry entry (the whole DAG runs on CIFAR-100 in
    tests/test_datasets.py; here SVHN, from the same score file as CIFAR-10)."""
    import json
    from pipeline.datasets import DATASETS
    from pipeline.report import write_report
    row = {"n": 500, "reference_n": 1000, "fid": 9.0, "kid": 0.01, "is": 5.0}
    (tmp_path / "scores").mkdir()
    (tmp_path / "scores" / "cs.json").write_text(json.dumps(
        {"sampler": "cs", "samples": {"classifier": row}, "control_seeds": {"classifier": {**row, "fid": 30.0}}}))

    def report(name):
        return write_report(tmp_path / "scores", tmp_path / "samples", {}, tmp_path / name / "results.md",
                            dataset=DATASETS[name]).read_text()
    svhn, cifar = report("svhn"), report("cifar10")
    assert "Dataset: **svhn** (10 classes). The paper reports no numbers on it" in svhn
    assert "Dataset:" not in cifar
    paper = f"{SPECS['cs'].paper_is} | {SPECS['cs'].paper_fid} |"
    assert paper in cifar and paper not in svhn
