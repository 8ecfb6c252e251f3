"""Fuse per-class probabilities: p_bg = prod_c (1 - p_c), label = argmax over [p_bg, p_1..p_K].

Fusion is incremental: each class adds its probabilities only inside its own window, so memory
is three full-volume arrays (log p_bg, best class probability, best class id) whatever the
number of classes. Ties go to the background, then to the earlier class, as numpy's argmax.

`volume_weight` w > 0 changes only which class a foreground voxel gets: the one with the largest
logit(p_c) - w x ln(V_c), V_c the class's predicted volume in voxels (`set_volume`), instead of the largest p_c.
Where two classes are both sure (a class that fills its whole box, such as a brain's cortex or CSF, and a
structure inside that box) the smaller one wins, as when structures are painted large first and small on top;
where a small class only leaks into a large neighbour with a low probability, the neighbour keeps it. It costs a
fourth full-volume array. The foreground / background decision is the same for every w.
"""
from __future__ import annotations

import numpy as np

_EPS = 1e-7
_LOGIT_EPS = 1e-4  # probabilities clipped to [1e-4, 1 - 1e-4] before the logit: |logit| <= 9.2


def single_object_mask(probs: np.ndarray) -> np.ndarray:
    """The fused labels (uint8 0/1, any axis order) when there is only one object: foreground where
    p > p_bg = 1 - p, ties to the background, i.e. where p > 0.5 (what `ProductBackgroundFusion` gives for one class)."""
    return (np.asarray(probs) > 0.5).astype(np.uint8)


class ProductBackgroundFusion:
    """Accumulates classes one window at a time; `labels()` gives the uint8 (z, y, x) label map."""

    def __init__(self, shape: tuple[int, int, int], volume_weight: float = 0.0):
        if volume_weight < 0:
            raise ValueError(f"volume_weight must be >= 0, not {volume_weight}")
        self.shape = tuple(shape)
        self.log_bg = np.zeros(shape, dtype=np.float32)
        self.best = np.zeros(shape, dtype=np.float32)
        self.label = np.zeros(shape, dtype=np.uint8)
        self.volume_weight = volume_weight
        self.score = np.full(shape, -np.inf, dtype=np.float32) if volume_weight > 0 else None
        self.volumes = np.ones(256)  # predicted voxels per class id (set_volume), for volume_weight > 0

    def set_volume(self, class_id: int, voxels: float) -> None:
        """The class's predicted volume in voxels (used when volume_weight > 0)."""
        self.volumes[class_id] = max(float(voxels), 1.0)

    def add(self, class_id: int, region: tuple[slice, ...], probs: np.ndarray) -> None:
        """Add class `class_id` (1..255) with probabilities `probs` over volume `region` (z, y, x slices)."""
        p = np.clip(probs, 0.0, 1.0, dtype=np.float32)
        self.log_bg[region] += np.log1p(-np.minimum(p, 1.0 - _EPS))
        best = self.best[region]
        if self.score is None:
            take = p > best
        else:
            q = np.clip(p, _LOGIT_EPS, 1 - _LOGIT_EPS)
            s = np.log(q) - np.log1p(-q) - np.float32(self.volume_weight * np.log(self.volumes[class_id]))
            score = self.score[region]
            take = s > score
            score[take] = s[take]
        np.maximum(best, p, out=best)
        self.label[region][take] = class_id

    def add_mask(self, class_id: int, mask: np.ndarray, region: tuple[slice, ...] | None = None) -> None:
        """Add a class given as a binary mask (probability 1 inside), e.g. a kept previous prediction (its
        volume is the mask's)."""
        region = region if region is not None else tuple(slice(0, n) for n in self.shape)
        if self.score is not None:  # only the volume-weighted overlap rule reads it
            self.set_volume(class_id, float(np.count_nonzero(mask)))
        self.add(class_id, region, mask.astype(np.float32))

    def labels(self, slab: int = 16) -> np.ndarray:
        """The fused label map, computed slab by slab along z to bound temporaries."""
        out = np.zeros(self.shape, dtype=np.uint8)
        for z0 in range(0, self.shape[0], slab):
            s = slice(z0, z0 + slab)
            fg = self.best[s] > np.exp(self.log_bg[s])
            out[s][fg] = self.label[s][fg]
        return out
