"""training.ledger: the cross-session held-out curve is read from the ledger CSV and drawn."""
from pathlib import Path

from training.ledger import main, read_ledger

HEADER = "model,steps,step_hours,shipped,CT_box,CT_nobox,brain_box,brain_nobox,lesions_box,lesions_nobox"


def test_ledger_rows_are_sorted_by_hours_and_the_recorded_mean_wins(tmp_path: Path) -> None:
    path = tmp_path / "ledger.csv"
    path.write_text(HEADER + ",mean_box,mean_nobox\n"
                    "later,200,2.5,no,0.6,0.5,0.6,0.5,0.6,0.5,,\n"
                    "first,100,1.0,yes,0.3,0.2,0.4,0.3,0.5,0.4,0.4123,0.3\n")
    rows = read_ledger(path)
    assert [r["model"] for r in rows] == ["first", "later"]
    assert rows[0]["shipped"] and not rows[1]["shipped"]
    assert rows[0]["mean_box"] == 0.4123  # the harness's unrounded mean, not (0.3 + 0.4 + 0.5) / 3
    assert abs(rows[1]["mean_nobox"] - 0.5) < 1e-9  # no recorded mean: the mean of the volumes
    out = tmp_path / "curve.png"
    assert main(["--ledger", str(path), "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_committed_ledger_reads() -> None:
    rows = read_ledger(Path(__file__).resolve().parents[1] / "docs" / "heldout_ledger.csv")
    assert rows and all(0.0 < r["mean_box"] < 1.0 and 0.0 < r["mean_nobox"] < 1.0 for r in rows)
