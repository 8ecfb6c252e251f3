"""Hard-example sampling: the per-structure difficulty file and the label draw it steers (training/difficulty.py)."""
import json

import numpy as np
import pytest

from evaluation.metrics import dice_per_class
from inference.network import new_model, save_checkpoint
from training import config as C
from training import difficulty as D
from training.data import CaseStore, list_cases, write_synthetic_cases
from training.train import train


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cases")
    write_synthetic_cases(folder, n=2, shape=(20, 28, 28), n_classes=3, seed=4)
    return folder


def test_dice_per_class_counts_each_class_on_its_own():
    gts = np.array([[[0, 1, 1, 2, 2, 3]]])
    segs = np.array([[[1, 1, 0, 2, 2, 0]]])
    assert dice_per_class(gts, segs, [1, 2, 3]) == pytest.approx([2 / 4, 1.0, 0.0])


def test_missed_structures_weigh_more_and_unscored_ones_take_the_mean():
    w = D.label_weights({1: 1.0, 2: 0.0, 3: 0.5}, [1, 2, 3], power=1.0, floor=0.1)
    assert w == pytest.approx(np.array([0.1, 1.1, 0.6]) / 1.8)
    w = D.label_weights({1: 1.0, 2: 0.0}, [1, 2, 7], power=2.0, floor=0.0)
    assert w == pytest.approx([0.0, 2 / 3, 1 / 3])
    assert D.label_weights({}, [4, 5], 1.0, 0.1) == pytest.approx([0.5, 0.5])


def test_the_store_draws_labels_by_difficulty_and_uniformly_without_it(cases):
    store = CaseStore(list_cases(cases))
    case = store.get(0)
    assert list(case.labels) == [1, 2, 3]
    # no difficulty: the same random stream as a uniform draw
    a, b = np.random.default_rng(5), np.random.default_rng(5)
    assert [store.draw_label(0, case, a) for _ in range(20)] == [int(case.labels[b.integers(3)]) for _ in range(20)]
    store.set_difficulty({store.paths[0].stem: {1: 0.95, 2: 0.05, 3: 0.5}}, power=1.0, floor=0.1)
    rng = np.random.default_rng(0)
    counts = np.bincount([store.draw_label(0, case, rng) for _ in range(4000)], minlength=4)[1:] / 4000
    assert counts == pytest.approx(np.array([0.15, 1.05, 0.6]) / 1.8, abs=0.03)
    other = store.get(1)  # a case the file does not score keeps the uniform draw
    counts = np.bincount([store.draw_label(1, other, rng) for _ in range(3000)], minlength=4)[1:] / 3000
    assert counts == pytest.approx([1 / 3] * 3, abs=0.04)


def test_the_difficulty_file_scores_every_structure_and_steers_training(cases, tmp_path, monkeypatch):
    ckpt = tmp_path / "tiny.pt"
    save_checkpoint(new_model("tiny", seed=2), ckpt)
    monkeypatch.setattr(D, "MAX_CLASSES_PER_RUN", 2)  # 3 classes: predicted in two groups
    out = tmp_path / "difficulty.json"
    assert D.main(["--checkpoint", str(ckpt), "--data", str(cases), "--out", str(out), "--no-progress"]) == 0
    scores = D.read_difficulty(out)
    assert set(scores) == {p.stem for p in list_cases(cases)}
    for per_label in scores.values():
        assert set(per_label) == {1, 2, 3} and all(0.0 <= v <= 1.0 for v in per_label.values())
    assert json.loads(out.read_text())["checkpoint"] == str(ckpt)

    cfg = C.TrainConfig(data=str(cases), out=str(tmp_path / "run"), profile="tiny", steps=2, batch_size=2,
                        progress=False, cache_dir="", threads=1, hard_examples=str(out), labelmaps="", pseudo="")
    train(cfg)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["hard_examples"] == str(out)
    with pytest.raises(ValueError, match="hard"):
        C.TrainConfig(hard_examples=str(out), hard_power=0.0, hard_floor=0.0).validate()
    with pytest.raises(ValueError, match="not a difficulty file"):
        (tmp_path / "bad.json").write_text("[]")
        D.read_difficulty(tmp_path / "bad.json")


