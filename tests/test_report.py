"""report.claims: the paper's orderings are called only where the numbers support them."""
from pipeline.report import claims


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
