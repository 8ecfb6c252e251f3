"""Fuse per-class probabilities: p_bg = prod_c (1 - p_c), label = argmax over [p_bg, p_1..p_K].

Fusion is incremental: each class adds its probabilities only inside its own window, so memory
is three full-volume arrays (log p_bg, best class probability, best class id) whatever the
number of classes. Ties go to the background, then to the earlier class, as numpy's argmax.
"""
from __future__ import annotations

import numpy as np

_EPS = 1e-7


def single_object_mask(probs: np.ndarray) -> np.ndarray:
    """The fused labels (uint8 0/1, any axis order) when there is only one object: foreground where
    p > p_bg = 1 - p, ties to the background, i.e. where p > 0.5 (what `ProductBackgroundFusion` gives for one class)."""
    return (np.asarray(probs) > 0.5).astype(np.uint8)


class ProductBackgroundFusion:
    """Accumulates classes one window at a time; `labels()` gives the uint8 (z, y, x) label map."""

    def __init__(self, shape: tuple[int, int, int]):
        self.shape = tuple(shape)
        self.log_bg = np.zeros(shape, dtype=np.float32)
        self.best = np.zeros(shape, dtype=np.float32)
        self.label = np.zeros(shape, dtype=np.uint8)

    def add(self, class_id: int, region: tuple[slice, ...], probs: np.ndarray) -> None:
        """Add class `class_id` (1..255) with probabilities `probs` over volume `region` (z, y, x slices)."""
        p = np.clip(probs, 0.0, 1.0, dtype=np.float32)
        self.log_bg[region] += np.log1p(-np.minimum(p, 1.0 - _EPS))
        best = self.best[region]
        better = p > best
        best[better] = p[better]
        self.label[region][better] = class_id

    def add_mask(self, class_id: int, mask: np.ndarray, region: tuple[slice, ...] | None = None) -> None:
        """Add a class given as a binary mask (probability 1 inside), e.g. a kept previous prediction."""
        region = region if region is not None else tuple(slice(0, n) for n in self.shape)
        self.add(class_id, region, mask.astype(np.float32))

    def labels(self, slab: int = 16) -> np.ndarray:
        """The fused label map, computed slab by slab along z to bound temporaries."""
        out = np.zeros(self.shape, dtype=np.uint8)
        for z0 in range(0, self.shape[0], slab):
            s = slice(z0, z0 + slab)
            fg = self.best[s] > np.exp(self.log_bg[s])
            out[s][fg] = self.label[s][fg]
        return out
