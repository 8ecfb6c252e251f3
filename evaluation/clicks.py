"""The organizer's click simulator (CVPR25_iter_eval.py), the single implementation in the project.

Per class and step: error = prediction != ground truth; no error -> no click (`None` in
clicks_order). Otherwise take the largest 26-connected error component (cc3d; ties go to the
lowest cc3d label, i.e. the component met first in C order), its Euclidean distance transform in
voxel units on its bounding box padded by max(25 % of the size, 1) zeros per axis (2x max-pooled
first when the padded box exceeds 6e7 voxels, then upsampled by repetition), keep the voxels of
maximal distance in C order and pick `choice(n)` of a RandomState seeded with 42 (the organizer
re-seeds the global RNG with 42 before every pick; a private RandomState gives the same pick and
leaves the caller's RNG alone). The click is 'fg' where the ground truth is set, else 'bg'.

All coordinates are array indices (z, y, x). Clicks are stored as the organizer stores them:
`clicks[i] = {'fg': [[z, y, x], ...], 'bg': [...]}` (lists of numpy int64), and
`clicks_order[i]` gets 'fg', 'bg' or None per step, for class index i (label sorted_labels[i]).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import cc3d
import edt as edt_lib
import numpy as np
from scipy import ndimage

from evaluation.regions import Slices, bounding_box, box_start, class_boxes, union_slices

POOL_THRESHOLD_VOXELS = 60_000_000  # padded crops larger than this are 2x max-pooled first
CLICK_SEED = 42

Click = tuple[tuple[int, int, int], str]  # ((z, y, x), 'fg' | 'bg')


@functools.lru_cache(maxsize=8192)
def seeded_choice(n: int) -> int:
    """Index picked among n candidates, as np.random.seed(42); np.random.choice(n) picks it."""
    return int(np.random.RandomState(CLICK_SEED).choice(n))


def _pick_maximum(values: np.ndarray) -> tuple[int, int, int]:
    """Index (z, y, x) of the seeded pick among the maximal voxels in C order."""
    flat = values.ravel()
    candidates = np.flatnonzero(flat == flat.max())
    chosen = candidates[seeded_choice(len(candidates))]
    z, y, x = np.unravel_index(chosen, values.shape)
    return int(z), int(y), int(x)


def _pooled_distances(component: np.ndarray) -> np.ndarray:
    """The organizer's large-crop path: squared EDT of the 2x max-pooled padded crop, read back
    at every voxel of the component's box (same shape as `component`)."""
    shape = np.array(component.shape)
    pad = np.maximum((shape * 0.25).astype(int), 1)
    padded_shape = shape + 2 * pad
    even_shape = (padded_shape + 1) // 2 * 2  # block_reduce pads the end with zeros
    padded = np.zeros(tuple(even_shape), dtype=np.uint8)
    padded[pad[0] : pad[0] + shape[0], pad[1] : pad[1] + shape[1], pad[2] : pad[2] + shape[2]] = component
    e0, e1, e2 = (int(v) for v in even_shape)
    pooled = padded.reshape(e0 // 2, 2, e1 // 2, 2, e2 // 2, 2).max(axis=(1, 3, 5))
    del padded
    if pooled.all():  # no background at all: only SciPy's own (degenerate) answer matches
        dist2 = ndimage.distance_transform_edt(pooled) ** 2
    else:  # SciPy semantics: the array border is not background (black_border=False)
        dist2 = edt_lib.edtsq(np.ascontiguousarray(pooled), black_border=False, parallel=1)
    index = [(pad[a] + np.arange(shape[a])) // 2 for a in range(3)]
    return dist2[np.ix_(index[0], index[1], index[2])]


def component_distances(component: np.ndarray) -> np.ndarray:
    """Squared EDT (voxel units) of a component given on its bounding box, zero outside it.

    Values are ordered exactly as the organizer's EDT (squares of its distances are exact in
    float32 here), so the set of maximal voxels is the same.
    """
    shape = np.array(component.shape)
    pad = np.maximum((shape * 0.25).astype(int), 1)
    if int(np.prod(shape + 2 * pad)) > POOL_THRESHOLD_VOXELS:
        dist2 = _pooled_distances(component)
    else:
        # zero padding on every side of the box == an image border that counts as background
        dist2 = edt_lib.edtsq(np.ascontiguousarray(component, dtype=np.uint8), black_border=True, parallel=1)
    dist2 = dist2 * component
    if not dist2.any():  # the organizer then samples uniformly from the component
        return component.astype(np.float32)
    return dist2


def click_from_error(error: np.ndarray, gt: np.ndarray, offset: Sequence[int] = (0, 0, 0)) -> Click | None:
    """Click for a bool error mask (z, y, x) holding every error voxel of the class.

    `gt` is the class's ground truth on the same box; `offset` is the box's first index in the
    full volume, added to the returned coordinate.
    """
    if not error.any():
        return None
    error = np.ascontiguousarray(error, dtype=bool)
    components = cc3d.connected_components(error.view(np.uint8), connectivity=26)
    sizes = np.bincount(components[error])  # voxels per cc3d label (label 0 never counted)
    largest = int(np.argmax(sizes))  # ties: the lowest label, as np.argmax in the organizer
    in_component = components == largest
    box = bounding_box(in_component)
    component = in_component[box]
    dz, dy, dx = _pick_maximum(component_distances(component))
    local = (box[0].start + dz, box[1].start + dy, box[2].start + dx)
    kind = "fg" if gt[local] else "bg"
    return (int(offset[0]) + local[0], int(offset[1]) + local[1], int(offset[2]) + local[2]), kind


def error_component_at(pred: np.ndarray, gt: np.ndarray, coord: Sequence[int]) -> np.ndarray:
    """The 26-connected error component (pred != gt, bool masks (z, y, x)) holding voxel `coord` (z, y, x): what a
    click placed there asks to be corrected (all False when the voxel is no error)."""
    error = np.ascontiguousarray(np.asarray(pred, dtype=bool) != np.asarray(gt, dtype=bool))
    z, y, x = (int(c) for c in coord)
    if not error[z, y, x]:
        return np.zeros_like(error)
    components = cc3d.connected_components(error.view(np.uint8), connectivity=26)
    return components == components[z, y, x]


def simulate_click(pred: np.ndarray, gt: np.ndarray) -> Click | None:
    """Organizer's click for one class: pred and gt are bool masks (z, y, x).

    Returns ((z, y, x), 'fg' | 'bg'), or None when the prediction has no error.
    """
    pred = np.asarray(pred, dtype=bool)
    gt = np.asarray(gt, dtype=bool)
    error = pred != gt
    box = bounding_box(error)
    if box is None:
        return None
    return click_from_error(error[box], gt[box], box_start(box))


def simulate_clicks(
    segs: np.ndarray, gts: np.ndarray, labels: Sequence[int], gt_boxes: dict[int, Slices | None] | None = None
) -> list[Click | None]:
    """Clicks of every class (sorted ids `labels`) for a uint8 previous prediction (z, y, x).

    Same result as `simulate_click(segs == c, gts == c)` per class, but each class is only
    looked at inside the box of its prediction and ground truth. `gt_boxes` (from
    `regions.class_boxes(gts, labels)`) may be passed to skip recomputing them.
    """
    seg_boxes = class_boxes(segs, labels)
    if gt_boxes is None:
        gt_boxes = class_boxes(gts, labels)
    results: list[Click | None] = []
    for c in labels:
        box = union_slices(seg_boxes[int(c)], gt_boxes[int(c)])
        if box is None:
            results.append(None)
            continue
        gt_c = gts[box] == c
        error = (segs[box] == c) != gt_c
        results.append(click_from_error(error, gt_c, box_start(box)))
    return results


def new_click_state(n_classes: int) -> tuple[list[dict[str, list]], list[list]]:
    """Empty `clicks` and `clicks_order` for n classes, as the organizer initialises them."""
    return [{"fg": [], "bg": []} for _ in range(n_classes)], [[] for _ in range(n_classes)]


def add_click(clicks: list[dict[str, list]], clicks_order: list[list], class_index: int, result: Click | None) -> None:
    """Record one step's click (or None) of class index i, as the organizer does.

    The coordinate (z, y, x) is appended as a list of numpy int64 to clicks[i]['fg'|'bg'] and the
    kind to clicks_order[i]; None (no error) appends None to clicks_order[i] only.
    """
    if result is None:
        clicks_order[class_index].append(None)
        return
    (z, y, x), kind = result
    if kind not in ("fg", "bg"):
        raise ValueError(f"click kind must be 'fg' or 'bg', got {kind!r}")
    clicks[class_index][kind].append([np.int64(z), np.int64(y), np.int64(x)])
    clicks_order[class_index].append(kind)
