"""Synthetic images from label maps, SynthSeg-style, on the patch grid (z, y, x), with cornucopia.

A label map becomes an image by (1) splitting the unlabelled voxels into a few smooth random regions (so
the background is not one flat tissue), (2) merging labels into random groups that share an intensity class
(neighbours sometimes look alike, as pancreas and duodenum do; the target keeps its own class with
probability `p_target_alone`), (3) a Gaussian mixture (one random mean and spread per class), then a random
bias field, gamma, simulated acquisition resolution (thick slices 1.5-6x along one axis), blur and noise.
Call inside `training.augment.seeded(seed)`: the result is then a pure function of the seed.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import torch

from .augment import IntensityOptions, appearance_chain, apply_appearance


@dataclass(frozen=True)
class SynthOptions:
    """Probabilities and ranges of the label-to-image synthesis."""

    p_background_split: float = 0.8
    background_classes: tuple[int, int] = (2, 6)
    p_group: float = 0.5
    p_target_alone: float = 0.85
    sigma_max: float = 0.08
    appearance: IntensityOptions = IntensityOptions(p_gamma=0.5, p_bias=0.6, p_noise=0.8, p_smooth=0.3, p_thick=0.4)


def smooth_regions(shape: tuple[int, int, int], classes: int, nodes: int = 5) -> np.ndarray:
    """A random partition of a (z, y, x) grid into `classes` smooth regions: the argmax of as many random
    fields of nodes^3 values upsampled trilinearly. (cornucopia's RandomSmoothLabelMap does the same with
    cubic splines and took 0.8 s per 64^3 on one core here, against about 10 ms for this.)"""
    coarse = torch.rand((1, classes, nodes, nodes, nodes))
    fields = torch.nn.functional.interpolate(coarse, size=tuple(int(v) for v in shape), mode="trilinear",
                                             align_corners=True)
    return np.argmax(fields[0].numpy(), axis=0)


def split_background(labels: np.ndarray, opts: SynthOptions) -> np.ndarray:
    """Unlabelled voxels (0) get new ids above the existing ones from a smooth random partition."""
    if random.random() >= opts.p_background_split or not (labels == 0).any():
        return labels
    regions = smooth_regions(labels.shape, random.randint(*opts.background_classes))
    out = labels.astype(np.int64, copy=True)
    bg = out == 0
    out[bg] = int(out.max()) + 1 + regions[bg]
    return out


def group_labels(labels: np.ndarray, target: int | None, opts: SynthOptions) -> np.ndarray:
    """Labels (non-negative ints) mapped to intensity classes 0..G: identity, or random groups (the target in a
    class of its own with probability `p_target_alone`)."""
    ids = np.flatnonzero(np.bincount(labels.ravel()))
    n = len(ids)
    lut = np.zeros(int(ids[-1]) + 1, dtype=np.int64)
    if n > 2 and random.random() < opts.p_group:
        groups = random.randint(max(2, n // 3), n)
        lut[ids] = [random.randrange(groups) for _ in range(n)]
        if target is not None and 0 <= target < len(lut) and random.random() < opts.p_target_alone:
            lut[target] = groups
    else:
        lut[ids] = np.arange(n)
    return lut[labels]


def paint(labels: np.ndarray, target: int | None = None, opts: SynthOptions = SynthOptions()) -> np.ndarray:
    """A synthetic float32 image (z, y, x) in about [0, 1] for the label map (z, y, x)."""
    import cornucopia as cc

    classes = group_labels(split_background(labels, opts), target, opts)
    gmm = cc.RandomGaussianMixtureTransform(mu=1.0, sigma=opts.sigma_max, fwhm=0)
    image = gmm(torch.from_numpy(classes)[None])[0].numpy().astype(np.float32)
    return apply_appearance(image, appearance_chain(opts.appearance))
