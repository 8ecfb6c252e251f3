"""Averaging the weights of snapshots (training/average.py)."""
import pytest
import torch

from inference.network import load_model, new_model, save_checkpoint
from training.average import average_models, main


def test_the_average_is_the_mean_of_the_weights(tmp_path):
    a, b, c = (new_model("tiny", seed=s) for s in (1, 2, 3))
    want = {k: (a.net.state_dict()[k] + b.net.state_dict()[k] + c.net.state_dict()[k]) / 3
            for k, v in a.net.state_dict().items() if v.is_floating_point()}
    paths = []
    for i, m in enumerate((a, b, c)):
        paths.append(tmp_path / f"model_{i}.pt")
        save_checkpoint(m, paths[-1], {"step": i})
    assert main([str(p) for p in paths] + ["--out", str(tmp_path / "swa.pt")]) == 0
    swa = load_model(tmp_path / "swa.pt")
    for k, v in want.items():
        torch.testing.assert_close(swa.net.state_dict()[k], v)
    assert swa.meta["averaged_from"] == [str(p) for p in paths] and swa.meta["step"] == 2


def test_models_of_different_architectures_are_refused():
    with pytest.raises(ValueError, match="architecture"):
        average_models([new_model("tiny"), new_model("lite")])
    with pytest.raises(ValueError):
        average_models([])
