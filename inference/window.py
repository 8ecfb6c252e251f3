"""The crop window: one object maps the volume, boxes, clicks and masks into the patch, and probabilities back.

A window is an axis-aligned block of the volume, `start` and `size` in voxels per axis (z, y, x),
which may extend past the volume border (padding). It is resampled to the network's patch
(z, y, x) with a single zoom factor for all axes, so the voxel aspect ratio is kept.

Coordinate convention (as `align_corners=False`): patch index i covers volume coordinate
    s = start + (i + 0.5) * scale - 0.5,     scale = size / patch.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import torch

Triple = tuple[int, int, int]


def _rule_per_axis(extent: np.ndarray, patch: np.ndarray) -> np.ndarray:
    """(extent_d + patch_d / 3) / patch_d for each axis (z, y, x): the seed paper's zoom rule before its max."""
    return (np.asarray(extent, float) + np.asarray(patch, float) / 3.0) / np.asarray(patch, float)


def zoom_factor(extent: np.ndarray, patch: np.ndarray, floor: float = 1.0) -> float:
    """The seed paper's rule z = max(max_d (extent_d + patch_d / 3) / patch_d, 1); extent, patch (z, y, x).
    A `floor` below 1 lets small objects be magnified (z < 1: the window smaller than the patch)."""
    return float(max(floor, np.max(_rule_per_axis(extent, patch))))


def zoom_factors(extent: np.ndarray, patch: np.ndarray, floor: float = 1.0, anisotropy: float = 1.0) -> np.ndarray:
    """Per-axis zooms (z, y, x): the seed paper's rule on every axis (`anisotropy` 1, the default), or each axis's
    own (extent_d + patch_d / 3) / patch_d, at least `floor` and at least the largest zoom / `anisotropy` (> 1:
    an elongated object keeps more of its cross-section than the isotropic rule leaves it)."""
    iso = zoom_factor(extent, patch, floor)
    if anisotropy <= 1.0:
        return np.full(3, iso)
    own = np.maximum(_rule_per_axis(extent, patch), floor)
    return np.maximum(own, iso / anisotropy)


Region = tuple[slice, slice, slice]


def union_region(*regions: Region | None) -> Region | None:
    """The bounding box (z, y, x slices) of the given regions (None ones ignored); None when all are None."""
    regions = [r for r in regions if r is not None]
    if not regions:
        return None
    return tuple(slice(min(r[a].start for r in regions), max(r[a].stop for r in regions)) for a in range(3))


def region_voxels(region: Region) -> int:
    return int(np.prod([max(s.stop - s.start, 0) for s in region]))


def relative(region: Region, origin) -> Region:
    """Volume slices (z, y, x) as slices of an array whose first voxel is volume index `origin`."""
    return tuple(slice(s.start - o, s.stop - o) for s, o in zip(region, origin))


