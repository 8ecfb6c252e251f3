"""The resolution ceiling (evaluation/ceiling.py): what the window's grid alone costs a structure."""
import numpy as np

from evaluation.ceiling import case_ceiling, main, round_trip


def test_a_small_blob_survives_and_a_thin_plate_in_a_zoomed_window_does_not():
    gts = np.zeros((40, 120, 120), np.uint8)
    gts[15:25, 10:20, 10:20] = 1                     # fits the 16^3 patch: zoom 1, the grid is the volume's
    gts[20, 30:110, 30:110] = 2                      # one voxel thick, 80 long: zoom > 5, lost in the window
    rows = {r["label"]: r for r in case_ceiling(gts, (16, 16, 16))}
    assert rows[1]["zoom"] == 1.0 and rows[1]["ceiling"] == 1.0
    assert rows[2]["zoom"] > 5 and rows[2]["ceiling"] < 0.5 and rows[2]["thickness"] <= 2


def test_round_trip_keeps_shape_and_cli_prints_groups(tmp_path, capsys):
    gts = np.zeros((20, 30, 30), np.uint8)
    gts[5:15, 5:25, 5:25] = 1
    back, zoom = round_trip(gts == 1, (8, 8, 8))
    assert back.shape == gts.shape and back.dtype == bool and zoom > 1
    np.savez(tmp_path / "c.npz", gts=gts, imgs=np.zeros_like(gts))
    main([str(tmp_path / "c.npz"), "--patch", "8", "--list", "1"])
    out = capsys.readouterr().out
    assert "| c | thick | 1 |" in out and "label 1:" in out
