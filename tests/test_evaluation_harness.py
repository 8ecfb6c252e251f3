"""Full-run tests of the step loop with scripted predictors, in process and as a subprocess."""

import json
import sys
import textwrap
import types

import numpy as np
import pytest

from evaluation import harness
from evaluation.__main__ import main
from evaluation.baselines import box_fill, empty, make_baseline
from evaluation.harness import InProcessPredictor, SubprocessPredictor, evaluate_case, evaluate_folder, run_case
from evaluation.report import ORGANIZER_COLUMNS, read_csv

SHAPE = (6, 16, 16)
C1 = (slice(1, 5), slice(2, 6), slice(2, 6))  # class 1: 4x4x4 cube
C2 = (slice(2, 4), slice(10, 12), slice(10, 12))  # class 2: 2x2x2 cube
# organizer clicks on a fully missed cube: ties among the central voxels, pick 6 of 8 = (1, 1, 0)
CLICK1, CLICK2 = [3, 4, 3], [3, 11, 10]


def ground_truth():
    gts = np.zeros(SHAPE, dtype=np.uint8)
    gts[C1] = 1
    gts[C2] = 2
    return gts


def only_class1():
    segs = np.zeros(SHAPE, dtype=np.uint8)
    segs[C1] = 1
    return segs


@pytest.fixture
def case_file(tmp_path):
    path = tmp_path / "cases" / "CT_toy_0001.npz"
    path.parent.mkdir()
    imgs = np.arange(np.prod(SHAPE), dtype=np.uint8).reshape(SHAPE)
    np.savez_compressed(path, imgs=imgs, gts=ground_truth(), spacing=np.array([1.0, 1.0, 1.0]))
    return path


class Scripted:
    """In-process predictor returning scripted outputs and recording what it was given."""

    def __init__(self, outputs):
        self.outputs = list(outputs)
        self.seen = []

    def __call__(self, data):
        self.seen.append({key: (value.copy() if isinstance(value, np.ndarray) else value) for key, value in data.items()})
        return self.outputs[len(self.seen) - 1]


def test_full_six_step_run_with_scripted_predictor(case_file, tmp_path):
    gts = ground_truth()
    outputs = [np.zeros(SHAPE, np.uint8), only_class1(), gts.copy(), gts.copy(), None, np.zeros((2, 2, 2), np.uint8)]
    script = Scripted(outputs)
    predictor = InProcessPredictor(script, name="scripted")
    row = evaluate_case(case_file, predictor, out_dir=tmp_path / "details")

    assert list(row)[: len(ORGANIZER_COLUMNS)] == ORGANIZER_COLUMNS
    assert [row[f"DSC_{k}"] for k in range(1, 7)] == [0.0, 0.5, 1.0, 1.0, 1.0, 0.0]
    assert [row[f"NSD_{k}"] for k in range(1, 7)] == [0.0, 0.5, 1.0, 1.0, 1.0, 0.0]
    assert row["DSC_AUC"] == pytest.approx(3.25) and row["NSD_AUC"] == pytest.approx(3.25)
    assert row["DSC_Final"] == 0.0 and row["NSD_Final"] == 0.0
    assert row["num_class"] == 2 and row["runtime_upperbound"] == 180
    assert row["TotalRunningTime"] == pytest.approx(sum(row[f"RunningTime_{k}"] for k in range(1, 7)))
    # step 5 wrote nothing (previous output kept, as the organizer's folder would), step 6 bad shape
    assert "step 5" in row["OutputProblems"] and "step 6: wrong output shape" in row["OutputProblems"]

    seen = script.seen
    assert len(seen) == 6
    assert list(seen[0]) == ["imgs", "spacing", "boxes"]
    for step in seen[1:]:
        assert list(step) == ["imgs", "spacing", "clicks", "clicks_order", "prev_pred", "boxes"]
    assert [int(b["z_min"]) for b in seen[0]["boxes"]] == [1, 2]
    # prev_pred is the previous output (step 6 gets the kept output of step 4), uint8
    for k, expected in [(1, outputs[0]), (2, outputs[1]), (3, gts), (4, gts), (5, gts)]:
        assert seen[k]["prev_pred"].dtype == np.uint8
        np.testing.assert_array_equal(seen[k]["prev_pred"], expected)
    # clicks accumulate; each step's view is a snapshot
    assert seen[1]["clicks"] == [{"fg": [CLICK1], "bg": []}, {"fg": [CLICK2], "bg": []}]
    assert seen[1]["clicks_order"] == [["fg"], ["fg"]]
    assert seen[2]["clicks"] == [{"fg": [CLICK1], "bg": []}, {"fg": [CLICK2, CLICK2], "bg": []}]
    assert seen[5]["clicks_order"] == [["fg", None, None, None, None], ["fg", "fg", None, None, None]]

    details = json.loads((tmp_path / "details" / "CT_toy_0001.json").read_text())
    assert details["clicks_order"] == seen[5]["clicks_order"]
    assert details["steps"][1]["dsc_per_class"] == {"1": 1.0, "2": 0.0}
    assert details["steps"][1]["clicks_added"][1] == {"label": 2, "zyx": CLICK2, "kind": "fg"}


