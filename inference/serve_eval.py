"""`python -m inference.serve_eval`: Dice of what a viewer user sends (a one-slice 2D box + clicks) against the container.

Per structure of each held-out volume (data/heldout/*.npz; --max-classes for an evenly spaced subset):
  * viewer path: an InteractiveSession (the server's session, in-process) gets the organizer's box reduced to
    its middle slice (z_mid; the jittered 2D extent there: what a user draws on one axial slice), then N clicks
    placed by the organizer's rule (evaluation/clicks.py) on the session's own mask;
  * the same session with the organizer's full 3D box, then N clicks (isolates 2D vs 3D box);
  * the container path: the organizer's protocol replayed by evaluation.harness.run_case through
    Predictor.predict (all structures of the volume fused, 3D box step, then click steps).
Dice per structure after the box and after each click; means per volume and overall. Arrays are (z, y, x).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def subset(case, max_classes: int | None):
    """The case restricted to an evenly spaced subset of its labels, relabelled 1..N (harness.Case)."""
    from evaluation.harness import Case
    from evaluation.regions import relabel_sequential

    labels = case.labels
    if max_classes is not None and len(labels) > max_classes:
        picks = np.linspace(0, len(labels) - 1, max_classes).round().astype(int)
        chosen = [labels[i] for i in sorted(set(picks))]
        gts, new = relabel_sequential(np.where(np.isin(case.gts, chosen), case.gts, 0))
        return Case(case.name, case.imgs, gts, case.spacing, new, True), chosen
    return case, labels


def session_curve(session, gt: np.ndarray, box: list[list[int]], clicks: int) -> list[float]:
    """Dice after the box (half-open, z, y, x) and after each of `clicks` organizer clicks."""
    from evaluation.clicks import simulate_click
    from evaluation.metrics import dice

    session.reset()
    session.add_box(box, True)
    curve = [dice(session.mask, gt)]
    for _ in range(clicks):
        found = simulate_click(session.mask, gt)
        if found is not None:
            session.add_point(found[0], found[1] == "fg")
        curve.append(dice(session.mask, gt))
    return curve


def boxes_for(b: dict) -> tuple[list[list[int]], list[list[int]]]:
    """The organizer's box dict -> (2D box on z_mid, 3D box), half-open (z, y, x)."""
    yx = [[int(b["z_mid_y_min"]), int(b["z_mid_y_max"]) + 1], [int(b["z_mid_x_min"]), int(b["z_mid_x_max"]) + 1]]
    return [[int(b["z_mid"]), int(b["z_mid"]) + 1], *yx], [[int(b["z_min"]), int(b["z_max"]) + 1], *yx]


def evaluate(case, predictor, clicks: int, progress=None) -> dict:
    from evaluation.boxes import boxes_from_gt
    from evaluation.harness import as_predictor, run_case

    from .session import InteractiveSession

    session = InteractiveSession(predictor, seconds_per_interaction=predictor.per_class_run_s)
    session.set_image(case.imgs)
    rows = {"viewer 2D box": [], "session 3D box": []}
    for label, b in zip(case.labels, boxes_from_gt(case.gts, case.labels)):
        gt = case.gts == label
        box2d, box3d = boxes_for(b)
        rows["viewer 2D box"].append(session_curve(session, gt, box2d, clicks))
        rows["session 3D box"].append(session_curve(session, gt, box3d, clicks))
        if progress:
            progress.update(1)
    result = run_case(case, as_predictor(predictor))
    steps = result.details["steps"][: clicks + 1]
    rows["container 3D box (fused)"] = [[s["dsc_per_class"][str(label)] for s in steps] for label in case.labels]
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m inference.serve_eval", description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default=None, help="model (default: $SEGFM_WEIGHTS or weights/default.pt)")
    ap.add_argument("--cases", default=str(ROOT / "data" / "heldout"), help="folder of training-format npz volumes")
    ap.add_argument("--max-classes", type=int, default=None, help="an evenly spaced subset of each volume's structures")
    ap.add_argument("--clicks", type=int, default=3, help="clicks after the box (default 3; the container path has 5 at most)")
    ap.add_argument("--intensity", choices=("on", "off"), default="on",
                    help="the intensity step (default on, as the server and the container)")
    ap.add_argument("--graphcut", choices=("on", "off"), default="off",
                    help="the graph-cut step (inference/graphcut.py; default off, as the server and the container)")
    ap.add_argument("--out", default=str(ROOT / "eval_out" / "serve_eval.json"))
    args = ap.parse_args(argv)
    if not 0 <= args.clicks <= 5:
        ap.error("--clicks must be 0..5")
    from tqdm import tqdm

    from evaluation.harness import find_cases, load_case

    from .predictor import load_predictor
    from .settings import env_options

    options = env_options({"SEGFM_INTENSITY": args.intensity, "SEGFM_GRAPHCUT": args.graphcut})
    predictor = load_predictor(args.checkpoint, "cpu", routes=False, intensity=options["intensity"],
                               graphcut=options["graphcut"])
    paths = find_cases(args.cases)
    if not paths:
        print(f"no npz volumes under {args.cases} (make data creates data/heldout)", file=sys.stderr)
        return 2
    cases = [subset(load_case(p), args.max_classes) for p in paths]
    report = {"checkpoint": str(predictor.model.source), "clicks": args.clicks, "cases": {}}
    with tqdm(total=sum(len(c.labels) for c, _ in cases), desc="structures", unit="structure") as bar:
        for case, original in cases:
            rows = evaluate(case, predictor, args.clicks, bar)
            report["cases"][case.name] = {"labels": [int(v) for v in original], "dice": rows}
    paths_ = list(next(iter(report["cases"].values()))["dice"])
    header = "| path | structures | box | " + " | ".join(f"+{k} click{'s' if k > 1 else ''}" for k in range(1, args.clicks + 1)) + " |"
    lines = [header, "|" + "---|" * (3 + args.clicks)]
    summary = {}
    for path in paths_:
        curves = np.array([c for v in report["cases"].values() for c in v["dice"][path]], float)
        summary[path] = np.nanmean(curves, axis=0).tolist()
        lines.append(f"| {path} | {len(curves)} | " + " | ".join(f"{m:.3f}" for m in summary[path]) + " |")
    for name, v in report["cases"].items():
        for path in paths_:
            m = np.nanmean(np.array(v["dice"][path], float), axis=0)
            lines.append(f"| {name}: {path} | {len(v['dice'][path])} | " + " | ".join(f"{x:.3f}" for x in m) + " |")
    report["mean_dice"] = summary
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))
    print("\n".join(lines))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
