"""inference/intensity.py: the network's probabilities moved by the object's own intensity statistics."""
import dataclasses

import torch

from inference.intensity import IntensityConfig, intensity_bins, refine_by_intensity
from inference.predictor import DEFAULT_INTENSITY
from inference.settings import predictor_options


def _dice(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(2 * (a & b).sum() / (a.sum() + b.sum()))


def _sphere_in_box(n: int = 32, r: float = 6.0):
    """A bright sphere (the object) in darker noise, and a box-shaped prediction around it (z, y, x)."""
    g = torch.stack(torch.meshgrid(*(torch.arange(n, dtype=torch.float32),) * 3, indexing="ij"))
    sphere = ((g - n / 2) ** 2).sum(0) <= r * r
    gen = torch.Generator().manual_seed(0)
    image = sphere.float() * 3 + 0.5 * torch.randn((n, n, n), generator=gen)
    probs = torch.full((n, n, n), 0.05)
    lo, hi = int(n / 2 - r - 2), int(n / 2 + r + 3)
    probs[lo:hi, lo:hi, lo:hi] = 0.9  # a painted box: the sphere and its corners
    return image, probs, sphere


def test_a_box_shaped_prediction_shrinks_to_the_bright_object_inside_it():
    image, probs, sphere = _sphere_in_box()
    before = _dice(probs > 0.5, sphere)
    after = _dice(refine_by_intensity(probs, image, IntensityConfig(strength=1.5)) > 0.5, sphere)
    assert before < 0.35 and after > 0.9


def test_an_object_that_looks_like_its_surroundings_is_left_alone():
    image, probs, _ = _sphere_in_box()
    gen = torch.Generator().manual_seed(1)
    image = torch.randn(image.shape, generator=gen)  # no contrast: the histograms differ only by noise
    assert torch.equal(refine_by_intensity(probs, image, IntensityConfig(min_share=0.1)), probs)


def test_a_uniform_image_changes_nothing():
    _, probs, _ = _sphere_in_box()
    image = torch.ones_like(probs)
    assert intensity_bins(image, 48) is None
    assert torch.equal(refine_by_intensity(probs, image, IntensityConfig()), probs)


def test_strength_zero_keeps_the_network_answer():
    image, probs, _ = _sphere_in_box()
    out = refine_by_intensity(probs, image, IntensityConfig(strength=0.0))
    assert torch.allclose(out, probs, atol=1e-4)


def test_settings_name_turns_it_on_with_overrides():
    assert predictor_options("coarse")["intensity"] == DEFAULT_INTENSITY
    assert predictor_options("coarse+nointensity")["intensity"] is None
    cfg = predictor_options("coarse+full+intensity.strength=0.25+intensity.rounds=3")["intensity"]
    assert cfg == dataclasses.replace(DEFAULT_INTENSITY, strength=0.25, rounds=3)


def test_inside_mask_marks_what_crop_does_not_fill():
    import numpy as np

    from inference.window import Window

    shape = (20, 30, 40)
    w = Window.around(np.array([0, 0, 0]), np.array([10, 10, 10]), (16, 16, 16), shape)
    inside = w.inside_mask(shape)
    assert 0 < float(inside.float().mean()) < 1  # the window reaches past the volume's corner
    assert torch.equal(w.crop(np.ones(shape, np.float32), fill=0) > 0, inside)


def test_filled_voxels_outside_the_volume_do_not_count():
    image, probs, sphere = _sphere_in_box()
    valid = torch.ones_like(sphere)
    valid[:, :, :6] = False
    image[:, :, :6] = 3.0  # a fill value as bright as the object, where `crop` writes outside the volume
    cfg = IntensityConfig(strength=1.5)
    assert _dice(refine_by_intensity(probs, image, cfg) > 0.5, sphere) < 0.5  # counted: it looks like surroundings
    out = refine_by_intensity(probs, image, cfg, valid)
    assert _dice(out > 0.5, sphere) > 0.9
    assert torch.equal(out[~valid], probs[~valid])


def test_ring_weights_the_surroundings_by_their_distance_from_the_mask():
    from inference.intensity import proximity

    image, probs, sphere = _sphere_in_box()
    near = proximity(probs, ring=4.0)
    assert float(near[probs > 0.5].min()) == 1.0 and float(near.min()) < 0.05
    out = refine_by_intensity(probs, image, IntensityConfig(strength=1.5, ring=4.0))
    assert _dice(out > 0.5, sphere) > 0.9
