"""`python -m inference.serve_demo`: segment one organ of a sample CT through the server and the real client, as a
viewer would, and save the overlay (docs/server_CT_overlay.png).

The server (`inference.serve.make_app`) runs in a thread on a free local port; `nninteractive-client`'s
nnInteractiveRemoteInferenceSession sends the image, a 2D box on the organ's middle axial slice (or its 3D box
with --box3d) and clicks placed on the errors of the returned mask by the organizer's rule (evaluation/clicks.py).
The figure shows axial slices (z) of the image with the mask the client received (filled), the ground truth
(outlined) and the prompts.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def segment_through_server(image: np.ndarray, gt: np.ndarray, clicks: int, box3d: bool, checkpoint=None):
    """The mask (z, y, x) the real client holds after the box and `clicks` clicks, the box and the clicks."""
    from nnInteractive.inference.remote import nnInteractiveRemoteInferenceSession

    from evaluation.clicks import simulate_click

    from .predictor import load_predictor
    from .serve import ServerThread, make_app

    zs = np.flatnonzero(gt.any(axis=(1, 2)))
    z = int(zs[len(zs) // 2])
    ys, xs = np.nonzero(gt[z])
    zr = [int(zs.min()), int(zs.max()) + 1] if box3d else [z, z + 1]
    box = [zr, [int(ys.min()), int(ys.max()) + 1], [int(xs.min()), int(xs.max()) + 1]]
    placed = []
    with ServerThread(make_app(load_predictor(checkpoint, "cpu", routes=False))) as url:
        with nnInteractiveRemoteInferenceSession(url) as client:
            client.set_image(image[None], {"spacing": [3.0, 3.0, 3.0]})
            buf = np.zeros(image.shape, np.uint8)
            client.set_target_buffer(buf)
            client.add_bbox_interaction(box, True)
            for _ in range(clicks):
                found = simulate_click(buf, gt)
                if found is None:
                    break
                client.add_point_interaction(found[0], found[1] == "fg")
                placed.append(found)
    return buf, box, placed


def render(image, gt, mask, box, clicks, path: Path, title: str) -> None:
    """Three axial slices: the box's slice and those of the clicks (else others through the organ); the mask filled,
    the ground truth outlined."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    from evaluation.demo import outlines

    zs = np.flatnonzero(gt.any(axis=(1, 2)))
    z_box = box[0][0] if box[0][1] - box[0][0] == 1 else int(zs[len(zs) // 2])
    picks = [z_box]
    for z in [int(c[0][0]) for c in clicks] + [int(zs[len(zs) // 5]), int(zs[(4 * len(zs)) // 5])]:
        if len(picks) < 3 and z not in picks:
            picks.append(z)
    picks.sort()
    fig, axes = plt.subplots(1, len(picks), figsize=(4.3 * len(picks), 4.4))
    for ax, z in zip(np.atleast_1d(axes), picks):
        rgb = np.repeat(image[z][..., None] / 255.0, 3, axis=2)
        fill = mask[z] > 0
        rgb[fill] = 0.55 * rgb[fill] + 0.45 * np.array([1.0, 0.2, 0.2])
        rgb[outlines(gt[z].astype(np.uint8))] = (0.1, 0.95, 0.1)
        ax.imshow(rgb, interpolation="nearest")
        if box[0][0] <= z < box[0][1]:
            ax.add_patch(Rectangle((box[2][0] - 0.5, box[1][0] - 0.5), box[2][1] - box[2][0], box[1][1] - box[1][0],
                                   fill=False, edgecolor="yellow", linewidth=1.2))
        for (cz, cy, cx), kind in clicks:
            if cz == z:
                ax.plot(cx, cy, "o", ms=6, mfc="cyan" if kind == "fg" else "magenta", mec="black")
        ax.set_title(f"z = {z}" + ("  (box slice)" if z == z_box and box[0][1] - box[0][0] == 1 else ""), fontsize=9)
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m inference.serve_demo", description=__doc__.splitlines()[0])
    ap.add_argument("--case", default=str(ROOT / "samples" / "CT_TotalSegSmall_example.npz"))
    ap.add_argument("--label", type=int, default=4, help="label id of the organ (default 4, the gallbladder)")
    ap.add_argument("--clicks", type=int, default=3, help="clicks after the box (default 3)")
    ap.add_argument("--box3d", action="store_true", help="send the organ's 3D box instead of a 2D box on one slice")
    ap.add_argument("--checkpoint", default=None, help="model (default: weights/default.pt)")
    ap.add_argument("--out", default=str(ROOT / "docs" / "server_CT_overlay.png"))
    args = ap.parse_args(argv)
    from evaluation.metrics import dice

    case = Path(args.case)
    with np.load(case) as d:
        image, gts = d["imgs"], d["gts"]
    sidecar = case.with_suffix(".json")
    names = json.loads(sidecar.read_text()).get("labels", {}) if sidecar.is_file() else {}
    name = names.get(str(args.label), f"label {args.label}")
    gt = gts == args.label
    if not gt.any():
        print(f"{case.name}: no voxel has label {args.label}", file=sys.stderr)
        return 2
    mask, box, clicks = segment_through_server(image, gt, args.clicks, args.box3d, args.checkpoint)
    score = dice(mask, gt)
    prompt = "3D box" if args.box3d else "2D box on one slice"
    title = (f"{case.stem}: {name} through the server and nninteractive-client 2.6.0 - {prompt} + {len(clicks)} clicks, "
             f"Dice {score:.2f}\n(red: returned mask, green: ground truth, yellow: box, cyan/magenta: +/- clicks)")
    render(image, gt, mask, box, clicks, Path(args.out), title)
    print(f"{name}: Dice {score:.3f} after the {prompt} and {len(clicks)} clicks; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
