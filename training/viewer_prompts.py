"""The prompts a viewer user draws (napari, 3D Slicer), simulated from a target mask on the patch grid (z, y, x).

nnInteractive's viewers send a 2D box (a rectangle on one slice, any orientation), a lasso (a closed contour
on one slice, filled) and scribbles (a freehand stroke about 2 voxels thick). Each is drawn here on one
slice through the object, chosen along a random axis among the central slices of the object, and returned
in the form `inference.prompts.ClassPrompts` takes: the box as an inclusive (lo, hi) with lo == hi on the
slice axis; lassos and scribbles as voxel coordinates (N, 3).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

AXIS_WEIGHTS = (0.5, 0.25, 0.25)  # axial slices are drawn on most often


@dataclass(frozen=True)
class ObjectSlice:
    """One slice through the target: the axis it cuts (0 = z, 1 = y, 2 = x), its index and the 2D section."""

    axis: int
    index: int
    section: np.ndarray  # bool, the target's cut on that slice (the two remaining axes in order)

    def to_volume(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """In-slice pixel coordinates -> voxel coordinates (N, 3) (z, y, x)."""
        out = np.empty((len(rows), 3), dtype=np.int64)
        other = [a for a in range(3) if a != self.axis]
        out[:, self.axis] = self.index
        out[:, other[0]] = rows
        out[:, other[1]] = cols
        return out


def pick_slice(target: np.ndarray, rng: np.random.Generator, central: float = 0.6) -> ObjectSlice:
    """A random slice through the target along a random axis, among its central `central` share of slices."""
    axis = int(rng.choice(3, p=AXIS_WEIGHTS))
    others = tuple(a for a in range(3) if a != axis)
    occupied = np.flatnonzero(target.any(axis=others))
    lo_q, hi_q = (1 - central) / 2, (1 + central) / 2
    a = occupied[int(lo_q * (len(occupied) - 1))]
    b = occupied[int(round(hi_q * (len(occupied) - 1)))]
    candidates = occupied[(occupied >= a) & (occupied <= b)]
    index = int(rng.choice(candidates))
    return ObjectSlice(axis, index, np.take(target, index, axis=axis))


def box2d(target: np.ndarray, rng: np.random.Generator, jitter_max: int = 3) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """An inclusive 2D box (lo, hi) (z, y, x) around the target's cut on one slice, widened by 0..jitter_max
    voxels per side (users draw loosely), clipped to the patch; lo == hi on the slice axis."""
    sl = pick_slice(target, rng)
    rows, cols = np.nonzero(sl.section)
    shape = np.asarray(sl.section.shape)
    j = rng.integers(0, jitter_max + 1, 4)
    lo2 = np.maximum([rows.min() - j[0], cols.min() - j[1]], 0)
    hi2 = np.minimum([rows.max() + j[2], cols.max() + j[3]], shape - 1)
    lo, hi = sl.to_volume(*(np.array([v]) for v in lo2))[0], sl.to_volume(*(np.array([v]) for v in hi2))[0]
    return tuple(int(v) for v in lo), tuple(int(v) for v in hi)


def lasso(target: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Voxels (N, 3) of a filled closed contour drawn around the target's cut on one slice: the cut with its
    holes filled, sometimes its convex hull, grown or shrunk by up to 2 pixels."""
    from skimage.morphology import convex_hull_image, disk

    sl = pick_slice(target, rng)
    region = ndimage.binary_fill_holes(sl.section)
    if rng.random() < 0.3:
        region = convex_hull_image(region)
    r = int(rng.integers(-2, 3))
    if r > 0:
        region = ndimage.binary_dilation(region, disk(r))
    elif r < 0:
        shrunk = ndimage.binary_erosion(region, disk(-r))
        region = shrunk if shrunk.any() else region
    return sl.to_volume(*np.nonzero(region))


def scribble(target: np.ndarray, rng: np.random.Generator, thickness: int = 2) -> np.ndarray:
    """Voxels (N, 3) of a stroke inside the target's cut on one slice: a stretch of its skeleton (a stroke
    along the object) or a straight line between two of its pixels, about `thickness` pixels wide."""
    from skimage.draw import line
    from skimage.morphology import skeletonize

    sl = pick_slice(target, rng)
    labels, n = ndimage.label(sl.section)
    if n > 1:  # the largest piece of the cut
        sizes = ndimage.sum_labels(sl.section, labels, index=np.arange(1, n + 1))
        piece = labels == int(np.argmax(sizes)) + 1
    else:
        piece = sl.section
    stroke = np.zeros_like(piece)
    if rng.random() < 0.6:
        skel = skeletonize(piece)
        rows, cols = np.nonzero(skel)
        if len(rows) > 4:  # keep a random contiguous stretch of the skeleton (by distance from a random point)
            k = int(rng.integers(len(rows)))
            d = np.hypot(rows - rows[k], cols - cols[k])
            keep = d <= np.quantile(d, rng.uniform(0.3, 1.0))
            rows, cols = rows[keep], cols[keep]
        stroke[rows, cols] = True
    if not stroke.any():
        rows, cols = np.nonzero(piece)
        i, j = rng.integers(len(rows), size=2)
        rr, cc = line(int(rows[i]), int(cols[i]), int(rows[j]), int(cols[j]))
        stroke[rr, cc] = True
    if thickness > 1:
        stroke = ndimage.binary_dilation(stroke, np.ones((thickness, thickness), bool))
    stroke &= ndimage.binary_dilation(piece, iterations=1)  # users stay about inside the object
    if not stroke.any():
        stroke = piece
    return sl.to_volume(*np.nonzero(stroke))
