"""Predictions made without the network: a class's previous mask, or at the box step its box filled.

numpy only (no torch), so the watchdog can write them even when the network process is gone.
"""
from __future__ import annotations

import numpy as np

from .case_io import Box, Case
from .fusion import ProductBackgroundFusion


def box_region(box: Box) -> tuple[slice, slice, slice]:
    """The inclusive 3D box as volume slices (z, y, x)."""
    return tuple(slice(lo, hi + 1) for lo, hi in zip(box.lo, box.hi))


def add_fallback(fusion: ProductBackgroundFusion, case: Case, c: int, prev_slices) -> None:
    """Keep the previous mask of class index c, or at the box step fill its box (nothing when it has neither)."""
    if prev_slices is not None:
        fusion.add_mask(c + 1, case.prev_pred[prev_slices] == c + 1, prev_slices)
    elif case.boxes is not None and case.boxes[c] is not None and case.prev_pred is None:
        region = box_region(case.boxes[c])
        fusion.add_mask(c + 1, np.ones([s.stop - s.start for s in region], bool), region)


def fallback_segs(case: Case) -> np.ndarray:
    """The whole case without the network: the previous prediction, or the boxes filled (uint8, (z, y, x)).

    Where boxes overlap the earlier class wins, as in the fusion of filled boxes.
    """
    if case.prev_pred is not None:
        return case.prev_pred.copy()
    segs = np.zeros(case.shape, np.uint8)
    for c in reversed(range(case.num_classes if case.boxes is not None else 0)):
        if case.boxes[c] is not None:
            segs[box_region(case.boxes[c])] = c + 1
    return segs
