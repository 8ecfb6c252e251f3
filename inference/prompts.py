"""Encode one class's prompts into the network's 8-channel input, in the patch grid.

Channels follow nnInteractive v1.0 (`network.CHANNELS`): 0 image (z-scored), 1 previous segmentation,
2 box+ and lasso+ (a filled 3D cuboid for the challenge's box; a filled rectangle one slice thick for a
viewer's 2D box; a filled contour on one slice for a lasso), 3 box- and lasso-, 4 click+, 5 click- (balls of radius
4 voxels drawn directly in the patch grid, so every click inside the window survives resizing),
6 scribble+, 7 scribble- (the scribble's voxels). All coordinates are (z, y, x).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import torch
from scipy import ndimage

from .network import CHANNELS, NUM_INPUT_CHANNELS
from .window import Window

CLICK_RADIUS = 4


@dataclass(frozen=True)
class ImageStats:
    """Intensity statistics for z-scoring, as nnInteractive: mean/std over the nonzero bounding box."""

    mean: float
    std: float


def image_stats(image: np.ndarray, max_samples: int = 2_000_000) -> ImageStats:
    """Mean and std of the image inside the bounding box of its nonzero voxels (strided for big volumes)."""
    step = max(1, int(round((image.size / max_samples) ** (1 / 3))))
    sub = image[::step, ::step, ::step]
    nz = np.nonzero(sub)
    if len(nz[0]):
        sub = sub[tuple(slice(a.min(), a.max() + 1) for a in nz)]
    sub = sub.astype(np.float64)
    std = float(sub.std())
    return ImageStats(float(sub.mean()), std if std > 1e-6 else 1.0)


@lru_cache(maxsize=4)
def ball(radius: int = CLICK_RADIUS) -> np.ndarray:
    """nnInteractive's soft click ball: EDT of a binary ball normalised to 1 at the centre, (2r+1)^3."""
    r = radius
    grid = np.mgrid[-r:r + 1, -r:r + 1, -r:r + 1]
    binary = (grid ** 2).sum(0) <= r * r
    dist = ndimage.distance_transform_edt(binary)
    return (dist / dist.max()).astype(np.float32)


def draw_ball(channel: torch.Tensor, centre, radius: int = CLICK_RADIUS) -> None:
    """Max-paste a click ball at a patch coordinate (z, y, x) into `channel` (in place), clipped at the edges."""
    b = torch.from_numpy(ball(radius))
    c = np.round(np.asarray(centre, float)).astype(int)
    shape = np.asarray(channel.shape)
    lo, hi = c - radius, c + radius + 1
    a, z = np.maximum(lo, 0), np.minimum(hi, shape)
    if (z <= a).any():
        return
    dst = tuple(slice(int(i), int(j)) for i, j in zip(a, z))
    src = tuple(slice(int(i - l), int(j - l)) for i, j, l in zip(a, z, lo))
    channel[dst] = torch.maximum(channel[dst], b[src])


def fill_box(channel: torch.Tensor, window: Window, lo, hi) -> None:
    """Fill the patch voxels covered by the inclusive volume box [lo, hi] (z, y, x) with 1 (nothing when the box
    lies outside the window, e.g. a refinement tile beside it)."""
    if not window.overlaps(lo, hi):
        return
    a, b = window.box_to_patch(lo, hi)
    channel[a[0]:b[0], a[1]:b[1], a[2]:b[2]] = 1.0


def no_voxels() -> np.ndarray:
    return np.zeros((0, 3), dtype=np.int64)


@dataclass
class ClassPrompts:
    """One class's prompts in volume coordinates (z, y, x).

    `box` is an inclusive (lo, hi) box: the challenge's 3D cuboid, or a viewer's 2D box (lo == hi on the axis
    it was drawn across). `fg`/`bg` are clicks (N, 3). Lassos (filled contours) and scribbles are given as
    the voxel coordinates (N, 3) they cover.
    """

    box: tuple[tuple[int, int, int], tuple[int, int, int]] | None
    fg: np.ndarray  # (N, 3)
    bg: np.ndarray  # (M, 3)
    lasso_fg: np.ndarray = field(default_factory=no_voxels)
    lasso_bg: np.ndarray = field(default_factory=no_voxels)
    scribble_fg: np.ndarray = field(default_factory=no_voxels)
    scribble_bg: np.ndarray = field(default_factory=no_voxels)

    def voxel_prompts(self) -> tuple[tuple[np.ndarray, str], ...]:
        """The voxel-set prompts with the channel each is written to."""
        return ((self.lasso_fg, "box_pos"), (self.lasso_bg, "box_neg"),
                (self.scribble_fg, "scribble_pos"), (self.scribble_bg, "scribble_neg"))

    def points(self) -> np.ndarray:
        """Every prompted voxel (clicks, lasso and scribble voxels), (N, 3) (z, y, x); the box is not included."""
        parts = [self.fg, self.bg] + [v for v, _ in self.voxel_prompts()]
        return np.concatenate([np.asarray(p, np.int64).reshape(-1, 3) for p in parts])


def splat(channel: torch.Tensor, window: Window, voxels: np.ndarray) -> None:
    """Set to 1 every patch voxel (of `channel`, z, y, x) that holds a centre of the volume voxels (N, 3)."""
    if not len(voxels):
        return
    p = np.round(window.to_patch(voxels)).astype(np.int64)
    keep = np.all((p >= 0) & (p < np.asarray(window.patch)), axis=1)
    p = p[keep]
    channel[torch.from_numpy(p[:, 0]), torch.from_numpy(p[:, 1]), torch.from_numpy(p[:, 2])] = 1.0


def encode(window: Window, image: np.ndarray, stats: ImageStats, prompts: ClassPrompts,
           prev_mask_source: np.ndarray | None = None, prev_label: int | None = None,
           prev_probs: np.ndarray | None = None, prev_origin=(0, 0, 0)) -> torch.Tensor:
    """The (8, pz, py, px) float32 network input for one class inside `window`.

    `prev_mask_source` is the previous segmentation volume (z, y, x); its voxels equal to
    `prev_label` (or nonzero when `prev_label` is None) form the previous-segmentation channel.
    `prev_probs`, when given, replaces it: a float map in [0, 1] (z, y, x) over the part of the volume that
    starts at index `prev_origin` (zero outside it), resampled trilinearly (e.g. a coarse prediction).
    """
    x = torch.zeros((NUM_INPUT_CHANNELS, *window.patch), dtype=torch.float32)
    img = window.crop(image, fill=stats.mean)
    x[CHANNELS["image"]] = (img - stats.mean) / stats.std
    if prev_probs is not None:
        x[CHANNELS["prev_seg"]] = window.offset(prev_origin, prev_probs.shape).crop(prev_probs, fill=0.0)
    elif prev_mask_source is not None:
        label = prev_label
        x[CHANNELS["prev_seg"]] = window.crop(
            prev_mask_source, fill=0.0,
            transform=(lambda v: v == label) if label is not None else (lambda v: v != 0))
    if prompts.box is not None:
        fill_box(x[CHANNELS["box_pos"]], window, *prompts.box)
    for pts, ch in ((prompts.fg, CHANNELS["click_pos"]), (prompts.bg, CHANNELS["click_neg"])):
        for p in window.to_patch(pts) if len(pts) else []:
            draw_ball(x[ch], p)
    for voxels, name in prompts.voxel_prompts():
        splat(x[CHANNELS[name]], window, voxels)
    return x
