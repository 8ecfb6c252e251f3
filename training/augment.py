"""Spatial and intensity augmentation of a training patch, with cornucopia (chosen by measured speed).

Library comparison (samples/s, one thread, 80^3 context -> 64^3 patch, `python docs/../notes` figures in
docs/training-data.md): cornucopia's affine+elastic at linear order was the fastest spatial transform with
elastic deformation, and its intensity pieces (Gaussian mixture, multiplicative field, gamma, thick slices,
noise) at low order are fast enough for on-the-fly synthesis; TorchIO's elastic deformation (SimpleITK
B-splines) and MONAI's 3D elastic (Gaussian-smoothed field) were 6-14x slower.

Every function takes the sample's RNG state through `seeded(seed)`: cornucopia draws from Python's
`random` and torch's global generator, so a sample is a pure function of its seed. Arrays are (z, y, x).
"""
from __future__ import annotations

import random
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

Triple = tuple[int, int, int]


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seed Python's and torch's global generators for the block, then restore both."""
    py_state = random.getstate()
    with torch.random.fork_rng(devices=[]):
        random.seed(int(seed))
        torch.manual_seed(int(seed))
        try:
            yield
        finally:
            random.setstate(py_state)


@dataclass(frozen=True)
class SpatialOptions:
    """Random affine + elastic deformation of the context, cropped to the patch at its centre."""

    rotation_deg: float = 15.0
    zoom: float = 0.3          # scale factor drawn in [1 - zoom, 1 + zoom] (0.7-1.3 by default) per axis
    elastic: float = 0.05      # maximal displacement of the control points, as a fraction of the field of view
    elastic_nodes: int = 5


def spatial(image: np.ndarray | None, labels: np.ndarray, point: np.ndarray | None, patch: Triple,
            opts: SpatialOptions) -> tuple[np.ndarray | None, np.ndarray, np.ndarray | None]:
    """One random deformation applied alike to the image (linear), the label map (nearest) and a point map
    (linear), all (z, y, x) on the context grid; returns the central `patch` of each. Call inside `seeded`."""
    import cornucopia as cc

    tr = cc.RandomAffineElasticTransform(
        dmax=opts.elastic, shape=opts.elastic_nodes, rotations=opts.rotation_deg, zooms=opts.zoom,
        translations=0, patch=list(patch), order=1, nearest_if_label=True, bound="zeros")
    tensors = [torch.from_numpy(np.ascontiguousarray(labels, dtype=np.int64))[None]]
    if image is not None:
        tensors.append(torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None])
    if point is not None:
        tensors.append(torch.from_numpy(np.ascontiguousarray(point, dtype=np.float32))[None])
    out = tr(*tensors)
    out = list(out) if isinstance(out, (tuple, list)) else [out]
    lab = out.pop(0)[0].numpy()
    img = out.pop(0)[0].numpy() if image is not None else None
    pts = out.pop(0)[0].numpy() if point is not None else None
    return img, lab, pts


@dataclass(frozen=True)
class IntensityOptions:
    """Appearance changes of a real image patch (probabilities per sample)."""

    p_gamma: float = 0.3
    p_bias: float = 0.3
    p_noise: float = 0.2
    p_smooth: float = 0.1
    p_thick: float = 0.15   # simulated thick slices along one axis


def appearance_chain(opts: IntensityOptions, p_scale: float = 1.0):
    """The cornucopia transforms drawn for one sample (in order): gamma, bias field, thick slices, smoothing,
    noise; each kept with its probability (times `p_scale`). Call inside `seeded`."""
    import cornucopia as cc

    chain = []
    if random.random() < opts.p_gamma * p_scale:
        chain.append(cc.RandomGammaTransform(gamma=(0.6, 1.7)))
    if random.random() < opts.p_bias * p_scale:
        chain.append(cc.RandomMulFieldTransform(shape=5, vmax=1.0, order=1))
    if random.random() < opts.p_thick * p_scale:
        chain.append(cc.RandomLowResSliceTransform(resolution=(1.5, 6.0), axis=random.randrange(3)))
    if random.random() < opts.p_smooth * p_scale:
        chain.append(cc.RandomSmoothTransform(fwhm=(0.5, 2.0)))
    if random.random() < opts.p_noise * p_scale:
        chain.append(cc.RandomGaussianNoiseTransform(sigma=(0.01, 0.08)))
    return chain


def apply_appearance(image: np.ndarray, chain) -> np.ndarray:
    """Run the chain on an image rescaled to [0, 1] (gamma needs a positive range), then map it back."""
    if not chain:
        return image
    lo, hi = float(image.min()), float(image.max())
    span = hi - lo if hi > lo else 1.0
    x = torch.from_numpy(((image - lo) / span).astype(np.float32))[None]
    for tr in chain:
        x = tr(x)
    return (x[0].numpy() * span + lo).astype(np.float32)


def intensity(image: np.ndarray, opts: IntensityOptions) -> np.ndarray:
    """Random appearance changes of a real image patch (z, y, x). Call inside `seeded`."""
    return apply_appearance(image, appearance_chain(opts))
