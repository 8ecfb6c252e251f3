"""`python -m evaluation.demo`: run predict.sh over the sample cases as the organizer does, and show it.

Box step plus 5 click steps per case (subprocess mode: start-up counted), the box-fill baseline
beside it, the per-step DSC/NSD table and runtime per class, the curves plot, and one PNG per case
with a few slices of the image, the ground truth (green) and the final prediction (red) outlined.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

from evaluation.baselines import make_baseline
from evaluation.harness import evaluate_folder
from evaluation.predictors import SubprocessPredictor
from evaluation.report import read_csv

ROOT = Path(__file__).resolve().parent.parent


def outlines(labels: np.ndarray) -> np.ndarray:
    """Boolean mask of voxels on the border between different labels of a 2D label map (y, x)."""
    edge = np.zeros(labels.shape, bool)
    edge[1:] |= labels[1:] != labels[:-1]
    edge[:-1] |= labels[1:] != labels[:-1]
    edge[:, 1:] |= labels[:, 1:] != labels[:, :-1]
    edge[:, :-1] |= labels[:, 1:] != labels[:, :-1]
    return edge & ((labels > 0) | np.roll(labels > 0, 1, 0) | np.roll(labels > 0, 1, 1))


def render_slices(image: np.ndarray, gts: np.ndarray, segs: np.ndarray, path: Path, title: str, n: int = 3) -> None:
    """Save n axial slices (z) through the labelled range: image in grey, GT outlined green, prediction red."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    zs = np.flatnonzero(gts.any(axis=(1, 2)))
    picks = zs[np.linspace(0, len(zs) - 1, n + 2).round().astype(int)[1:-1]] if len(zs) else [image.shape[0] // 2]
    fig, axes = plt.subplots(1, len(picks), figsize=(4.2 * len(picks), 4.4))
    for ax, z in zip(np.atleast_1d(axes), picks):
        rgb = np.repeat(image[z][..., None] / 255.0, 3, axis=2)
        rgb[outlines(gts[z])] = (0.1, 0.9, 0.1)
        rgb[outlines(segs[z])] = (1.0, 0.15, 0.15)
        ax.imshow(rgb, interpolation="nearest")
        ax.set_title(f"z = {z}", fontsize=9)
        ax.axis("off")
    fig.suptitle(f"{title}   (green: ground truth, red: prediction)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m evaluation.demo", description=__doc__.splitlines()[0])
    ap.add_argument("--cases", default=str(ROOT / "samples"), help="folder of training-format npz cases")
    ap.add_argument("--out", default=str(ROOT / "demo_out"), help="output folder")
    ap.add_argument("--weights", default=str(ROOT / "weights" / "default.pt"), help="checkpoint predict.sh loads")
    ap.add_argument("--command", default="sh predict.sh", help="container-style command run once per step")
    ap.add_argument("--no-box", action="store_true", help="also run the cases without the box step")
    args = ap.parse_args(argv)

    out = Path(args.out)
    weights = Path(args.weights).resolve()
    if not weights.exists():
        print(f"error: no weights at {weights}", file=sys.stderr)
        return 2
    model = SubprocessPredictor(args.command, ROOT, name="model", log_dir=out / "logs",
                                env={"SEGFM_WEIGHTS": str(weights), "PYTHON": os.environ.get("PYTHON", sys.executable)})
    modes = ("box", "nobox") if args.no_box else ("box",)
    t0 = time.time()
    evaluate_folder(args.cases, out, [model, make_baseline("boxfill")], modes, save_predictions=True)
    print(f"\nscored in {time.time() - t0:.0f} s; per-case metrics in {out / 'metrics.csv'}\n")
    print((out / "summary.md").read_text())

    rows = [r for r in read_csv(out / "metrics.csv") if r.get("Predictor") == "model"]
    print("\nRuntime of predict.sh per class per run (start-up and model loading included):")
    for r in rows:
        steps = [float(r[f"RunningTime_{i}"]) for i in range(1, 7) if r.get(f"RunningTime_{i}") not in ("", None)]
        steps = [s for s in steps if s > 0]
        k = int(float(r["num_class"]))
        print(f"  {r['CaseName']:40s} {r.get('BoxMode', ''):5s} {k:3d} classes: "
              f"{np.mean(steps) / k:.2f} s/class/run, total {sum(steps):.1f} s of {90 * k} s allowed")

    for path in sorted(Path(args.cases).glob("*.npz")):
        pred_file = out / "predictions" / "model_box" / path.name
        if not pred_file.is_file():
            continue
        case = np.load(path)
        segs = np.load(pred_file)["segs"]
        png = out / f"{path.stem}_slices.png"
        render_slices(case["imgs"], case["gts"], segs, png, f"{path.stem}: after the 5th click")
        print(f"wrote {png}")
    print(f"wrote {out / 'curves.png'} and {out / 'summary.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
