"""Coarse-to-fine refinement: the coarse mask's boundary predicted again at native (or near-native) resolution.

A large object's window is zoomed out (one patch voxel covers `zoom` volume voxels per axis), so its mask is
blocky at the volume's resolution. When that zoom is above `RefineConfig.min_zoom`, the boundary band of the
coarse mask is covered by patch-sized tiles at zoom `tile_zoom` (1 = native; raised 1.25x at a time until at
most `max_tiles` tiles are needed), each predicted like any window: the object's prompts mapped into the tile by
the same `Window` and `prompts.encode`, with the coarse probabilities as the previous-segmentation channel.
Overlapping tiles are blended with Gaussian weights; where no tile reaches, the coarse probabilities stay. The
result lies on one native-resolution window (`Window.native`) over the coarse window's part inside the volume
and the tiles. Tiles run most-boundary first, and the caller may stop them at any tile (the time budget).
All coordinates are (z, y, x).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Callable

import numpy as np
import torch
from scipy import ndimage

from .window import Region, Window, region_voxels, relative, union_region

# predict(tile, prev, origin): the object's probabilities (tile patch) with `prev` (float, z, y, x, its first voxel
# at volume index `origin`) as the previous-segmentation channel.
TilePredictor = Callable[[Window, np.ndarray, tuple], torch.Tensor]


@dataclass(frozen=True)
class RefineConfig:
    """How the boundary is refined (see the module docstring)."""

    min_zoom: float = 1.5  # refine only coarse windows zoomed out more than this
    tile_zoom: float = 1.0  # zoom of the tiles (1 = the volume's own resolution)
    max_tiles: int = 8  # the tile zoom grows 1.25x at a time until the boundary needs at most this many tiles
    min_gain: float = 1.5  # no refinement when the tiles would not be this many times finer than the coarse window
    overlap: float = 0.5  # share of a tile that its grid neighbours overlap
    band: int = 1  # half-width of the boundary band in coarse patch voxels
    soft_prev: bool = True  # coarse probabilities (True) or the coarse mask (> 0.5) as the tiles' previous mask
    box_in_tiles: bool = True  # the box prompt in the tiles' input too (clicks and the rest always are)
    sigma_scale: float = 0.125  # Gaussian weight sigma as a share of the tile (nnU-Net's 1/8)
    coarse_weight: float = 1e-3  # weight of the coarse probabilities in the blend (tile weights peak at 1)
    max_region_voxels: int = 1 << 25  # no refinement when the native result would be larger (memory bound)


def boundary_band(probs: torch.Tensor, width: int = 1, threshold: float = 0.5) -> np.ndarray:
    """Patch voxels (z, y, x) within `width` voxels of the mask's surface, on either side (bool).

    The patch border counts as inside the mask, so a mask cut by the window edge has no band there."""
    mask = (probs > threshold).numpy()
    if not mask.any():
        return np.zeros(mask.shape, bool)
    st = ndimage.generate_binary_structure(3, 1)
    outer = ndimage.binary_dilation(mask, st, width)
    inner = ndimage.binary_erosion(mask, st, width, border_value=1)
    return outer & ~inner


def band_points(window: Window, band: np.ndarray) -> np.ndarray:
    """Volume voxels (N, 3) (z, y, x) at the centres of the band's patch voxels, inside the volume."""
    pts = window.to_volume(np.argwhere(band))
    inside = np.all((pts >= 0) & (pts < np.asarray(window.shape)), axis=1)
    return pts[inside]


