"""evaluation.groups: held-out structures split by whether training labelled their name, and by thickness."""
import json

import numpy as np

from evaluation import groups


def _names(path, labels):
    path.write_text(json.dumps({"labels": labels}))


def _details(per_step):
    """A harness JSON with these per-step DSC dicts (None = a skipped step) and NSDs equal to them."""
    steps = [{"step": i + 1} if d is None else {"step": i + 1, "dsc_per_class": d, "nsd_per_class": d}
             for i, d in enumerate(per_step)]
    return {"steps": steps}


def test_training_names_and_split(tmp_path):
    train = tmp_path / "train"
    train.mkdir()
    _names(train / "a.json", {"1": "Liver", "2": "spleen"})
    (train / "broken.json").write_text("[1, 2]")  # not a names file: ignored
    names = groups.training_names([train])
    assert names == {"liver", "spleen"}
    assert groups.split_seen({"10": "sacrum", "2": "liver", "3": "SPLEEN"}, names) == {
        "seen": ["2", "3"], "unseen": ["10"]}


def test_instance_labelling():
    assert groups.is_instance_labelling({"1": "lesion_1", "2": "lesion_2", "3": "lesion 13"})
    assert not groups.is_instance_labelling({"1": "rib_left_7", "2": "rib_right_7"})
    assert not groups.is_instance_labelling({"1": "lesion_1"})


def test_thickness():
    gts = np.zeros((20, 20, 20), np.uint8)
    gts[2:18, 2:18, 2:18] = 1    # a 16-voxel cube: thickest point 2 x 8 voxels from its surface
    gts[5, 5:15, 19] = 2         # a one-voxel line on the volume's border
    thick = groups.max_thickness(gts)
    assert thick["1"] == 16.0 and thick["2"] == 2.0
    assert groups.split_thickness(thick, thin=8) == {"thin": ["2"], "thick": ["1"]}


def test_summarise_and_cli(tmp_path, capsys):
    details = _details([None, {"1": 0.2, "2": 0.4}, {"1": 0.6, "2": 0.8}])
    out = groups.summarise(groups.structure_scores(details), {"seen": ["1"], "unseen": ["2"]})
    assert out["seen"]["n"] == 1 and abs(out["seen"]["DSC_1"] - 0.2) < 1e-9
    assert abs(out["unseen"]["DSC_Final"] - 0.8) < 1e-9
    # the CLI over a run folder: one case, no-box mode only
    train, cases, run = tmp_path / "train", tmp_path / "cases", tmp_path / "run"
    for d in (train, cases, run / "cases" / "coarse+full_nobox"):
        d.mkdir(parents=True)
    _names(train / "t.json", {"1": "liver"})
    _names(cases / "CT_x.json", {"1": "liver", "2": "sacrum"})
    gts = np.zeros((12, 12, 12), np.uint8)
    gts[1:11, 1:11, 1:11], gts[0, 0, :] = 1, 2
    np.savez(cases / "CT_x.npz", imgs=np.zeros(gts.shape, np.uint8), gts=gts, spacing=np.ones(3))
    (run / "cases" / "coarse+full_nobox" / "CT_x.json").write_text(json.dumps(details))
    groups.main([str(run), "--cases", str(cases), "--train", str(train), "--list"])
    text = capsys.readouterr().out
    assert "| run | nobox | CT_x | seen | 1 | 0.200 | 0.600 |" in text
    assert "| run | nobox | CT_x | unseen | 1 | 0.400 | 0.800 |" in text
    assert "liver (seen): DSC_1 0.20, DSC_Final 0.60" in text
    groups.main([str(run), "--cases", str(cases), "--by", "thickness", "--thin", "4"])
    text = capsys.readouterr().out
    assert "| run | nobox | CT_x | thin | 1 | 0.400 | 0.800 |" in text
    assert "| run | nobox | CT_x | thick | 1 | 0.200 | 0.600 |" in text


def test_relabelled_cases_use_the_harness_ids(tmp_path):
    gts = np.zeros((12, 12, 12), np.uint8)
    gts[1:11, 1:11, 1:11], gts[0, 0, :] = 7, 3  # not 1..N: the harness scores them as 1 (label 3) and 2 (label 7)
    case = tmp_path / "CT_y.npz"
    np.savez(case, imgs=np.zeros(gts.shape, np.uint8), gts=gts, spacing=np.ones(3))
    _names(tmp_path / "CT_y.json", {"3": "rib_left_7", "7": "liver"})
    thick = groups.case_groups(case, "thickness", set(), 4.0, True, {})
    assert thick == {"thin": ["1"], "thick": ["2"]}
    assert groups.case_groups(case, "seen", {"liver"}, 4.0, True, {}) is None  # the names' ids no longer apply
    assert groups.case_groups(case, "seen", {"liver"}, 4.0, False, {}) == {"seen": ["7"], "unseen": ["3"]}
