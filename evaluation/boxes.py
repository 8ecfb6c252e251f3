"""Box prompts generated as the organizer's get_boxes.py does (after its issue #7 fix).

Per class, in sorted-label order: z_min / z_max are the first and last slices (axis 0) holding the
object, z_mid the middle of those unique slice indices (`unique_z[len(unique_z) // 2]`), and the
2D box is the object's extent on slice z_mid, widened on both sides by `int(shift * W / 256)` in x
and `int(shift * H / 256)` in y with shift = randint(0, 6), then clipped to the image
(max inclusive). Values are numpy int64, as in the organizer's pickled dicts.

Seeding (an assumption, documented): get_boxes.py seeds numpy's global RNG once with 2025 at
import and draws one `np.random.randint(0, 6, 1)[0]` per class, but runs the files through a
16-process pool and draws colours between files, so the jitter of a given organizer file depends
on the worker schedule and is not reproducible. Here every case gets a fresh RandomState(seed)
(= `np.random.seed(2025)`), i.e. each case is jittered as if it were the first file of a fresh
worker: class i gets the i-th draw of that stream.

Axis order: gts is (z, y, x) = (D, H, W); the 2D box keys are x (axis 2) and y (axis 1).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from evaluation.regions import class_boxes, labels_of

BOX_SEED = 2025
BOX_KEYS = ("z_min", "z_max", "z_mid", "z_mid_x_min", "z_mid_y_min", "z_mid_x_max", "z_mid_y_max")


def jitter_shift(rng: np.random.RandomState) -> int:
    """One box jitter draw, in units of 1/256 of the image size (0..5)."""
    return int(rng.randint(0, 6, 1)[0])


def box_from_mask(mask: np.ndarray, shift: int, offset: Sequence[int] = (0, 0, 0), image_hw: tuple[int, int] | None = None) -> dict[str, np.int64]:
    """Box dict of one bool object mask (z, y, x) given the jitter draw.

    `mask` may be a crop of the volume starting at `offset` (z, y, x); `image_hw` is the full
    image's (H, W) for the jitter scale and clipping (default: the mask's own).
    """
    z0, y0, x0 = (int(v) for v in offset)
    height, width = image_hw if image_hw is not None else mask.shape[1:]
    slices_with_object = np.flatnonzero(mask.any(axis=(1, 2)))
    if slices_with_object.size == 0:
        raise ValueError("empty object mask")
    z_mid_local = int(slices_with_object[len(slices_with_object) // 2])
    ys, xs = np.nonzero(mask[z_mid_local])
    shift_x = int(shift * width / 256)
    shift_y = int(shift * height / 256)
    values = {
        "z_min": z0 + int(slices_with_object[0]),
        "z_max": z0 + int(slices_with_object[-1]),
        "z_mid": z0 + z_mid_local,
        "z_mid_x_min": max(0, x0 + int(xs.min()) - shift_x),
        "z_mid_y_min": max(0, y0 + int(ys.min()) - shift_y),
        "z_mid_x_max": min(width - 1, x0 + int(xs.max()) + shift_x),
        "z_mid_y_max": min(height - 1, y0 + int(ys.max()) + shift_y),
    }
    return {key: np.int64(values[key]) for key in BOX_KEYS}


def boxes_from_gt(gts: np.ndarray, labels: list[int] | None = None, seed: int = BOX_SEED) -> list[dict]:
    """One box dict per class of a ground truth (z, y, x), in sorted-label order.

    `labels` defaults to the sorted unique nonzero values; each must be present in `gts`.
    """
    if gts.ndim != 3:
        raise ValueError(f"gts must be 3D (z, y, x), got shape {gts.shape}")
    labels = labels_of(gts) if labels is None else [int(c) for c in labels]
    rng = np.random.RandomState(seed)
    found = class_boxes(gts, labels)
    height, width = gts.shape[1:]
    boxes = []
    for label in labels:
        box = found[label]
        if box is None:
            raise ValueError(f"label {label} is not present in the ground truth")
        shift = jitter_shift(rng)
        start = (box[0].start, box[1].start, box[2].start)
        boxes.append(box_from_mask(gts[box] == label, shift, start, (height, width)))
    return boxes


def box_to_ints(box: dict) -> dict[str, int]:
    """A box dict with python ints (for JSON)."""
    return {key: int(box[key]) for key in BOX_KEYS}