def test_run_without_box_skips_step_one(case_file):
    gts = ground_truth()
    script = Scripted([gts] * 5)
    row = evaluate_case(case_file, script, use_boxes=False)
    assert len(script.seen) == 5
    assert list(script.seen[0]) == ["imgs", "spacing", "clicks", "clicks_order", "prev_pred"]
    assert not script.seen[0]["prev_pred"].any()
    assert script.seen[0]["clicks"] == [{"fg": [CLICK1], "bg": []}, {"fg": [CLICK2], "bg": []}]
    assert (row["RunningTime_1"], row["DSC_1"], row["NSD_1"]) == (0, 0, 0)
    assert row["DSC_AUC"] == pytest.approx(4.0) and row["BoxMode"] == "nobox"


def test_failing_predictor_counts_as_zeros_and_is_reported(case_file):
    def broken(data):
        raise RuntimeError("boom")

    row = evaluate_case(case_file, broken)
    assert row["DSC_Final"] == 0.0 and row["DSC_AUC"] == 0.0
    assert "predictor raised RuntimeError: boom" in row["OutputProblems"]


PREDICT_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    import numpy as np
    log_path, plan_path = sys.argv[1], sys.argv[2]
    inp, out = os.environ["INPUT_DIR"], os.environ["OUTPUT_DIR"]
    log = json.load(open(log_path)) if os.path.exists(log_path) else []
    step = len(log)
    files = sorted(os.listdir(inp))
    name = files[0]
    entry = {"files": files, "cwd": os.getcwd(), "outputs_before": sorted(os.listdir(out))}
    with np.load(os.path.join(inp, name), allow_pickle=True) as npz:
        entry["keys"] = list(npz.files)
        if "clicks_order" in npz.files:
            co = npz["clicks_order"]
            entry.update(co_kind=co.dtype.kind, co_shape=list(co.shape), co=co.tolist())
            entry["clicks"] = [{k: [[int(v) for v in c] for c in d[k]] for k in ("fg", "bg")} for d in npz["clicks"]]
            entry["prev_pred"] = [str(npz["prev_pred"].dtype), int(npz["prev_pred"].sum())]
        if "boxes" in npz.files:
            entry["box_kind"] = npz["boxes"].dtype.kind
            entry["box_value_type"] = type(npz["boxes"][0]["z_min"]).__name__
    log.append(entry)
    json.dump(log, open(log_path, "w"))
    with np.load(plan_path) as plan:
        action = str(plan["actions"][step])
        if action == "write":
            np.savez_compressed(os.path.join(out, name), segs=plan["out%d" % step])
        elif action == "garbage":
            open(os.path.join(out, name), "wb").write(b"not an npz file")
    """
)


def test_subprocess_predictor_replays_the_container_protocol(case_file, tmp_path):
    gts = ground_truth()
    work = tmp_path / "work"
    work.mkdir()
    script = work / "predict.py"
    script.write_text(PREDICT_SCRIPT)
    plan = tmp_path / "plan.npz"
    outs = [np.zeros(SHAPE, np.uint8), only_class1(), None, None, gts, gts]
    np.savez(
        plan, actions=np.array(["write", "write", "skip", "garbage", "write", "write"]),
        **{f"out{k}": o for k, o in enumerate(outs) if o is not None},
    )
    log = tmp_path / "log.json"
    predictor = SubprocessPredictor(f'"{sys.executable}" predict.py "{log}" "{plan}"', workdir=work, name="container", log_dir=tmp_path / "logs")
    try:
        row = evaluate_case(case_file, predictor)
    finally:
        predictor.close()

    assert [row[f"DSC_{k}"] for k in range(1, 7)] == [0.0, 0.5, 0.5, 0.0, 1.0, 1.0]
    assert row["DSC_AUC"] == pytest.approx(2.25) and row["NSD_AUC"] == pytest.approx(2.25)
    assert all(row[f"RunningTime_{k}"] > 0 for k in range(1, 7))
    assert "step 3: output not rewritten" in row["OutputProblems"]
    assert "step 4: unreadable output" in row["OutputProblems"]

    entries = json.loads(log.read_text())
    assert len(entries) == 6
    for entry in entries:
        assert entry["files"] == ["CT_toy_0001.npz"]  # one input file, rewritten in place
        assert entry["cwd"] == str(work.resolve())
        assert entry["box_kind"] == "O" and entry["box_value_type"] == "int64"
    assert entries[0]["keys"] == ["imgs", "spacing", "boxes"]
    assert entries[0]["outputs_before"] == [] and entries[1]["outputs_before"] == ["CT_toy_0001.npz"]
    for entry in entries[1:]:
        assert entry["keys"] == ["imgs", "spacing", "clicks", "clicks_order", "prev_pred", "boxes"]
    # clicks_order is saved as a 2D array: '<U2' while it holds no None, object after
    assert (entries[1]["co_kind"], entries[1]["co_shape"], entries[1]["co"]) == ("U", [2, 1], [["fg"], ["fg"]])
    assert (entries[2]["co_kind"], entries[2]["co_shape"]) == ("O", [2, 2])
    assert entries[5]["co"] == [["fg", None, None, "fg", None], ["fg", "fg", "fg", "fg", None]]
    # prev_pred: previous output; the kept file at step 4; zeros for the unreadable one
    assert [e["prev_pred"] for e in entries[1:]] == [["uint8", 0], ["uint8", 64], ["uint8", 64], ["uint8", 0], ["uint8", 80]]
    assert entries[5]["clicks"] == [{"fg": [CLICK1, CLICK1], "bg": []}, {"fg": [CLICK2] * 4, "bg": []}]
    assert (tmp_path / "logs" / "CT_toy_0001.log").exists()


def test_baselines_follow_the_contract():
    gts = ground_truth()
    data = {"imgs": np.zeros(SHAPE, np.uint8), "spacing": np.ones(3), "boxes": [
        {"z_min": 1, "z_max": 4, "z_mid": 2, "z_mid_x_min": 2, "z_mid_y_min": 2, "z_mid_x_max": 5, "z_mid_y_max": 5},
        {"z_min": 2, "z_max": 3, "z_mid": 2, "z_mid_x_min": 10, "z_mid_y_min": 10, "z_mid_x_max": 11, "z_mid_y_max": 11},
    ]}
    np.testing.assert_array_equal(box_fill(data), gts)
    assert not empty(data).any() and empty(data).shape == SHAPE
    data.update(
        clicks=np.array([{"fg": [], "bg": [[3, 4, 3]]}, {"fg": [[0, 14, 14]], "bg": []}], dtype=object),
        clicks_order=np.array([["bg"], ["fg"]]),  # as loaded from an npz
    )
    segs = box_fill(data, radius=1)
    assert segs[3, 4, 3] == 0 and segs[3, 4, 2] == 0 and segs[2, 4, 3] == 0 and segs[1, 2, 2] == 1
    assert segs[0, 14, 14] == 2 and segs[1, 14, 14] == 2 and segs[0, 15, 14] == 2 and segs[1, 15, 15] == 0


def test_folder_evaluation_reports_and_survives_bad_cases(case_file, tmp_path):
    cases = case_file.parent
    (cases / "MR_broken_0002.npz").write_bytes(b"garbage")
    np.savez_compressed(cases / "US_nogts_0003.npz", imgs=np.zeros(SHAPE, np.uint8), spacing=np.ones(3))
    np.savez_compressed(cases / "MR_other_0004.npz", imgs=np.zeros(SHAPE, np.uint8), gts=ground_truth() * 3, spacing=np.ones(3))
    out = tmp_path / "out"
    rows = evaluate_folder(cases, out, [make_baseline("boxfill"), make_baseline("empty")], ("box", "nobox"), progress=False)
    assert len(rows) == 2 * 2 * 2  # 2 good cases x 2 predictors x 2 modes
    boxfill = {(r["CaseName"], r["BoxMode"]): r for r in rows if r["Predictor"] == "boxfill"}
    assert boxfill[("CT_toy_0001.npz", "box")]["DSC_1"] == 1.0  # boxes are exact for cubes
    assert boxfill[("MR_other_0004.npz", "box")]["DSC_1"] == 1.0  # labels 3, 6 relabelled to 1, 2
    assert all(r["DSC_Final"] == 0 for r in rows if r["Predictor"] == "empty")

    header = (out / "metrics.csv").read_text().splitlines()[0].split(",")
    assert header[: len(ORGANIZER_COLUMNS)] == ORGANIZER_COLUMNS
    assert header[len(ORGANIZER_COLUMNS):] == ["Predictor", "BoxMode", "TimeOverBudget", "OutputProblems"]
    run_rows = read_csv(out / "boxfill_nobox_metrics.csv")
    assert list(run_rows[0]) == ORGANIZER_COLUMNS and len(run_rows) == 2
    summary = (out / "summary.md").read_text()
    assert "| boxfill | nobox | CT | 1 |" in summary and "| empty | box | all | 2 |" in summary
    assert "MR_broken_0002.npz" in summary and "US_nogts_0003.npz" in summary
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "cases" / "boxfill_nobox" / "MR_other_0004.json").exists()


def test_cli_with_baselines_and_inprocess_model(case_file, tmp_path, monkeypatch, capsys):
    gts = ground_truth()

    class FakeModel:
        def predict(self, data, name="case"):
            assert name == "CT_toy_0001.npz"
            return gts

    fake = types.ModuleType("inference.predictor")
    fake.load_predictor = lambda checkpoint_path=None: FakeModel()
    monkeypatch.setitem(sys.modules, "inference", types.ModuleType("inference"))
    monkeypatch.setitem(sys.modules, "inference.predictor", fake)
    out = tmp_path / "cli"
    checkpoint = tmp_path / "model.pt"
    checkpoint.write_bytes(b"")
    args = ["--cases", str(case_file.parent), "--out", str(out), "--inprocess", "--baselines", "--no-progress"]
    with pytest.raises(SystemExit, match="no checkpoint"):
        main(args + ["--checkpoint", str(tmp_path / "missing.pt")])
    code = main(args + ["--checkpoint", str(checkpoint)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "| model | box | CT | 1 |" in printed and "boxfill" in printed and "empty" in printed
    rows = read_csv(out / "metrics.csv")
    model = [r for r in rows if r["Predictor"] == "model"][0]
    assert float(model["DSC_AUC"]) == 4.0 and float(model["NSD_Final"]) == 1.0
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0


def test_cli_reports_missing_cases(tmp_path):
    assert main(["--cases", str(tmp_path), "--out", str(tmp_path / "o"), "--predictors", "empty", "--no-progress"]) == 1


def test_physical_spacing_changes_only_nsd(case_file, tmp_path):
    gts = ground_truth()
    shifted = np.roll(gts, 1, axis=0)
    np.savez_compressed(case_file, imgs=np.zeros(SHAPE, np.uint8), gts=gts, spacing=np.array([1.0, 1.0, 3.0]))
    organizer = run_case(case_file, lambda data: shifted).row
    physical = run_case(case_file, lambda data: shifted, physical_spacing=True).row
    assert organizer["DSC_1"] == physical["DSC_1"]
    assert organizer["NSD_1"] == 1.0 > physical["NSD_1"]
    assert harness.load_case(case_file).labels == [1, 2]


def test_click_response_table_pools_dice_changes_per_click_kind(case_file, tmp_path):
    from evaluation.compare import click_changes, clicks_table

    gts = ground_truth()
    over = gts.copy()
    over[0, 8:16, 0:8] = 1  # class 1 spills over 64 voxels of slice 0: the organizer's next click there is bg
    outputs = [only_class1(), over, gts.copy(), gts.copy(), gts.copy(), gts.copy()]
    folder = tmp_path / "out" / "cases" / "scripted_box"
    evaluate_case(case_file, InProcessPredictor(Scripted(outputs), name="scripted"), out_dir=folder)
    details = json.loads((folder / "CT_toy_0001.json").read_text())
    changes = click_changes(details)
    # step 2: class 2 got its fg click and was found (0 -> 1); step 3: class 1's bg click, spill gone (2/3 -> 1)
    assert changes["fg"] == [pytest.approx(1.0)]
    assert changes["bg"] == [pytest.approx(1.0 - 2 * 64 / (128 + 64))]
    assert click_changes({"case": "CT_failed.npz", "problems": ["no output"]}) == {"fg": [], "bg": []}
    table = clicks_table(tmp_path / "out")
    assert "| scripted | box | 1 | +1.0000 | 0.00 | 1 | +0.3333 | 0.00 |" in table


def test_paired_comparison_reads_the_harness_json(case_file, tmp_path):
    from evaluation.paired import main, paired_scores, per_structure

    gts = ground_truth()
    for name, outputs in (("a", [only_class1()] * 6), ("b", [only_class1()] + [gts.copy()] * 5)):
        for mode in ("box", "nobox"):
            folder = tmp_path / name / "cases" / f"scripted_{mode}"
            evaluate_case(case_file, InProcessPredictor(Scripted(list(outputs)), name="scripted"),
                          use_boxes=mode == "box", out_dir=folder)
    details = json.loads((tmp_path / "b" / "cases" / "scripted_box" / "CT_toy_0001.json").read_text())
    finals = per_structure(details)
    assert finals == {"1": pytest.approx(1.0), "2": pytest.approx(1.0)}
    assert np.mean(list(finals.values())) == pytest.approx(details["steps"][-1]["dsc"])  # the case's DSC
    paired = paired_scores(tmp_path / "a", tmp_path / "b", "scripted")
    a, b = paired["CT_toy_0001"]["box"]
    assert list(a) == [pytest.approx(1.0), pytest.approx(0.0)] and list(b) == [pytest.approx(1.0)] * 2
    assert main([str(tmp_path / "a"), str(tmp_path / "b"), "--setting", "scripted", "--resamples", "50"]) == 0
