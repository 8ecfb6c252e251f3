"""Profiles, self-describing checkpoints and nnInteractive v1.0 folder loading (inference/network.py)."""
import numpy as np
import pytest
import torch

from inference.network import (CHANNELS, FORMAT, PROFILES, build_network, count_parameters, load_model, new_model,
                               save_checkpoint, state_dict_to)
from inference.predictor import Predictor
from tests.nninteractive_format import write_nninteractive_folder


def test_nninteractive_profile_is_resenc_l_with_102_4m_parameters():
    prof = PROFILES["nninteractive"]
    assert prof.patch_size == (192, 192, 192)
    assert prof.arch["features_per_stage"] == [32, 64, 128, 256, 320, 320]
    assert prof.arch["n_blocks_per_stage"] == [1, 3, 4, 6, 6, 6]
    net = build_network(prof.arch)
    assert count_parameters(net) == 102_355_818
    assert net.encoder.stem.convs[0].conv.in_channels == 8 and net.decoder.seg_layers[-1].out_channels == 2


def test_native_checkpoint_describes_itself(tmp_path):
    m = new_model("tiny")
    save_checkpoint(m, tmp_path / "m.pt", {"note": "test"})
    raw = torch.load(tmp_path / "m.pt", weights_only=True)
    assert raw["format"] == FORMAT and raw["channels"] == CHANNELS and raw["normalization"] == "zscore"
    assert raw["patch_size"] == [16, 16, 16] and raw["arch"]["conv_op"] == "Conv3d"
    back = load_model(tmp_path / "m.pt")
    for k, v in m.net.state_dict().items():
        assert torch.equal(v, back.net.state_dict()[k])
    assert back.meta["note"] == "test" and not back.net.training


def test_state_dict_copies_keep_shared_weights_shared():
    # "meta" stands in for a GPU: .to() makes a new tensor per call there, as a GPU-to-CPU copy does
    sd = new_model("tiny").net.state_dict()
    shared = [k for k in sd if k.startswith("decoder.encoder.")]
    assert shared, "the ResEnc decoder holds its encoder: its weights appear twice in the state dict"
    moved = state_dict_to(sd, "meta")
    assert set(moved) == set(sd) and all(v.device.type == "meta" for v in moved.values())
    for k in shared:
        assert moved[k] is moved[k[len("decoder."):]]
    assert len({id(v) for v in moved.values()}) == len({v.untyped_storage().data_ptr() for v in sd.values()})


def test_checkpoint_with_unknown_layer_is_rejected(tmp_path):
    m = new_model("tiny")
    save_checkpoint(m, tmp_path / "m.pt")
    raw = torch.load(tmp_path / "m.pt", weights_only=True)
    raw["arch"]["nonlin"] = "os.system"
    torch.save(raw, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="unsupported layer"):
        load_model(tmp_path / "bad.pt")


def test_nninteractive_folder_gives_the_same_output_as_native(tmp_path):
    m = new_model("tiny", seed=3)
    save_checkpoint(m, tmp_path / "native.pt")
    folder = write_nninteractive_folder(tmp_path / "nnInteractive_v1.0", m.net.state_dict(), m.arch, m.patch_size,
                                        configuration="3d_fullres_ps16")
    a, b = load_model(tmp_path / "native.pt"), load_model(folder)
    assert b.patch_size == a.patch_size and b.meta["origin"] == "nnInteractive v1.0 folder"
    x = torch.randn(1, 8, 16, 16, 16)
    with torch.no_grad():
        assert torch.equal(a.net(x), b.net(x))
    # and through the whole predictor on a case
    rng = np.random.default_rng(0)
    data = {"imgs": rng.integers(0, 255, (10, 30, 30), dtype=np.uint8), "spacing": np.ones(3),
            "boxes": [{"z_min": 2, "z_max": 6, "z_mid": 4, "z_mid_x_min": 5, "z_mid_y_min": 5,
                       "z_mid_x_max": 20, "z_mid_y_max": 18}]}
    pa, pb = Predictor(a, "cpu"), Predictor(b, "cpu")
    assert np.array_equal(pa.predict(data), pb.predict(data))


def test_nninteractive_folder_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="plans.json"):
        load_model(tmp_path)
    m = new_model("tiny")
    folder = write_nninteractive_folder(tmp_path / "f", m.net.state_dict(), m.arch, m.patch_size)
    (folder / "fold_0" / "checkpoint_final.pth").rename(folder / "fold_0" / "other.pth")
    with pytest.raises(ValueError, match="fold_"):
        load_model(folder)
