"""`python -m training.curve`: held-out Dice against training time, from snapshots of a run's model.

Scores each native checkpoint (`<run>/snapshots/model_<step>.pt`, written with `--snapshot-every`) with the
evaluation harness in-process on held-out cases, with and without boxes, and writes a CSV and a PNG of
DSC_1 (box step), DSC_Final and DSC_AUC/4 against the training step (or, with `--log`, the training hours
read from the run's log.csv, summed over resumed sessions), one panel per box mode, one line per case,
beside the box-fill baseline. `--max-classes K` scores K evenly spread classes per case (cheaper). Rows already
in `<out>/curve.csv` are kept (a step scored there is not scored again), so snapshots can be added as a run goes.
"""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np
import torch


def snapshot_step(path: Path) -> int:
    """The training step recorded in a native checkpoint's meta."""
    return int(torch.load(path, map_location="cpu", weights_only=True).get("meta", {}).get("step", -1))


def training_hours(log_csv: Path) -> tuple[np.ndarray, np.ndarray]:
    """(steps, cumulative training hours) from a run's log.csv: the sum of s_per_step over the logged steps
    (validation time excluded; resumed sessions add up, since the log keeps every row)."""
    steps, seconds, last = [0], [0.0], 0
    with open(log_csv, newline="") as fh:
        for r in csv.DictReader(fh):
            if not r.get("s_per_step"):
                continue
            step = int(r["step"])
            seconds.append(seconds[-1] + float(r["s_per_step"]) * (step - last))
            steps.append(step)
            last = step
    return np.asarray(steps), np.asarray(seconds) / 3600.0


INTEGER = ("step", "classes")
NUMERIC = ("hours", "DSC_1", "DSC_Final", "DSC_AUC", "NSD_Final", "boxfill_DSC_Final")


def read_rows(path: Path) -> list[dict]:
    """The rows of an earlier curve.csv (numbers parsed), or none."""
    if not path.exists():
        return []
    with open(path, newline="") as fh:
        return [{k: int(v) if k in INTEGER else float(v) if k in NUMERIC else v for k, v in r.items()}
                for r in csv.DictReader(fh)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.curve", description=__doc__.splitlines()[0])
    ap.add_argument("checkpoints", nargs="+", type=Path, help="native checkpoints (model.pt snapshots)")
    ap.add_argument("--cases", default="data/heldout", help="held-out cases (training-format npz)")
    ap.add_argument("--out", type=Path, default=Path("runs/curve"), help="output folder")
    ap.add_argument("--box-modes", default="box,nobox", help="comma-separated: box, nobox")
    ap.add_argument("--max-classes", type=int, default=0, help="score at most K evenly spread classes per case (0: all)")
    ap.add_argument("--log", type=Path, default=None, help="the run's log.csv: plot against training hours")
    args = ap.parse_args(argv)

    from evaluation.baselines import make_baseline
    from evaluation.harness import InProcessPredictor, find_cases, run_case
    from inference.predictor import load_predictor

    from .train import validation_case

    modes = [m for m in args.box_modes.split(",") if m]
    cases = [validation_case(p, args.max_classes) for p in find_cases(args.cases)]
    base = {(c.name, m): run_case(c, make_baseline("boxfill"), m == "box").row["DSC_Final"] for c in cases for m in modes}
    hours_of = training_hours(args.log) if args.log else None
    args.out.mkdir(parents=True, exist_ok=True)
    rows = read_rows(args.out / "curve.csv")
    done = {int(r["step"]) for r in rows}
    steps_of = {ckpt: snapshot_step(ckpt) for ckpt in args.checkpoints}  # one read of each file for its step
    for ckpt in sorted(args.checkpoints, key=steps_of.get):
        step = steps_of[ckpt]
        if step in done:
            continue
        hours = float(np.interp(step, *hours_of)) if hours_of is not None else float("nan")
        model = InProcessPredictor.from_model(load_predictor(ckpt, "cpu", per_class_run_s=1e9))
        for case in cases:
            for mode in modes:
                r = run_case(case, model, mode == "box").row
                rows.append({"step": step, "hours": round(hours, 3), "mode": mode, "case": case.name,
                             "classes": len(case.labels), "DSC_1": r["DSC_1"], "DSC_Final": r["DSC_Final"],
                             "DSC_AUC": r["DSC_AUC"], "NSD_Final": r["NSD_Final"],
                             "boxfill_DSC_Final": base[(case.name, mode)]})
                print(f"step {step:6d} ({hours:.2f} h) {mode:5s} {case.name}: DSC_1 {r['DSC_1']:.3f} "
                      f"DSC_Final {r['DSC_Final']:.3f} DSC_AUC {r['DSC_AUC']:.3f}", flush=True)
        write_rows(rows, args.out / "curve.csv")  # after each checkpoint: an interrupted run keeps its rows
    plot(rows, modes, args.out / "curve.png", hours=hours_of is not None)
    print(f"wrote {args.out / 'curve.csv'} and {args.out / 'curve.png'}")
    return 0


def write_rows(rows: list[dict], dest: Path) -> None:
    """The curve's rows as CSV, written under a temporary name and renamed."""
    tmp = dest.with_suffix(".tmp")
    with open(tmp, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(sorted(rows, key=lambda r: (r["step"], r["mode"], r["case"])))
    tmp.replace(dest)


def plot(rows: list[dict], modes: list[str], dest: Path, hours: bool) -> None:
    """DSC_Final (solid) and DSC_1 (dotted, box mode) per case against step or hours, box-fill dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xkey = "hours" if hours else "step"
    fig, axes = plt.subplots(1, len(modes), figsize=(6 * len(modes), 4.2), squeeze=False)
    cases = sorted({r["case"] for r in rows})
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, mode in zip(axes[0], modes):
        for i, case in enumerate(cases):
            sel = sorted((r for r in rows if r["mode"] == mode and r["case"] == case), key=lambda r: r[xkey])
            xs = [r[xkey] for r in sel]
            col = colours[i % len(colours)]
            ax.plot(xs, [r["DSC_Final"] for r in sel], "o-", color=col, ms=3, label=f"{case} DSC_Final")
            if mode == "box":
                ax.plot(xs, [r["DSC_1"] for r in sel], "o:", color=col, ms=2, label=f"{case} DSC_1")
            ax.axhline(sel[0]["boxfill_DSC_Final"], color=col, ls="--", lw=0.8)
        ax.set_title(f"held-out, {'with' if mode == 'box' else 'without'} box (dashed: box-fill DSC_Final)")
        ax.set_xlabel("training hours on 2 CPU cores" if hours else "training step")
        ax.set_ylabel("Dice")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(dest, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
