"""Surface elements ("surfels") of a binary volume, for surface-distance metrics.

The organizer's NSD (DeepMind surface-distance code) describes a mask's surface on the grid of
2x2x2 voxel neighbourhoods: each neighbourhood has an 8-bit code, the ones that are neither empty
(0) nor full (255) are border cells, and each code has a surface area taken from marching cubes.

This module rebuilds that area table from first principles instead of shipping a copy of it:
the marching-cubes iso-surface of one 2x2x2 cell is made of polygons whose corners are the edge
mid-points; on an ambiguous face (two diagonal corners set) the minority corners are cut off
separately (for 4-of-8 cells: the set corners); every polygon is split into the triangles of
largest total area (a non-planar polygon is folded along its planar pieces). With this rule the
area of every code, for any spacing, equals the organizer's table to ~1e-15.

Axis order: arrays are (z, y, x) = (axis 0, 1, 2); a spacing passed here is per array axis, in
the same order as the array (the caller decides whether that is the stored (x, y, z) spacing,
as the organizer does, or the physical (z, y, x) one).
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Iterator, Sequence

import numpy as np

# Bit of each corner (d0, d1, d2) of a 2x2x2 neighbourhood; the code of the cell at grid
# position i covers voxels i - 1 + d (d in {0, 1}^3), as in the organizer's correlate kernel.
CORNER_BITS: dict[tuple[int, int, int], int] = {
    (d0, d1, d2): 1 << (7 - (4 * d0 + 2 * d1 + d2))
    for d0, d1, d2 in itertools.product((0, 1), repeat=3)
}


def _face_cycles() -> list[list[tuple[int, int, int]]]:
    """The 6 faces of the unit cube, each as its 4 corners in cyclic order."""
    faces = []
    for axis in range(3):
        others = [a for a in range(3) if a != axis]
        for value in (0, 1):
            cycle = []
            for p, q in ((0, 0), (0, 1), (1, 1), (1, 0)):
                corner = [0, 0, 0]
                corner[axis], corner[others[0]], corner[others[1]] = value, p, q
                cycle.append(tuple(corner))
            faces.append(cycle)
    return faces


_FACES = _face_cycles()


def _polygons(code: int) -> list[np.ndarray]:
    """Marching-cubes polygons of one cell: each an (n, 3) array of edge mid-points in order."""
    inside = {c: bool(code & bit) for c, bit in CORNER_BITS.items()}
    cut_off_inside = bin(code).count("1") <= 4  # which corners an ambiguous face isolates
    segments: list[tuple[frozenset, frozenset]] = []
    for face in _FACES:
        flags = [inside[c] for c in face]
        edges = [frozenset((face[i], face[(i + 1) % 4])) for i in range(4)]
        crossing = [i for i in range(4) if flags[i] != flags[(i + 1) % 4]]
        if len(crossing) == 2:
            segments.append((edges[crossing[0]], edges[crossing[1]]))
        elif len(crossing) == 4:
            for i in range(4):
                if flags[i] == cut_off_inside:
                    segments.append((edges[i - 1], edges[i]))
    neighbours: dict[frozenset, list[frozenset]] = {}
    for a, b in segments:
        neighbours.setdefault(a, []).append(b)
        neighbours.setdefault(b, []).append(a)
    polygons, seen = [], set()
    for start in sorted(neighbours, key=lambda e: sorted(e)):
        if start in seen:
            continue
        loop, current = [start], start
        seen.add(start)
        while True:
            unseen = [n for n in neighbours[current] if n not in seen]
            if not unseen:
                break
            current = unseen[0]
            loop.append(current)
            seen.add(current)
        polygons.append(np.array([np.mean([np.array(c) for c in edge], axis=0) for edge in loop]))
    return polygons


def _triangulations(indices: tuple[int, ...]) -> Iterator[list[tuple[int, int, int]]]:
    """All triangulations of a polygon given by its vertex indices in order."""
    if len(indices) < 3:
        yield []
        return
    first, last = indices[0], indices[-1]
    for k in range(1, len(indices) - 1):
        for left in _triangulations(indices[: k + 1]):
            for right in _triangulations(indices[k:]):
                yield left + [(first, indices[k], last)] + right


def _triangle_area_vectors(polygon: np.ndarray) -> list[np.ndarray]:
    """Area vectors (normal * area, voxel units) of the largest-area triangulation."""
    best, best_area = [], -1.0
    for triangles in _triangulations(tuple(range(len(polygon)))):
        vectors = [
            np.cross(polygon[b] - polygon[a], polygon[c] - polygon[a]) / 2.0
            for a, b, c in triangles
        ]
        area = float(sum(np.linalg.norm(v) for v in vectors))
        if area > best_area + 1e-9:
            best, best_area = vectors, area
    return best


@functools.lru_cache(maxsize=1)
def code_area_vectors() -> tuple[np.ndarray, ...]:
    """Per neighbour code (0..255), the (k, 3) area vectors of its surface triangles."""
    table = []
    for code in range(256):
        vectors = [v for poly in _polygons(code) for v in _triangle_area_vectors(poly)]
        table.append(np.array(vectors, dtype=np.float64).reshape(-1, 3))
    return tuple(table)


@functools.lru_cache(maxsize=64)
def surface_area_lut(spacing: tuple[float, float, float]) -> np.ndarray:
    """Surface area (mm^2) of each of the 256 neighbour codes for a per-axis spacing (axis 0,1,2)."""
    s0, s1, s2 = (float(s) for s in spacing)
    lut = np.zeros(256, dtype=np.float64)
    for code, vectors in enumerate(code_area_vectors()):
        total = 0.0
        for v in vectors:
            scaled = np.array([v[0] * s1 * s2, v[1] * s0 * s2, v[2] * s0 * s1])
            total += float(np.linalg.norm(scaled))
        lut[code] = total
    return lut


def neighbour_codes(mask: np.ndarray, margin: Sequence[int] = (0, 0, 0)) -> np.ndarray:
    """8-bit neighbourhood code of every cell of a 3D bool mask, shape mask.shape + 1 + 2 * margin.

    Cell i (per axis) covers voxels i-1 and i, the outside being empty, exactly like the
    organizer's zero-padded crop correlated with its 2x2x2 kernel (axis order as the mask);
    `margin` adds that many empty cells (code 0) on both sides of each axis.
    """
    m0, m1, m2 = (int(v) for v in margin)
    n0, n1, n2 = mask.shape
    padded = np.zeros((n0 + 2 + 2 * m0, n1 + 2 + 2 * m1, n2 + 2 + 2 * m2), dtype=np.uint8)
    padded[1 + m0 : 1 + m0 + n0, 1 + m1 : 1 + m1 + n1, 1 + m2 : 1 + m2 + n2] = mask
    # combine the 2 corners of each axis in turn: bit 1 << (7 - (4*d0 + 2*d1 + d2)) per corner
    codes = padded[:, :, :-1] * np.uint8(2)
    codes += padded[:, :, 1:]
    pairs = codes[:, :-1] * np.uint8(4)
    pairs += codes[:, 1:]
    codes = pairs[:-1] * np.uint8(16)
    codes += pairs[1:]
    return codes


def border_cells(codes: np.ndarray) -> np.ndarray:
    """Cells that carry surface: code neither 0 (outside) nor 255 (inside)."""
    return (codes != 0) & (codes != 255)


def as_spacing(spacing: Sequence[float] | np.ndarray) -> tuple[float, float, float]:
    """A 3-tuple of python floats (float64), accepting any array-like of 3 numbers."""
    values = np.asarray(spacing, dtype=np.float64).reshape(-1)
    if values.shape != (3,):
        raise ValueError(f"spacing must have 3 values, got {values.tolist()}")
    return (float(values[0]), float(values[1]), float(values[2]))
