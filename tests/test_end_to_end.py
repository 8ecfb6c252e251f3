"""predict.sh end to end through the organizer's protocol (box step + 5 click steps), on a real volume.

The case is the committed sample CT (TotalSegmentator's small CT, 30x101x122, 41 structures) reduced to
four structures to keep the test quick; the model is a tiny checkpoint the test writes. The harness runs
`sh predict.sh` once per step with INPUT_DIR/OUTPUT_DIR, rewriting the input in place as the organizer does.
"""
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from evaluation.harness import SubprocessPredictor, run_case
from inference.network import new_model, save_checkpoint

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "samples" / "CT_TotalSegSmall_example.npz"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """What the image's /workspace holds: inference/, weights/default.pt (tiny), predict.sh."""
    ws = tmp_path_factory.mktemp("workspace")
    shutil.copytree(ROOT / "inference", ws / "inference", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "predict.sh", ws / "predict.sh")
    save_checkpoint(new_model("tiny", seed=1), ws / "weights" / "default.pt")
    return ws


@pytest.fixture(scope="module")
def real_case(tmp_path_factory):
    d = np.load(SAMPLE)
    keep = [1, 5, 17, 30]  # four structures of the real label map
    gts = np.where(np.isin(d["gts"], keep), d["gts"], 0)
    path = tmp_path_factory.mktemp("cases") / "CT_TotalSegSmall_four.npz"
    np.savez_compressed(path, imgs=d["imgs"], gts=gts, spacing=d["spacing"])
    return path


@pytest.mark.parametrize("use_boxes", [True, False])
def test_predict_sh_over_the_six_steps(workspace, real_case, tmp_path, use_boxes):
    runner = SubprocessPredictor("sh predict.sh", workspace, scratch_dir=tmp_path / "io", log_dir=tmp_path / "logs",
                                 env={"PYTHON": sys.executable})
    result = run_case(real_case, runner, use_boxes, keep_segs=True)
    runner.close()
    logs = "".join(p.read_text() for p in (tmp_path / "logs").glob("*.log"))
    assert result.row["OutputProblems"] == "", logs
    steps = result.details["steps"]
    ran = [s for s in steps if s["kind"] in ("box", "click")]
    assert len(ran) == (6 if use_boxes else 5)
    assert all(s["running_time"] > 0 for s in ran)
    # every run wrote a valid uint8 label map of the image's shape, with labels 0..4 only
    for segs in result.all_segs:
        assert segs.shape == (30, 101, 122) and segs.dtype == np.uint8 and segs.max() <= 4
    # the click steps received accumulated clicks and the previous output, as the organizer sends them
    clicks = result.details["clicks"]
    assert len(clicks) == 4
    n_clicks = sum(len(c["fg"]) + len(c["bg"]) for c in clicks)
    n_steps_with_click = sum(o is not None for row in result.details["clicks_order"] for o in row)
    assert n_clicks == n_steps_with_click >= 4
    assert "error" not in logs.lower()
    assert 0.0 <= result.row["DSC_Final"] <= 1.0
