"""inference/graphcut.py: the mask's surface snapped to the image's edges by a contrast-sensitive graph cut."""
import dataclasses
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from inference.graphcut import GraphCutConfig, native_cut, refine_by_cut
from inference.predictor import DEFAULT_GRAPHCUT
from inference.settings import predictor_options
from inference.window import Window


def _dice(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(2 * (a & b).sum() / (a.sum() + b.sum()))


def _sphere(n: int = 32, r: float = 8.0, grow: float = 3.0):
    """A bright sphere of radius r in noise (z, y, x) and soft probabilities of a sphere `grow` voxels larger."""
    g = torch.stack(torch.meshgrid(*(torch.arange(n, dtype=torch.float32),) * 3, indexing="ij"))
    dist = ((g - n / 2) ** 2).sum(0).sqrt()
    gen = torch.Generator().manual_seed(0)
    image = (dist <= r).float() + 0.2 * torch.randn((n, n, n), generator=gen)
    probs = torch.sigmoid((r + grow - dist) / 2)
    return image, probs, dist <= r


def test_a_too_large_mask_snaps_to_the_edge():
    image, probs, sphere = _sphere()
    before = _dice(probs > 0.5, sphere)
    out = refine_by_cut(probs, image, GraphCutConfig(weight=3.0, min_agreement=0.0))
    assert before < 0.8 and _dice(out > 0.5, sphere) > 0.95
    moved = (out > 0.5) != (probs > 0.5)
    assert torch.allclose(out[moved], torch.full_like(out[moved], 0.45))  # 0.5 - margin
    assert torch.equal(out[~moved], probs[~moved])


def test_weight_zero_keeps_the_network_mask():
    image, probs, _ = _sphere(grow=3.5)  # no voxel at exactly p = 0.5, where either side costs the same
    out = refine_by_cut(probs, image, GraphCutConfig(weight=0.0))
    assert torch.equal(out > 0.5, probs > 0.5)


def test_a_flat_image_only_smooths():
    _, probs, _ = _sphere(grow=0.0)
    out = refine_by_cut(probs, torch.zeros_like(probs), GraphCutConfig(weight=0.2, min_agreement=0.0))
    assert _dice(out > 0.5, probs > 0.5) > 0.97


def test_a_cut_that_erases_most_of_the_mask_is_dropped():
    image, probs, _ = _sphere(r=2.0, grow=0.5)  # a tiny object that smoothing alone would erase
    flat = torch.zeros_like(image)
    assert (refine_by_cut(probs, flat, GraphCutConfig(weight=5.0, min_agreement=0.0)) > 0.5).sum() < (probs > 0.5).sum() / 2
    assert torch.equal(refine_by_cut(probs, flat, GraphCutConfig(weight=5.0, min_agreement=0.8)), probs)


def test_voxels_outside_the_volume_keep_their_probabilities():
    image, probs, _ = _sphere()
    valid = torch.zeros_like(probs, dtype=torch.bool)
    valid[:, :, :16] = True
    out = refine_by_cut(probs, image, GraphCutConfig(weight=3.0, min_agreement=0.0), valid)
    assert torch.equal(out[:, :, 16:], probs[:, :, 16:])
    assert not torch.equal(out[:, :, :16], probs[:, :, :16])


def test_settings_name_turns_it_on_with_overrides():
    assert predictor_options("coarse")["graphcut"] is None
    assert predictor_options("coarse+cut")["graphcut"] == DEFAULT_GRAPHCUT
    cfg = predictor_options("coarse+full+cut.weight=2.5")["graphcut"]
    assert cfg == dataclasses.replace(DEFAULT_GRAPHCUT, weight=2.5)


def test_a_zoomed_window_is_cut_at_the_volume_resolution():
    n = 48
    g = np.stack(np.meshgrid(*(np.arange(n, dtype=np.float32),) * 3, indexing="ij"))
    sphere = ((g - 20) ** 2).sum(0) <= 10 ** 2
    image = sphere.astype(np.float32) + np.random.default_rng(0).normal(0, 0.2, sphere.shape).astype(np.float32)
    window = Window.around((8, 8, 8), (32, 32, 32), (16, 16, 16), image.shape)  # about 2x zoomed out
    assert window.patch != window.size
    pz = torch.stack(torch.meshgrid(*(torch.arange(16, dtype=torch.float32),) * 3, indexing="ij"))
    centre = torch.tensor(window.to_patch(np.array([[20, 20, 20]]))[0], dtype=torch.float32)
    probs = torch.sigmoid(6.5 - ((pz - centre[:, None, None, None]) ** 2).sum(0).sqrt())  # 13 voxels: too large
    out = native_cut(window, probs, image, GraphCutConfig(weight=3.0, min_agreement=0.0))
    assert out is not None
    native, values = out
    assert native.patch == native.size and values.shape == native.size
    full = np.zeros(image.shape, bool)
    for region, v in native.paste(values):
        full[region] = v > 0.5
    coarse = np.zeros(image.shape, bool)
    for region, v in window.paste(probs):
        coarse[region] = v > 0.5
    assert _dice(torch.from_numpy(coarse), torch.from_numpy(sphere)) < 0.8
    assert _dice(torch.from_numpy(full), torch.from_numpy(sphere)) > 0.95
    assert native_cut(window, probs, image, GraphCutConfig(max_voxels=1000)) is None


def test_click_seeds_hold_their_side_of_the_cut():
    image, probs, _ = _sphere(r=2.0, grow=0.5)
    flat = torch.zeros_like(image)
    cfg = GraphCutConfig(weight=5.0, min_agreement=0.0, seeds=True)
    inside = torch.zeros_like(probs, dtype=torch.bool)
    inside[16, 16, 16] = True
    outside = torch.zeros_like(inside)
    outside[16, 16, 17] = True
    assert not (refine_by_cut(probs, flat, dataclasses.replace(cfg, seeds=False), None, inside, outside) > 0.5).any()
    out = refine_by_cut(probs, flat, cfg, None, inside, outside) > 0.5
    assert out[16, 16, 16] and not out[16, 16, 17]


def test_the_default_path_runs_without_pymaxflow():
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'maxflow': raise ImportError('blocked')\n"
        "sys.meta_path.insert(0, Block())\n"
        "from inference.network import new_model\n"
        "from inference.predictor import DEFAULT_GRAPHCUT, Predictor\n"
        "Predictor(new_model('tiny'), 'cpu')\n"
        "try:\n"
        "    Predictor(new_model('tiny'), 'cpu', graphcut=DEFAULT_GRAPHCUT)\n"
        "except ImportError as exc:\n"
        "    print('refused:', exc)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[1], capture_output=True,
                         text=True)
    assert res.returncode == 0, res.stderr
    assert "refused: the graph-cut step needs PyMaxflow" in res.stdout
