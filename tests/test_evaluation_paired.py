"""The paired comparison of two evaluation folders (evaluation/paired.py)."""
import json

import numpy as np
import pytest

from evaluation.paired import bootstrap, paired_scores, per_structure, report, rule_score, verdict


def details(finals: dict[str, float], first: dict[str, float] | None = None) -> dict:
    """A harness JSON with 6 steps: `first` (or the finals) at steps 1-5, the finals at step 6; each NSD is
    the DSC halved."""
    early = first if first is not None else finals
    values = [early] * 5 + [finals]
    return {"steps": [{"step": k, "dsc_per_class": dict(v), "nsd_per_class": {c: x / 2 for c, x in v.items()}}
                      for k, v in enumerate(values, 1)]}


def write(root, setting: str, mode: str, case: str, data: dict) -> None:
    folder = root / "cases" / f"{setting}_{mode}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{case}.json").write_text(json.dumps(data))


def test_per_structure_final_and_auc():
    d = details({"1": 1.0, "2": 0.5}, first={"1": 0.0, "2": 0.5})
    assert per_structure(d) == {"1": 1.0, "2": 0.5}
    # the AUC of the last 5 steps (0, 0, 0, 0, 1): 0.5 x the last one
    assert per_structure(d, "DSC_AUC") == {"1": pytest.approx(0.5), "2": pytest.approx(2.0)}
    assert per_structure(d, "NSD_Final") == {"1": 0.5, "2": 0.25}
    assert per_structure(d, "NSD_AUC") == {"1": pytest.approx(0.25), "2": pytest.approx(1.0)}
    skipped = {"steps": [{"step": 1, "dsc_per_class": None}] + details({"1": 1.0})["steps"][1:]}
    assert per_structure(skipped, "DSC_AUC") == {"1": pytest.approx(4.0)}
    assert per_structure({"problems": ["no output"]}) == {}
    with pytest.raises(ValueError, match="metric"):
        per_structure(d, "HD95")


def test_rule_score_is_the_mean_of_modes_of_case_means_and_structures_pair(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    # case X: 2 structures; case Y: 4 (only 3 of which B scored: the 4th is left out of both)
    for mode, shift in (("box", 0.0), ("nobox", -0.2)):
        write(a, "s", mode, "X", details({"1": 0.6 + shift, "2": 0.8 + shift}))
        write(b, "s", mode, "X", details({"1": 0.7 + shift, "2": 0.8 + shift}))
        write(a, "s", mode, "Y", details({"1": 0.5, "2": 0.5, "3": 0.5, "4": 0.0}))
        write(b, "s2", mode, "Y", details({"1": 0.5, "2": 0.5, "3": 0.8}))
    assert paired_scores(a, b, "s")["X"]["box"][1].tolist() == [0.7, 0.8]
    assert "Y" not in paired_scores(a, b, "s")  # B has no setting s for Y
    assert paired_scores(a, b, "s", setting_b="s2")["Y"]["box"][1].tolist() == [0.5, 0.5, 0.8]
    write(b, "s", "box", "Y", details({"1": 0.5, "2": 0.5, "3": 0.8}))
    write(b, "s", "nobox", "Y", details({"1": 0.5, "2": 0.5, "3": 0.8}))
    paired = paired_scores(a, b, "s")
    assert paired["Y"]["nobox"][0].tolist() == [0.5, 0.5, 0.5]
    # A: box (0.7 + 0.5) / 2, no box (0.5 + 0.5) / 2 -> 0.55; B: box (0.75 + 0.6) / 2, no box (0.55 + 0.6) / 2
    assert rule_score(paired, 0) == pytest.approx(0.55)
    assert rule_score(paired, 1) == pytest.approx((0.675 + 0.575) / 2)
    deltas = bootstrap(paired, resamples=300, seed=1)
    assert deltas.min() >= 0 and np.percentile(deltas, 2.5) <= 0.075 <= np.percentile(deltas, 97.5)
    assert np.array_equal(deltas, bootstrap(paired, resamples=300, seed=1))
    expected = "DSC_Final, mean of both box modes: A 0.55000, B 0.62500, B - A +0.07500"
    assert expected in report(paired, deltas, "DSC_Final")


def test_identical_folders_differ_by_nothing(tmp_path):
    for mode in ("box", "nobox"):
        write(tmp_path, "s", mode, "X", details({"1": 0.3, "2": 0.9, "3": 0.6}))
    paired = paired_scores(tmp_path, tmp_path, "s")
    assert np.all(bootstrap(paired, resamples=100) == 0)


def test_verdict_needs_the_margin_and_no_metric_clearly_behind():
    good = {"DSC_Final": (0.012, 0.99), "NSD_Final": (0.0, 0.5), "DSC_AUC": (0.02, 0.9), "NSD_AUC": (-0.01, 0.2)}
    assert verdict(good)[0]
    assert not verdict({**good, "DSC_Final": (0.009, 0.99)})[0]  # below the +0.01 margin
    ships, reason = verdict({**good, "NSD_AUC": (-0.03, 0.04)})  # behind in 96 % of the resamples
    assert not ships and "NSD_AUC" in reason
    with pytest.raises(ValueError):
        verdict({"DSC_Final": (0.05, 1.0)})
