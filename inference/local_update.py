"""Click-local update: a native-resolution patch around a new click, merged into the previous prediction.

A click corrects the object mainly near itself. The patch (the network's patch at zoom `LocalConfig.zoom`,
1 = native, centred on the click) is predicted with every prompt of the object and the previous mask as input,
and replaces the previous prediction inside the patch; outside it nothing changes. When the patch's mask differs
from the previous mask on a face of the patch that lies inside the volume (nnInteractive's zoom-out test, with
its thresholds as shares of the face), the object's extent has changed and the caller runs the coarse pass too.
All coordinates are (z, y, x).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np
import torch

from .window import Region, Window, region_voxels, relative, union_region

Pieces = Iterable[tuple[Region, np.ndarray]]


@dataclass(frozen=True)
class LocalConfig:
    """The click patch and the extent-change test."""

    zoom: float = 1.0  # zoom of the click patch (1 = the volume's own resolution)
    max_object_zoom: float = float("inf")  # objects whose zoom-rule window is zoomed out more get the full pass
    face_changed: float = 1500 / 192**2  # share of a face whose mask changed that means a new extent ...
    face_changed_small: float = 100 / 192**2  # ... or this share, when it is also
    face_relative: float = 0.2  # this share of the face's previous foreground (nnInteractive: 1500, 100, 0.2)
    max_region_voxels: int = 1 << 25  # no local update when the merged result would be larger (memory bound)


def click_window(point, patch, shape, zoom: float = 1.0) -> Window:
    """The patch-sized window at `zoom` centred on a click (z, y, x)."""
    return Window.around(point, point, patch, shape, min_zoom=zoom)


def extent_changed(new: np.ndarray, old: np.ndarray, window: Window, config: LocalConfig = LocalConfig()) -> bool:
    """Whether the new mask (patch, bool) differs from the old one (patch, bool) on a window face inside the volume
    by more than the thresholds of `config`."""
    for axis, side in window.border_faces_inside():
        index = 0 if side == 0 else new.shape[axis] - 1
        a, b = new.take(index, axis), old.take(index, axis)
        changed = int(np.count_nonzero(a != b))
        if changed > config.face_changed * a.size:
            return True
        if changed > config.face_changed_small * a.size and changed > config.face_relative * max(int(b.sum()), 1):
            return True
    return False


def merge(base_region: Region | None, base: Pieces, patch: Window, local: torch.Tensor,
          max_region_voxels: int = LocalConfig.max_region_voxels) -> tuple[Window, torch.Tensor] | None:
    """The base prediction (pieces of (volume slices, float values) over `base_region`) with the patch's part
    inside the volume replaced by the local probabilities, on one native window; None when it would exceed
    `max_region_voxels`."""
    region = union_region(base_region, patch.inside())
    if region_voxels(region) > max_region_voxels:
        return None
    out = Window.native(region, patch.shape)
    buf = np.zeros(out.size, np.float32)
    for reg, values in base:
        buf[relative(reg, out.start)] = values
    for reg, values in patch.paste(local):
        buf[relative(reg, out.start)] = values
    return out, torch.from_numpy(buf)


def previous_pieces(prev_mask: np.ndarray, label: int | None, region: Region | None) -> Pieces:
    """The previous mask of one object (voxels == label, or nonzero when None) over `region`, as float pieces."""
    if region is None:
        return []
    sub = prev_mask[region]
    return [(region, (sub == label if label is not None else sub != 0).astype(np.float32))]
