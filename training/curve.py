"""`python -m training.curve`: held-out Dice against training time, from snapshots of a run's model.

Scores each native checkpoint (e.g. copies of `<run>/model.pt` taken while the run trained) with the
evaluation harness in-process on held-out cases, with and without boxes, and writes a CSV and a PNG of
DSC_1 (box step), DSC_Final and DSC_AUC/4 against the training step, beside the box-fill baseline.
"""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import torch


def snapshot_step(path: Path) -> int:
    """The training step recorded in a native checkpoint's meta."""
    return int(torch.load(path, map_location="cpu", weights_only=True).get("meta", {}).get("step", -1))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.curve", description=__doc__.splitlines()[0])
    ap.add_argument("checkpoints", nargs="+", type=Path, help="native checkpoints (model.pt snapshots)")
    ap.add_argument("--cases", default="data/heldout", help="held-out cases (training-format npz)")
    ap.add_argument("--out", type=Path, default=Path("runs/curve"), help="output folder")
    ap.add_argument("--box-modes", default="box,nobox", help="comma-separated: box, nobox")
    ap.add_argument("--seconds-per-step", type=float, default=0.0,
                    help="measured seconds per step of the run, noted in the x-axis label")
    args = ap.parse_args(argv)

    from evaluation.baselines import make_baseline
    from evaluation.harness import InProcessPredictor, evaluate_folder
    from inference.predictor import load_predictor

    modes = [m for m in args.box_modes.split(",") if m]
    rows = []
    base = evaluate_folder(args.cases, args.out / "boxfill", make_baseline("boxfill"), modes, progress=False)
    steps_of = {ckpt: snapshot_step(ckpt) for ckpt in args.checkpoints}  # one read of each file for its step
    for ckpt in sorted(args.checkpoints, key=steps_of.get):
        step = steps_of[ckpt]
        model = InProcessPredictor.from_model(load_predictor(ckpt, "cpu"))
        for r in evaluate_folder(args.cases, args.out / f"step{step}", model, modes, progress=False):
            rows.append({"step": step, "mode": r["BoxMode"], "case": r["CaseName"], "DSC_1": r["DSC_1"],
                         "DSC_Final": r["DSC_Final"], "DSC_AUC": r["DSC_AUC"], "NSD_Final": r["NSD_Final"]})
            print(f"step {step:5d} {r['BoxMode']:5s} {r['CaseName']}: DSC_1 {r['DSC_1']:.3f} "
                  f"DSC_Final {r['DSC_Final']:.3f} DSC_AUC {r['DSC_AUC']:.3f}", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "curve.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(modes), figsize=(5.5 * len(modes), 4), squeeze=False)
    for ax, mode in zip(axes[0], modes):
        sel = [r for r in rows if r["mode"] == mode]
        steps = sorted({r["step"] for r in sel})
        for key, style in (("DSC_1", "o-"), ("DSC_Final", "s-"), ("DSC_AUC", "^-")):
            if mode == "nobox" and key == "DSC_1":
                continue
            ys = [sum(r[key] for r in sel if r["step"] == s) / max(1, sum(r["step"] == s for r in sel)) for s in steps]
            if key == "DSC_AUC":
                ys = [y / 4 for y in ys]
            ax.plot(steps, ys, style, label=key + (" / 4" if key == "DSC_AUC" else ""))
        for r in base:
            if r["BoxMode"] == mode:
                ax.axhline(r["DSC_Final"], color="grey", ls="--", lw=1, label="box-fill baseline DSC_Final")
        ax.set_title(f"held-out, {'with' if mode == 'box' else 'without'} box")
        ax.set_xlabel("training step" + (f" ({args.seconds_per_step:.2f} s/step on 2 cores)" if args.seconds_per_step else ""))
        ax.set_ylabel("Dice")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out / "curve.png", dpi=110)
    print(f"wrote {args.out / 'curve.csv'} and {args.out / 'curve.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
