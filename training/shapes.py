"""Label maps made of many objects: procedural shapes and anatomix-style ensembles of real organ masks.

Every function is a pure function of its `np.random.Generator` and returns a label map (z, y, x), int64,
0 = background, objects 1..K painted in order (later objects cover earlier ones, so every label still present
is a visible object). The images come later from `training.synth.paint`.

- blobs: a smooth random field thresholded inside a random ellipsoid (organs, lesions, cells);
- tubes: a smooth random 3D curve with a slowly varying radius, sometimes branched (vessels, airways, nerves);
- plates: a smooth random surface of 1-4 voxels thickness inside a disk (fascia, cortex, bone plates);
- ensembles: real object masks (from any training label map) shrunk to fit, mirrored, axis-permuted and
  dropped at random places in an empty canvas.
"""
from __future__ import annotations

from typing import Callable, Sequence

import edt as edt_lib
import numpy as np
import torch
from scipy import ndimage

Triple = tuple[int, int, int]


def smooth_field(shape: Sequence[int], rng: np.random.Generator, nodes: int = 4) -> np.ndarray:
    """A smooth random field in about [-1, 1] on `shape` (z, y, x): random nodes^3 values, trilinear."""
    coarse = torch.from_numpy(rng.uniform(-1, 1, (1, 1, nodes, nodes, nodes)).astype(np.float32))
    return torch.nn.functional.interpolate(coarse, size=tuple(int(v) for v in shape), mode="trilinear",
                                           align_corners=True)[0, 0].numpy()


def _grid(shape: Sequence[int]) -> list[np.ndarray]:
    return np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij", sparse=True)


def blob(shape: Triple, rng: np.random.Generator) -> np.ndarray:
    """A bool mask: an irregular blob with radii 4..shape/3 at a random centre."""
    radii = rng.uniform(4, np.asarray(shape) / 3.0)
    centre = rng.uniform(radii, np.asarray(shape) - radii)
    zz, yy, xx = _grid(shape)
    r = np.sqrt(((zz - centre[0]) / radii[0]) ** 2 + ((yy - centre[1]) / radii[1]) ** 2
                + ((xx - centre[2]) / radii[2]) ** 2)
    return r + rng.uniform(0.2, 0.6) * smooth_field(shape, rng, int(rng.integers(3, 7))) < 1.0


def _curve(shape: Triple, rng: np.random.Generator, n: int = 200) -> np.ndarray:
    """Points (n, 3) of a smooth random curve through the volume (sum of a line and two sinusoids)."""
    s = np.linspace(0.0, 1.0, n)[:, None]
    a, b = rng.uniform(0, np.asarray(shape)), rng.uniform(0, np.asarray(shape))
    pts = a + (b - a) * s
    for _ in range(2):
        amp = rng.uniform(0, 0.15, 3) * np.asarray(shape)
        freq, phase = rng.uniform(0.5, 2.5, 3), rng.uniform(0, 2 * np.pi, 3)
        pts = pts + amp * np.sin(2 * np.pi * freq * s + phase)
    return pts


def tube(shape: Triple, rng: np.random.Generator) -> np.ndarray:
    """A bool mask: a tube of radius 1.5-5 voxels along a random curve, with up to two branches."""
    centreline = np.zeros(shape, bool)
    curves = [_curve(shape, rng)]
    for _ in range(int(rng.integers(0, 3))):  # branches start on the first curve
        start = curves[0][int(rng.integers(len(curves[0])))]
        end = rng.uniform(0, np.asarray(shape))
        s = np.linspace(0, 1, 100)[:, None]
        curves.append(start + (end - start) * s)
    for pts in curves:
        idx = np.round(pts).astype(int)
        keep = np.all((idx >= 0) & (idx < np.asarray(shape)), axis=1)
        centreline[tuple(idx[keep].T)] = True
    if not centreline.any():
        centreline[tuple(np.asarray(shape) // 2)] = True
    dist = edt_lib.edt(~centreline)
    radius = rng.uniform(1.5, 5.0) * (1 + 0.3 * smooth_field(shape, rng, 3))
    return dist <= radius


def plate(shape: Triple, rng: np.random.Generator) -> np.ndarray:
    """A bool mask: a curved plate 1-4 voxels thick inside a disk, across a random axis."""
    axis = int(rng.integers(3))
    zz, yy, xx = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij")
    coords = [zz, yy, xx]
    height = coords.pop(axis)
    centre = rng.uniform(0.3, 0.7, 3) * np.asarray(shape)
    c_h = centre[axis]
    c_a, c_b = np.delete(centre, axis)
    surface = c_h + rng.uniform(0.05, 0.2) * shape[axis] * smooth_field(shape, rng, 3)
    thickness = rng.uniform(1.0, 4.0)
    radius = rng.uniform(0.2, 0.45) * min(np.delete(np.asarray(shape), axis))
    in_disk = (coords[0] - c_a) ** 2 + (coords[1] - c_b) ** 2 <= radius ** 2
    return (np.abs(height - surface) <= thickness / 2) & in_disk


SHAPES: dict[str, Callable[[Triple, np.random.Generator], np.ndarray]] = {"blob": blob, "tube": tube, "plate": plate}


def procedural(shape: Triple, rng: np.random.Generator, n_objects: tuple[int, int] = (2, 7)) -> np.ndarray:
    """A label map of 2-6 random shapes (blobs, tubes, plates) painted in order."""
    labels = np.zeros(shape, np.int64)
    kinds = list(SHAPES)
    for k in range(1, int(rng.integers(*n_objects)) + 1):
        mask = SHAPES[kinds[int(rng.choice(len(kinds), p=(0.5, 0.3, 0.2)))]](shape, rng)
        labels[mask] = k
    return labels


def fit_mask(mask: np.ndarray, max_extent: int) -> np.ndarray:
    """A bool object mask (z, y, x) shrunk by nearest-neighbour zoom so its largest side is <= max_extent."""
    factor = max_extent / max(mask.shape)
    if factor >= 1:
        return mask
    return ndimage.zoom(mask.astype(np.uint8), factor, order=0).astype(bool)


def ensemble(shape: Triple, masks: Sequence[np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """A label map of real object masks (each bool, z, y, x, at most `shape`) mirrored, axis-permuted and
    placed at random positions, painted in order as labels 1..K."""
    labels = np.zeros(shape, np.int64)
    for k, mask in enumerate(masks, start=1):
        m = np.transpose(mask, rng.permutation(3)) if rng.random() < 0.3 else mask
        for axis in range(3):
            if rng.random() < 0.5:
                m = np.flip(m, axis)
        m = m[tuple(slice(0, min(a, b)) for a, b in zip(m.shape, shape))]
        start = [int(rng.integers(0, s - n + 1)) for s, n in zip(shape, m.shape)]
        region = labels[tuple(slice(a, a + n) for a, n in zip(start, m.shape))]
        region[m] = k
    return labels
