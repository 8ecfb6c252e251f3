"""The resolution ceiling: how much Dice the coarse window's grid alone costs each structure.

    python -m evaluation.ceiling CASE.npz [CASE.npz ...] [--patch 64] [--thin 8] [--list 10]

A structure's ground truth (from the case's `gts`, arrays (z, y, x)) goes through the round trip that every
prediction takes: resampled trilinearly into the zoom-rule window around its bounding box (`Window.around`, the
network's patch), pasted back trilinearly (`Window.paste`) and thresholded at 0.5. Its Dice with the original is
the best any network could score there at that patch size, with a perfect soft answer in the window. Structures
are grouped thin / thick by their thickest point (as `evaluation.groups --by thickness`). When the thin ones keep
a ceiling near 1, their low scores are the network's, not the grid's. Read only the cases you may read: run it
on training cases for decisions.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from evaluation.groups import max_thickness
from evaluation.metrics import dice
from inference.window import Window


def round_trip(mask: np.ndarray, patch: tuple[int, int, int]) -> tuple[np.ndarray, float]:
    """A bool mask (z, y, x) after window crop + paste at the zoom rule around its bounding box, and that zoom."""
    idx = np.argwhere(mask)
    window = Window.around(idx.min(0), idx.max(0), patch, mask.shape)
    soft = window.crop(mask)  # bool in, float32 out: the mask's share of each patch voxel
    back = np.zeros(mask.shape, np.float32)
    for region, values in window.paste(soft):
        back[region] = values
    return back > 0.5, window.zoom


def case_ceiling(gts: np.ndarray, patch: tuple[int, int, int]) -> list[dict]:
    """One row per label of gts (z, y, x): label, thickness (voxels), window zoom, ceiling Dice, voxels."""
    thickness = max_thickness(gts)
    rows = []
    for label in np.unique(gts)[1:]:
        mask = gts == label
        back, zoom = round_trip(mask, patch)
        rows.append({"label": int(label), "thickness": thickness[str(int(label))], "zoom": zoom,
                     "ceiling": float(dice(back, mask)), "voxels": int(mask.sum())})
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("cases", nargs="+", type=Path, help="npz cases with gts (z, y, x)")
    ap.add_argument("--patch", type=int, default=64, help="the network's patch edge (voxels; default 64, lite)")
    ap.add_argument("--thin", type=float, default=8.0, help="thin means at most this many voxels thick")
    ap.add_argument("--list", type=int, default=0, help="also list this many structures, lowest ceiling first")
    args = ap.parse_args(argv)
    print("| case | group | n | mean window zoom | ceiling Dice (mean) | lowest |\n|---|---|---|---|---|---|")
    for path in args.cases:
        with np.load(path) as data:
            gts = np.asarray(data["gts"])
        rows = case_ceiling(gts, (args.patch,) * 3)
        for group, keep in (("thin", lambda r: r["thickness"] <= args.thin),
                            ("thick", lambda r: r["thickness"] > args.thin)):
            sel = [r for r in rows if keep(r)]
            if sel:
                print(f"| {path.stem} | {group} | {len(sel)} | {np.mean([r['zoom'] for r in sel]):.2f} | "
                      f"{np.mean([r['ceiling'] for r in sel]):.3f} | {min(r['ceiling'] for r in sel):.3f} |")
        for r in sorted(rows, key=lambda r: r["ceiling"])[:args.list]:
            print(f"    label {r['label']}: {r['thickness']:.1f} voxels thick, {r['voxels']} voxels, "
                  f"zoom {r['zoom']:.2f}, ceiling {r['ceiling']:.3f}")


if __name__ == "__main__":
    main()