def tile_starts(points: np.ndarray, size, shape, overlap: float = 0.5) -> list[tuple[tuple[int, int, int], int]]:
    """Tiles of `size` voxels (z, y, x) that together hold every point (N, 3).

    The points' bounding box is cut into cells of size x (1 - overlap); each cell holding points gets the
    tile centred on it (so it holds the cell), moved inside the volume on axes where the volume is at least
    that large (which keeps its points inside). Returns (start, points held by its cell), most points first."""
    size = np.asarray(size, int)
    shape = np.asarray(shape, int)
    step = np.maximum(1, np.round(size * (1.0 - overlap))).astype(int)
    lo = points.min(0)
    cells, counts = np.unique((points - lo) // step, axis=0, return_counts=True)
    centre = lo + cells * step + (step - 1) / 2.0
    start = np.floor(centre - (size - 1) / 2.0 + 0.5).astype(int)
    start = np.where(shape >= size, np.clip(start, 0, np.maximum(shape - size, 0)), start)
    merged: dict[tuple[int, int, int], int] = {}
    for s, n in zip(map(tuple, start.tolist()), counts.tolist()):
        merged[s] = merged.get(s, 0) + int(n)
    return sorted(merged.items(), key=lambda kv: -kv[1])


def plan_tiles(points: np.ndarray, patch, shape, coarse_zoom: float, config: RefineConfig) -> list[Window]:
    """The tile windows for boundary points: at `tile_zoom`, coarser until at most `max_tiles` are needed;
    [] when the tiles would not be `min_gain` times finer than the coarse window."""
    if not len(points):
        return []
    patch_a = np.asarray(patch, float)
    zoom = config.tile_zoom
    while zoom * config.min_gain <= coarse_zoom + 1e-9:
        size = np.maximum(np.round(patch_a * zoom), patch_a).astype(int)
        tiles = tile_starts(points, size, shape, config.overlap)
        if len(tiles) <= config.max_tiles:
            return [Window(start, tuple(int(v) for v in size), tuple(int(v) for v in patch), tuple(shape))
                    for start, _ in tiles]
        zoom *= 1.25
    return []


@lru_cache(maxsize=8)
def gaussian_weights(patch: tuple[int, int, int], sigma_scale: float = 0.125) -> torch.Tensor:
    """Separable Gaussian importance (patch, z, y, x) peaking at 1 in the centre, sigma = sigma_scale x size."""
    axes = [np.exp(-0.5 * ((np.arange(n) - (n - 1) / 2.0) / (sigma_scale * n)) ** 2) for n in patch]
    w = axes[0][:, None, None] * axes[1][None, :, None] * axes[2][None, None, :]
    return torch.from_numpy((w / w.max()).astype(np.float32))


def paste_into(array: np.ndarray, origin, window: Window, values: torch.Tensor) -> None:
    """Write a window's values, resampled to the volume, into `array` (its first voxel at volume `origin`)."""
    for region, v in window.paste(values):
        array[relative(region, origin)] = v


@dataclass
class Refined:
    """A refinement's result: the native window, its probabilities (window patch = size), tiles run / planned."""

    window: Window
    probs: torch.Tensor
    tiles_run: int
    tiles_planned: int


def refine(predict: TilePredictor, window: Window, probs: torch.Tensor, config: RefineConfig,
           keep_going: Callable[[], bool] = lambda: True) -> Refined | None:
    """Refine the coarse probabilities `probs` (window patch) of one object; None when there is nothing to refine
    (zoom at most min_zoom, no boundary, tiles not finer, result too large) or no tile could run."""
    if window.zoom <= config.min_zoom:
        return None
    tiles = plan_tiles(band_points(window, boundary_band(probs, config.band)), window.patch, window.shape,
                       window.zoom, config)
    if not tiles:
        return None
    region: Region = union_region(window.inside(), *[t.inside() for t in tiles])
    if region_voxels(region) > config.max_region_voxels:
        return None
    out = Window.native(region, window.shape)
    coarse = np.zeros(out.size, np.float32)
    paste_into(coarse, out.start, window, probs)
    prev = coarse if config.soft_prev else (coarse > 0.5).astype(np.float32)
    num = np.zeros_like(coarse)
    den = np.zeros_like(coarse)
    weights = gaussian_weights(tuple(window.patch), config.sigma_scale)
    run = 0
    for tile in tiles:
        if not keep_going():
            break
        p = predict(tile, prev, out.start)
        for (reg, w), (_, v) in zip(tile.paste(weights), tile.paste(p)):
            r = relative(reg, out.start)
            num[r] += w * v
            den[r] += w
        run += 1
    if run == 0:
        return None
    num += config.coarse_weight * coarse
    den += config.coarse_weight
    np.divide(num, den, out=num)
    return Refined(out, torch.from_numpy(num), run, len(tiles))