@dataclass(frozen=True)
class Window:
    """A block of the volume (start, size: voxels, (z, y, x)) resampled onto `patch`."""

    start: Triple
    size: Triple
    patch: Triple
    shape: Triple  # the volume's shape (z, y, x)

    # ------------------------------------------------------------------ construction
    @classmethod
    def around(cls, lo, hi, patch, shape, zoom_extra: float = 1.0, min_zoom: float = 1.0,
               anisotropy: float = 1.0) -> "Window":
        """Window centred on the inclusive extent [lo, hi] (z, y, x), sized by the zoom rule times zoom_extra.
        The rule's floor is `min_zoom` (default 1); below 1 small objects are magnified. `anisotropy` > 1 lets the
        axes' zooms differ up to that ratio (`zoom_factors`)."""
        lo, hi = np.asarray(lo, float), np.asarray(hi, float)
        patch_a = np.asarray(patch, float)
        zoom = zoom_factors(hi - lo + 1, patch_a, floor=min_zoom, anisotropy=anisotropy) * zoom_extra
        smallest = np.maximum(np.round(patch_a * min(min_zoom, 1.0)), 1.0)  # the patch unless magnifying
        size = np.maximum(np.round(patch_a * zoom), smallest).astype(int)
        centre = (lo + hi) / 2.0
        start = np.floor(centre - (size - 1) / 2.0 + 0.5).astype(int)
        return cls(tuple(int(v) for v in start), tuple(int(v) for v in size), tuple(int(v) for v in patch),
                   tuple(int(v) for v in shape))

    @classmethod
    def identity(cls, patch) -> "Window":
        """The window that is the whole of a patch-sized volume (patch coordinates = volume coordinates)."""
        p = tuple(int(v) for v in patch)
        return cls((0, 0, 0), p, p, p)

    def grown(self, patch) -> "Window":
        """The same centre and scale on a larger `patch` (z, y, x): context around this window."""
        patch_a = np.asarray(patch, float)
        size = np.round(patch_a * self.scale).astype(int)
        centre = np.asarray(self.start, float) + (np.asarray(self.size, float) - 1) / 2.0
        start = np.floor(centre - (size - 1) / 2.0 + 0.5).astype(int)
        return Window(tuple(int(v) for v in start), tuple(int(v) for v in size), tuple(int(v) for v in patch_a),
                      self.shape)

    def offset(self, origin, shape) -> "Window":
        """This window in the frame of a sub-volume of `shape` (z, y, x) whose first voxel is volume index `origin`."""
        return Window(tuple(int(s - o) for s, o in zip(self.start, origin)), self.size, self.patch,
                      tuple(int(v) for v in shape))

    @classmethod
    def native(cls, region: Region, shape) -> "Window":
        """The window over volume slices `region` (z, y, x) at the volume's own resolution (patch = size)."""
        start = tuple(int(s.start) for s in region)
        size = tuple(int(s.stop - s.start) for s in region)
        return cls(start, size, size, tuple(int(v) for v in shape))

    def zoomed(self, factor: float) -> "Window":
        """The same centre, `factor` times larger, capped where it would only add padding on every axis."""
        centre = np.asarray(self.start, float) + (np.asarray(self.size, float) - 1) / 2.0
        size = np.round(np.asarray(self.size, float) * factor)
        cap = np.max(np.asarray(self.shape, float) / np.asarray(self.patch, float))
        size = np.minimum(size, np.round(np.asarray(self.patch, float) * max(cap, self.zoom)))
        size = np.maximum(size, self.size).astype(int)
        start = np.floor(centre - (size - 1) / 2.0 + 0.5).astype(int)
        return Window(tuple(int(v) for v in start), tuple(int(v) for v in size), self.patch, self.shape)

    @property
    def scale(self) -> np.ndarray:
        """Volume voxels per patch voxel, per axis (z, y, x)."""
        return np.asarray(self.size, float) / np.asarray(self.patch, float)

    @property
    def native_resolution(self) -> bool:
        """One patch voxel per volume voxel (patch == size): the values need no resampling."""
        return self.patch == self.size

    @property
    def zoom(self) -> float:
        return float(self.scale.max())

    # ------------------------------------------------------------------ coordinates
    def to_patch(self, points: np.ndarray) -> np.ndarray:
        """Volume coordinates (N, 3) (z, y, x) -> continuous patch coordinates (N, 3)."""
        pts = np.asarray(points, float).reshape(-1, 3)
        return (pts - np.asarray(self.start) + 0.5) / self.scale - 0.5

    def to_volume(self, points: np.ndarray) -> np.ndarray:
        """Patch coordinates (N, 3) (z, y, x) -> volume coordinates (N, 3), rounded to voxel indices."""
        pts = np.asarray(points, float).reshape(-1, 3)
        return np.round(np.asarray(self.start) + (pts + 0.5) * self.scale - 0.5).astype(np.int64)

    def box_to_patch(self, lo, hi) -> tuple[np.ndarray, np.ndarray]:
        """Inclusive volume box [lo, hi] (z, y, x) -> half-open patch index range [a, b), at least 1 voxel."""
        a = np.ceil(self.to_patch(np.asarray(lo, float) - 0.5)[0] - 1e-6)
        b = np.floor(self.to_patch(np.asarray(hi, float) + 0.5)[0] + 1e-6) + 1
        patch = np.asarray(self.patch)
        a = np.clip(a, 0, patch - 1).astype(int)
        b = np.clip(np.maximum(b, a + 1), 1, patch).astype(int)
        return a, b

    def overlaps(self, lo, hi) -> bool:
        """Whether the inclusive volume box [lo, hi] (z, y, x) shares a voxel with the window."""
        return all(l <= s + n - 1 and h >= s for l, h, s, n in zip(lo, hi, self.start, self.size))

    def inside(self) -> tuple[slice, slice, slice]:
        """The part of the window inside the volume, as volume slices (z, y, x)."""
        return tuple(slice(max(s, 0), min(s + n, d)) for s, n, d in zip(self.start, self.size, self.shape))

    def border_faces_inside(self) -> list[tuple[int, int]]:
        """Window faces (axis, 0=low|1=high) that lie strictly inside the volume (not on its border)."""
        faces = []
        for axis, (s, n, d) in enumerate(zip(self.start, self.size, self.shape)):
            if s > 0:
                faces.append((axis, 0))
            if s + n < d:
                faces.append((axis, 1))
        return faces

    # ------------------------------------------------------------------ resampling
    def _sample_coords(self, axis: int) -> np.ndarray:
        i = np.arange(self.patch[axis], dtype=float)
        return self.start[axis] + (i + 0.5) * self.scale[axis] - 0.5

    @staticmethod
    def _outside(c: np.ndarray, n: int) -> np.ndarray:
        """Which sample coordinates `c` of one axis lie outside a volume of `n` voxels (what `crop` fills)."""
        return (c < -0.5) | (c > n - 0.5)

    def inside_mask(self, shape) -> torch.Tensor:
        """Patch voxels (z, y, x, bool) whose sample lies inside a volume of `shape` (those `crop` does not fill)."""
        axes = [torch.as_tensor(~self._outside(self._sample_coords(a), shape[a])) for a in range(3)]
        return axes[0][:, None, None] & axes[1][None, :, None] & axes[2][None, None, :]

    def crop(self, volume: np.ndarray, fill: float = 0.0,
             transform: Callable[[np.ndarray], np.ndarray] | None = None) -> torch.Tensor:
        """Resample `volume` (z, y, x) inside the window onto the patch, trilinear; `fill` outside the volume.

        Only the voxels the interpolation touches are read (at most 2 per patch voxel and axis),
        so windows over huge volumes stay cheap. `transform` maps the gathered voxels first
        (e.g. `lambda v: v == label`), before conversion to float32.
        """
        if self.start == (0, 0, 0) and self.size == self.patch == tuple(volume.shape):  # the identity window
            sub = transform(volume) if transform is not None else volume
            return torch.from_numpy(np.array(sub, dtype=np.float32))
        idx, weights, outside = [], [], []
        for axis in range(3):
            c = self._sample_coords(axis)
            n = volume.shape[axis]
            f = np.floor(c)
            i0 = np.clip(f, 0, n - 1).astype(np.int64)
            i1 = np.clip(f + 1, 0, n - 1).astype(np.int64)
            w = np.clip(c - f, 0.0, 1.0)
            w = np.where(c < 0, 0.0, w)  # edge replication within half a voxel of the border
            needed, inv = np.unique(np.concatenate([i0, i1]), return_inverse=True)
            idx.append((needed, inv[: len(c)], inv[len(c):]))
            weights.append(torch.as_tensor(w, dtype=torch.float32))
            outside.append(torch.as_tensor(self._outside(c, n)))
        sub = volume[np.ix_(idx[0][0], idx[1][0], idx[2][0])]
        if transform is not None:
            sub = transform(sub)
        x = torch.from_numpy(np.ascontiguousarray(sub, dtype=np.float32))
        for axis in range(3):
            _, j0, j1 = idx[axis]
            shape = [1, 1, 1]
            shape[axis] = -1
            w = weights[axis].view(shape)
            a = x.index_select(axis, torch.from_numpy(j0))
            b = x.index_select(axis, torch.from_numpy(j1))
            x = a + (b - a) * w
            mask = outside[axis]
            if mask.any():
                x.index_fill_(axis, torch.nonzero(mask).flatten(), float(fill))
        return x

    def crop_nearest(self, volume: np.ndarray, fill: int = 0) -> np.ndarray:
        """Nearest-neighbour resampling of a label map (z, y, x) onto the patch; `fill` outside the volume."""
        idx, outside = [], []
        for axis in range(3):
            c = np.floor(self._sample_coords(axis) + 0.5).astype(np.int64)
            n = volume.shape[axis]
            outside.append((c < 0) | (c >= n))
            idx.append(np.clip(c, 0, n - 1))
        out = np.asarray(volume[np.ix_(*idx)])
        if any(o.any() for o in outside):
            out = out.copy()
            out[outside[0]] = fill
            out[:, outside[1]] = fill
            out[:, :, outside[2]] = fill
        return out

    def paste(self, patch_values: torch.Tensor, max_voxels: int = 1 << 24) -> Iterator[tuple[tuple[slice, ...], np.ndarray]]:
        """Resample patch values (z, y, x) back onto the window's part inside the volume, trilinear.

        Yields (volume slices, float32 array) slabs along z, each at most about `max_voxels`,
        so the memory of a paste stays bounded whatever the window size.
        """
        region = self.inside()
        if any(s.stop <= s.start for s in region):
            return
        vals = patch_values.detach().float().cpu()
        ny, nx = region[1].stop - region[1].start, region[2].stop - region[2].start
        nz = region[0].stop - region[0].start
        step = max(1, int(max_voxels // max(ny * nx, 1)))
        if self.native_resolution:  # the values themselves (what the interpolation gives)
            local = tuple(slice(r.start - s, r.stop - s) for r, s in zip(region, self.start))
            sub = vals[local]
            for z0 in range(0, nz, step):
                z1 = min(nz, z0 + step)
                yield (slice(region[0].start + z0, region[0].start + z1), region[1], region[2]), sub[z0:z1].numpy()
            return
        axes = []
        for axis in range(3):
            s = np.arange(region[axis].start, region[axis].stop, dtype=float)
            p = (s - self.start[axis] + 0.5) / self.scale[axis] - 0.5
            n = self.patch[axis]
            p = np.clip(p, 0, n - 1)
            f = np.floor(p)
            i0 = f.astype(np.int64)
            i1 = np.minimum(i0 + 1, n - 1)
            axes.append((torch.from_numpy(i0), torch.from_numpy(i1), torch.as_tensor(p - f, dtype=torch.float32)))

        def matrix(axis: int) -> torch.Tensor:
            """The (region, patch) linear interpolation weights along one axis (two nonzeros per row)."""
            i0, i1, w = axes[axis]
            m = torch.zeros(len(i0), self.patch[axis])
            rows = torch.arange(len(i0))
            m.index_put_((rows, i0), 1.0 - w, accumulate=True)
            m.index_put_((rows, i1), w, accumulate=True)
            return m

        # y and x first at patch depth, then z slab by slab: matrix products with the interpolation weights.
        plane = torch.matmul(matrix(1), torch.matmul(vals, matrix(2).T)).reshape(vals.shape[0], ny * nx)
        mz = matrix(0)
        for z0 in range(0, nz, step):
            z1 = min(nz, z0 + step)
            slab = torch.matmul(mz[z0:z1], plane).view(z1 - z0, ny, nx)
            zs = slice(region[0].start + z0, region[0].start + z1)
            yield (zs, region[1], region[2]), slab.numpy()
