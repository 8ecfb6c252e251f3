"""Supervoxel pseudo-labels: scikit-image SLIC on every real image, computed once per volume into a cache.

nnInteractive trained on SuperVoxels (SAM masks propagated to 3D) as extra "segment this" targets; the
cheap equivalent here is SLIC on the image itself, at two scales (about 60 and 300 supervoxels per volume),
restricted to the foreground (voxels above 4 % of the range, opened), on a grid reduced to at most
`max_voxels`. Each result is an ordinary training case (`imgs`, `gts`, `spacing`, (z, y, x) arrays and
(x, y, z) spacing) in the cache folder, so the training reads it like any other case (the `pseudo` source).

    python -m training.pseudo --data data/train data/images --out .cache/pseudo
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np
from scipy import ndimage

from .data import list_cases

VERSION = 1


def reduce_grid(image: np.ndarray, spacing_xyz: np.ndarray, max_voxels: float) -> tuple[np.ndarray, np.ndarray]:
    """The image (z, y, x) zoomed (linear) to at most `max_voxels`, and its new spacing (x, y, z)."""
    factor = min(1.0, (max_voxels / image.size) ** (1 / 3))
    if factor >= 1.0:
        return image, spacing_xyz
    small = ndimage.zoom(image.astype(np.float32), factor, order=1)
    real = np.asarray(small.shape, float) / np.asarray(image.shape, float)  # per axis (z, y, x)
    return small, np.asarray(spacing_xyz, float) / real[::-1]


def foreground(image: np.ndarray) -> np.ndarray:
    """Voxels above 4 % of the intensity range, morphologically opened (air and padding excluded)."""
    lo, hi = float(image.min()), float(image.max())
    fg = image > lo + 0.04 * (hi - lo)
    return ndimage.binary_opening(fg, iterations=1) if fg.any() else fg


def supervoxels(image: np.ndarray, spacing_xyz: np.ndarray, n_segments: int, min_voxels: int = 30) -> np.ndarray:
    """SLIC supervoxels (labels 1..N, 0 outside the foreground) of an image (z, y, x) with spacing (x, y, z)."""
    from skimage.segmentation import relabel_sequential, slic

    mask = foreground(image)
    if not mask.any():
        return np.zeros(image.shape, np.int32)
    x = image.astype(np.float32)
    x = (x - x.min()) / max(float(x.max() - x.min()), 1e-6)
    labels = slic(x, n_segments=n_segments, compactness=0.05, channel_axis=None, mask=mask,
                  spacing=np.asarray(spacing_xyz, float)[::-1], start_label=1, enforce_connectivity=True)
    sizes = np.bincount(labels.ravel())
    labels[sizes[labels] < min_voxels] = 0
    return relabel_sequential(labels)[0].astype(np.int32)


def _key(path: Path, n_segments: int, max_voxels: float) -> str:
    st = path.stat()
    text = f"{path.name}|{st.st_size}|{n_segments}|{max_voxels}|{VERSION}"
    return hashlib.sha1(text.encode()).hexdigest()[:10]


def build_one(path: Path, n: int, out: Path, max_voxels: float) -> Path | None:
    """Write `<out>/<stem>-sv<n>.npz` (+ .json) for one image unless already there; None when it has no image
    or no supervoxel."""
    dest = out / f"{path.stem}-sv{n}.npz"
    meta = out / f"{path.stem}-sv{n}.json"
    key = _key(path, n, max_voxels)
    if dest.is_file() and meta.is_file() and json.loads(meta.read_text()).get("key") == key:
        return dest
    with np.load(path, allow_pickle=False) as z:
        if "imgs" not in z.files:
            return None
        image, spacing = z["imgs"], np.asarray(z["spacing"], float)
    small, sp = reduce_grid(image, spacing, max_voxels)
    t0 = time.perf_counter()
    labels = supervoxels(small, sp, n)
    if labels.max() == 0:
        return None
    tmp = dest.with_name(f".{dest.stem}.tmp{os.getpid()}.npz")
    np.savez_compressed(tmp, imgs=np.clip(np.round(small), 0, 255).astype(np.uint8), gts=labels, spacing=sp)
    os.replace(tmp, dest)
    meta.write_text(json.dumps({"key": key, "source": path.name, "segments": n, "labels": {
        str(i): f"supervoxel {i}" for i in range(1, int(labels.max()) + 1)},
        "shape_zyx": list(small.shape), "seconds": round(time.perf_counter() - t0, 2)}, indent=1))
    return dest


def build(paths: Sequence[Path], out: Path, scales: Sequence[int] = (60, 300), max_voxels: float = 2e6,
          progress: bool = True, jobs: int = 1) -> list[Path]:
    """Write `<out>/<stem>-sv<N>.npz` for each image and scale unless already there; returns every file.
    `jobs` > 1: that many processes, the same files."""
    from tqdm import tqdm

    out.mkdir(parents=True, exist_ok=True)
    tasks = [(p, n) for p in paths for n in scales]
    bar = dict(total=len(tasks), desc="supervoxels", disable=not progress, file=sys.stderr)
    if jobs <= 1:
        done = [build_one(p, n, out, max_voxels) for p, n in tqdm(tasks, **bar)]
    else:
        from concurrent.futures import ProcessPoolExecutor
        from functools import partial
        with ProcessPoolExecutor(jobs) as pool:
            one = partial(build_one, out=out, max_voxels=max_voxels)
            done = list(tqdm(pool.map(one, [p for p, _ in tasks], [n for _, n in tasks]), **bar))
    return [d for d in done if d is not None]


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.pseudo", description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", nargs="+", default=["data/train", "data/images"],
                    help="folders (or files) of npz volumes with an `imgs` member (default: data/train data/images)")
    ap.add_argument("--out", default=".cache/pseudo", help="cache folder (default: .cache/pseudo)")
    ap.add_argument("--scales", type=int, nargs="+", default=[60, 300], help="supervoxels per volume (default 60 300)")
    ap.add_argument("--max-voxels", type=float, default=2e6, help="grid size limit for SLIC (default 2e6)")
    ap.add_argument("--jobs", type=int, default=1, help="processes (default 1; e.g. the cores of a GPU machine)")
    args = ap.parse_args(argv)
    paths = [p for d in args.data if Path(d).exists() for p in list_cases(d)]
    files = build(paths, Path(args.out), args.scales, args.max_voxels, jobs=args.jobs)
    print(f"{len(files)} pseudo-label cases in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
