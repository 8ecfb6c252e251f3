"""Reference predictors run by the same harness, to put every model's scores in context.

- box-fill: step 1 fills each class's 3D box (z_min..z_max x the mid-slice xy box); then every
  click, replayed in order, sets a ball around it to the class (fg) or clears the class there (bg).
- empty: predicts nothing.

They read the step input exactly as a contract-following predictor would: imgs (z, y, x),
boxes[i] / clicks[i] / clicks_order[i] belong to class i + 1, click coordinates are (z, y, x).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from evaluation.predictors import InProcessPredictor

BALL_RADIUS = 4
BASELINES = ("boxfill", "empty")


def _ball(radius: int) -> np.ndarray:
    r = np.arange(-radius, radius + 1)
    z, y, x = np.meshgrid(r, r, r, indexing="ij")
    return z * z + y * y + x * x <= radius * radius


def paint_ball(segs: np.ndarray, centre: tuple[int, int, int], radius: int, label: int, erase: bool = False) -> None:
    """Set a ball (voxel units) around centre (z, y, x) to label, or clear label there (erase)."""
    ball = _ball(radius)
    lo = [int(c) - radius for c in centre]
    src = tuple(slice(max(0, -l), ball.shape[a] - max(0, l + ball.shape[a] - segs.shape[a])) for a, l in enumerate(lo))
    dst = tuple(slice(max(0, l), min(segs.shape[a], l + ball.shape[a])) for a, l in enumerate(lo))
    region = segs[dst]
    mask = ball[src]
    if erase:
        region[mask & (region == label)] = 0
    else:
        region[mask] = label


def _order_rows(clicks_order: Any, n_classes: int) -> list[list]:
    if clicks_order is None:
        return [[] for _ in range(n_classes)]
    return [list(row) for row in clicks_order]


def box_fill(data: Mapping[str, Any], radius: int = BALL_RADIUS) -> np.ndarray:
    """Box-fill prediction (uint8, z, y, x) for one step input."""
    segs = np.zeros(np.asarray(data["imgs"]).shape[-3:], dtype=np.uint8)
    boxes = data.get("boxes")
    if boxes is not None:
        for index, box in enumerate(list(boxes)):
            segs[
                int(box["z_min"]) : int(box["z_max"]) + 1,
                int(box["z_mid_y_min"]) : int(box["z_mid_y_max"]) + 1,
                int(box["z_mid_x_min"]) : int(box["z_mid_x_max"]) + 1,
            ] = index + 1
    clicks = data.get("clicks")
    if clicks is None:
        return segs
    clicks = list(clicks)
    order = _order_rows(data.get("clicks_order"), len(clicks))
    used = [{"fg": 0, "bg": 0} for _ in clicks]
    n_steps = max((len(row) for row in order), default=0)
    for step in range(n_steps):
        for index, row in enumerate(order):
            kind = row[step] if step < len(row) else None
            if kind not in ("fg", "bg"):
                continue
            coords = clicks[index][kind][used[index][kind]]
            used[index][kind] += 1
            centre = (int(coords[0]), int(coords[1]), int(coords[2]))
            paint_ball(segs, centre, radius, index + 1, erase=kind == "bg")
    return segs


def empty(data: Mapping[str, Any]) -> np.ndarray:
    """All-background prediction (uint8, z, y, x)."""
    return np.zeros(np.asarray(data["imgs"]).shape[-3:], dtype=np.uint8)


def make_baseline(name: str) -> InProcessPredictor:
    """The named baseline ('boxfill' or 'empty') as a predictor for the harness."""
    if name == "boxfill":
        return InProcessPredictor(box_fill, name="boxfill")
    if name == "empty":
        return InProcessPredictor(empty, name="empty")
    raise ValueError(f"unknown baseline {name!r}; choose from {BASELINES}")
