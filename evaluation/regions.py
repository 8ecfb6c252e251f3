"""Bounding boxes and class ids of label maps; arrays are (z, y, x), boxes are slices per axis."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

Slices = tuple[slice, slice, slice]


def labels_of(gts: np.ndarray) -> list[int]:
    """Class ids of a ground truth: the sorted unique nonzero values."""
    return [int(v) for v in np.unique(gts) if v != 0]


def relabel_sequential(gts: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """Label map (z, y, x) with its classes renumbered 1..N in sorted order, and the new ids [1..N]."""
    labels = labels_of(gts)
    if labels == list(range(1, len(labels) + 1)):
        return gts, labels
    lut = np.zeros(int(gts.max()) + 1, dtype=np.uint8 if len(labels) < 256 else np.uint16)
    lut[labels] = np.arange(1, len(labels) + 1)
    return lut[gts], list(range(1, len(labels) + 1))


def bounding_box(mask: np.ndarray) -> Slices | None:
    """Bounding box of a 3D bool mask (z, y, x) as slices per axis, or None when empty."""
    slices = []
    for axis in range(mask.ndim):
        other = tuple(i for i in range(mask.ndim) if i != axis)
        nonzero = np.flatnonzero(mask.any(axis=other))
        if nonzero.size == 0:
            return None
        slices.append(slice(int(nonzero[0]), int(nonzero[-1]) + 1))
    return tuple(slices)  # type: ignore[return-value]


def union_slices(a: Slices | None, b: Slices | None) -> Slices | None:
    """Smallest box holding two boxes (either may be None)."""
    if a is None:
        return b
    if b is None:
        return a
    return tuple(slice(min(p.start, q.start), max(p.stop, q.stop)) for p, q in zip(a, b))  # type: ignore[return-value]


def class_boxes(label_map: np.ndarray, labels: Sequence[int]) -> dict[int, Slices | None]:
    """Bounding box of each class id of an integer label map (one pass); None when absent."""
    if len(labels) == 0:
        return {}
    objects = ndimage.find_objects(label_map, max_label=int(max(labels)))
    return {int(c): objects[int(c) - 1] for c in labels}


def box_start(box: Slices) -> tuple[int, int, int]:
    """First index (z, y, x) of a box."""
    return (int(box[0].start), int(box[1].start), int(box[2].start))
