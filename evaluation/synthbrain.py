"""A T1-like brain volume painted from a training SynthSeg label map, for tuning inference on a dense brain.

The training volumes hold no dense brain parcellation with an image (INIA19 has 724 labels, MNI152 two), and the
brain held-out must not be used for tuning. This paints one of the training label maps of `make data`
(`data/labelmaps/MR_SynthSeg_seg_*.npz`, 53 labels, 1 mm) with a fixed T1 contrast per tissue (white matter
bright, grey matter darker, CSF dark), a little blur and noise, keeps the 36 brain structures (no lesions,
no extra-cerebral labels), zeroes the rest (skull-stripped) and crops to the brain. Arrays (z, y, x), spacing
stored (x, y, z); labels 1..N with a names sidecar, as every converted case.

    python -m evaluation.synthbrain data/labelmaps/MR_SynthSeg_seg_01.npz runs/tune_fusion_cases
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from scipy import ndimage

# T1 intensity (0..1) by a name fragment of the SynthSeg label, first match wins
T1_BY_NAME = (("white matter", 0.8), ("cortex", 0.55), ("ventricle", 0.15), ("CSF", 0.15), ("thalamus", 0.66),
              ("caudate", 0.58), ("putamen", 0.62), ("pallidum", 0.72), ("brain-stem", 0.72), ("hippocampus", 0.54),
              ("amygdala", 0.55), ("accumbens", 0.58), ("ventral DC", 0.7), ("vessel", 0.45), ("optic chiasm", 0.7))


def t1_value(name: str) -> float | None:
    """The T1 intensity of a label by its name, None for a label that is not a brain structure here (lesions,
    extra-cerebral and unnamed labels match no fragment)."""
    return next((v for f, v in T1_BY_NAME if f in name), None)


def brain_labels(names: dict[str, str]) -> list[int]:
    """The label ids (of the converted map) that are brain structures with a T1 value."""
    return [int(k) for k, n in sorted(names.items(), key=lambda kv: int(kv[0])) if t1_value(n) is not None]


def paint_t1(labels: np.ndarray, names: dict[str, str], seed: int = 0) -> tuple[np.ndarray, np.ndarray, dict[str, str]]:
    """(uint8 image, uint8 labels 1..N, names) of the brain part of a label map (z, y, x)."""
    keep = brain_labels(names)
    lut = np.zeros(256, np.float32)
    for i in keep:
        lut[i] = t1_value(names[str(i)])
    brain = np.isin(labels, keep)
    box = ndimage.find_objects(brain.astype(np.uint8))[0]
    labels, brain = labels[box], brain[box]
    rng = np.random.default_rng(seed)
    image = ndimage.gaussian_filter(lut[labels], 0.6) + rng.normal(0, 0.03, labels.shape).astype(np.float32)
    image = ndimage.gaussian_filter(image, 0.4) * brain
    lo, hi = np.percentile(image, [0.5, 99.5])
    image = (np.clip((image - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8)
    new = np.zeros(256, np.uint8)
    new_names = {}
    for n, i in enumerate(keep, 1):
        new[i] = n
        new_names[str(n)] = names[str(i)]
    return image, new[np.where(brain, labels, 0)], new_names


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("labelmap", type=Path, help="a converted SynthSeg label map npz (gts, spacing) with its .json")
    ap.add_argument("out_dir", type=Path, help="folder for MR_SynthSegT1_<name>.npz and .json")
    ap.add_argument("--seed", type=int, default=0, help="noise seed (default 0)")
    args = ap.parse_args(argv)
    with np.load(args.labelmap) as npz:
        labels, spacing = npz["gts"], npz["spacing"]
    meta = json.loads(args.labelmap.with_suffix(".json").read_text())
    image, gts, names = paint_t1(labels, meta["labels"], args.seed)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    stem = "MR_SynthSegT1_" + args.labelmap.stem.split("_")[-2] + "_" + args.labelmap.stem.split("_")[-1]
    np.savez_compressed(args.out_dir / f"{stem}.npz", imgs=image, gts=gts, spacing=np.asarray(spacing, float))
    (args.out_dir / f"{stem}.json").write_text(json.dumps(
        {"labels": names, "source": f"{args.labelmap} painted T1-like by evaluation/synthbrain.py (training data)",
         "role": "tuning (training data)"}, indent=1))
    print(f"wrote {args.out_dir / stem}.npz: {image.shape}, {len(names)} structures")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