def test_compare_tabulates_files_over_the_first_files_structures(tmp_path, capsys):
    def write(name, cases):
        path = tmp_path / name
        path.write_text(json.dumps({"checkpoint": name, "prompt": "box, one step", "cases": cases}))
        return str(path)

    before = write("before.json", {"CT_a": {"1": 0.1, "2": 0.2, "3": 0.8, "4": 0.9}, "MR_b": {"7": 0.5}})
    after = write("after.json", {"CT_a": {"1": 0.3, "2": 0.4, "3": 0.8, "4": 0.9}})  # MR_b not scored
    assert D.main(["--compare", before, after]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "group | before.json | after.json"
    assert lines[1] == "CT (n=4) | 0.500 (50% < 0.3) | 0.600 (0% < 0.3)"
    assert lines[2] == "MR (n=1) | 0.500 (0% < 0.3) | -"
    assert lines[3] == "all (n=5) | 0.500 (40% < 0.3) | 0.600 (0% < 0.3)"
    # quartile of [0.1, 0.2, 0.5, 0.8, 0.9] is 0.2: labels 1 and 2 moved from 0.15 to 0.35 on average
    assert lines[4] == "hardest quarter of the first (Dice <= 0.200, n=2) | 0.150 | 0.350"
    with pytest.raises(SystemExit):
        D.main(["--data", "x"])  # --out missing


def test_the_size_power_draws_labels_by_their_voxel_count_and_combines_with_difficulty(cases):
    store = CaseStore(list_cases(cases))
    case = store.get(0)
    sizes = np.bincount(np.asarray(case.gts).ravel(), minlength=4)[1:].astype(float)
    store.set_size_power(0.5)
    expected = np.sqrt(sizes) / np.sqrt(sizes).sum()
    assert store.label_probs(0, case) == pytest.approx(expected)
    rng = np.random.default_rng(1)
    counts = np.bincount([store.draw_label(0, case, rng) for _ in range(4000)], minlength=4)[1:] / 4000
    assert counts == pytest.approx(expected, abs=0.03)
    store.set_difficulty({store.paths[0].stem: {1: 0.95, 2: 0.05, 3: 0.5}}, power=1.0, floor=0.1)
    both = np.sqrt(sizes) * np.array([0.15, 1.05, 0.6])
    assert store.label_probs(0, case) == pytest.approx(both / both.sum())
    store.set_size_power(0.0)  # back to the difficulty weights alone
    assert store.label_probs(0, case) == pytest.approx(np.array([0.15, 1.05, 0.6]) / 1.8)
    with pytest.raises(ValueError):
        store.set_size_power(-1.0)


def test_the_click_prompt_scores_the_no_box_first_step_and_records_sizes(cases, tmp_path, capsys):
    from evaluation.harness import Case

    ckpt = tmp_path / "tiny.pt"
    save_checkpoint(new_model("tiny", seed=2), ckpt)
    path = list_cases(cases)[0]
    with np.load(path) as npz:
        case = Case(path.name, npz["imgs"], npz["gts"], npz["spacing"], [1, 2, 3])
    data = D.first_step_input(case, "click")
    assert "boxes" not in data and not data["prev_pred"].any()
    for c, label in enumerate(case.labels):  # one foreground click inside each structure, as the no-box mode's first
        (z, y, x), = data["clicks"][c]["fg"]
        assert case.gts[z, y, x] == label and data["clicks"][c]["bg"] == [] and data["clicks_order"][c] == ["fg"]
    assert "boxes" in D.first_step_input(case, "box")
    with pytest.raises(ValueError):
        D.first_step_input(case, "lasso")
    out = tmp_path / "click.json"
    assert D.main(["--checkpoint", str(ckpt), "--data", str(cases), "--out", str(out), "--prompt", "click",
                   "--no-progress"]) == 0
    written = json.loads(out.read_text())
    assert written["prompt"].startswith("one click")
    sizes = written["voxels"][path.stem]
    assert sizes == {str(k): int((case.gts == k).sum()) for k in (1, 2, 3)}
    capsys.readouterr()
    assert D.main(["--compare", str(out), str(out)]) == 0
    rows = capsys.readouterr().out.splitlines()
    assert sum("voxels (n=" in r for r in rows) >= 1
    assert sum(int(r.split("(n=")[1].split(")")[0]) for r in rows if "voxels (n=" in r) == 6  # 2 cases x 3
