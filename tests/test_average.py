"""Averaging the weights of snapshots, and ensembles of models (training/average.py)."""
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
    assert "lineage" not in swa.meta
    assert main([str(p) for p in paths] + ["--out", str(tmp_path / "soup.pt"), "--lineage", "a, b and c"]) == 0
    assert load_model(tmp_path / "soup.pt").meta["lineage"] == "a, b and c"


def test_models_of_different_architectures_are_refused():
    with pytest.raises(ValueError, match="architecture"):
        average_models([new_model("tiny"), new_model("lite")])
    with pytest.raises(ValueError):
        average_models([])


def test_an_ensemble_averages_the_members_logits_and_runs_a_case(tmp_path):
    import numpy as np

    from inference.case_io import parse_case
    from inference.network import Ensemble, member_count
    from inference.predictor import Predictor

    a, b, c = (new_model("tiny", seed=s) for s in (1, 2, 3))
    paths = []
    for i, m in enumerate((a, b, c)):
        paths.append(tmp_path / f"model_{i}.pt")
        save_checkpoint(m, paths[-1], {"step": i})
    assert main([str(paths[0]), str(paths[1]), "--ensemble", "--out", str(tmp_path / "ab.pt")]) == 0
    # an ensemble given to --ensemble is flattened into its members
    assert main([str(tmp_path / "ab.pt"), str(paths[2]), "--ensemble", "--out", str(tmp_path / "abc.pt")]) == 0
    ens = load_model(tmp_path / "abc.pt")
    assert isinstance(ens.net, Ensemble) and member_count(ens.net) == 3 and member_count(a.net) == 1
    assert ens.meta["ensemble_of"] == [str(tmp_path / "ab.pt"), str(paths[2])]
    x = torch.randn(2, 8, *ens.patch_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = (a.net(x) + b.net(x) + c.net(x)) / 3
        torch.testing.assert_close(ens.net(x), want, rtol=1e-5, atol=1e-6)

    rng = np.random.default_rng(0)
    data = {"imgs": rng.integers(0, 255, (20, 40, 40), dtype=np.uint8), "spacing": np.ones(3),
            "boxes": [{"z_min": 2, "z_max": 8, "z_mid": 5, "z_mid_x_min": 5, "z_mid_y_min": 4, "z_mid_x_max": 10,
                       "z_mid_y_max": 12}]}
    segs = Predictor(ens, "cpu", max_zoom_outs=0).predict_case(parse_case(data, "CT_test.npz"))
    assert segs.shape == (20, 40, 40) and set(np.unique(segs)) <= {0, 1}


def test_an_ensemble_is_not_trained_and_needs_one_architecture(tmp_path):
    from training import config as C
    from training.average import ensemble_models
    from training.train import initial_model

    with pytest.raises(ValueError, match="architecture"):
        ensemble_models([new_model("tiny"), new_model("lite")])
    with pytest.raises(ValueError, match="two"):
        ensemble_models([new_model("tiny")])
    save_checkpoint(ensemble_models([new_model("tiny", seed=1), new_model("tiny", seed=2)]), tmp_path / "e.pt")
    with pytest.raises(ValueError, match="ensemble of 2"):
        initial_model(C.TrainConfig(init=str(tmp_path / "e.pt")))


def test_an_ensemble_is_not_grown():
    from training.average import ensemble_models
    from training.grow import grow

    with pytest.raises(ValueError, match="ensemble of 2"):
        grow(ensemble_models([new_model("tiny", seed=1), new_model("tiny", seed=2)]), "tiny")


@pytest.mark.parametrize("half", ["float16", "bfloat16"])
def test_half_storage_halves_the_file_and_loads_as_float32(tmp_path, half):
    model = new_model("lite", seed=4)  # big enough that the weights, not the pickle's keys, set the size
    full, small = tmp_path / "full.pt", tmp_path / "half.pt"
    save_checkpoint(model, full)
    assert main([str(full), "--half", half, "--out", str(small)]) == 0
    stored = torch.load(small, weights_only=True)
    floats = [v for v in stored["state_dict"].values() if v.is_floating_point()]
    assert floats and all(v.dtype == getattr(torch, half) for v in floats)
    # the decoder's copy of each encoder weight stays one stored tensor: the file is about half, not the same
    assert small.stat().st_size < 0.6 * full.stat().st_size
    loaded = load_model(small)
    assert loaded.meta["weights_dtype"] == half
    for k, v in model.net.state_dict().items():
        got = loaded.net.state_dict()[k]
        assert got.dtype == v.dtype
        if v.is_floating_point():
            torch.testing.assert_close(got, v, atol=0.02 * float(v.abs().max()) + 1e-6, rtol=0)
