"""Command line: score predictors on training-format cases exactly as the organizers do.

    python -m evaluation --cases DIR --out DIR [--command CMD --workdir DIR | --inprocess]
                         [--box-modes {box,nobox,both}] [--baselines] ...
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from evaluation.baselines import BASELINES, make_baseline
from evaluation.harness import evaluate_folder
from evaluation.predictors import DEFAULT_COMMAND, PROJECT_ROOT, InProcessPredictor, Predictor, SubprocessPredictor
from evaluation.report import format_table, summarize

DEFAULT_CHECKPOINT = PROJECT_ROOT / "weights" / "default.pt"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m evaluation",
        description=(
            "Replay the CVPR 2025 interactive 3D segmentation evaluation (box step + 5 click steps, "
            "DSC / NSD / AUC) on training-format npz cases (imgs, gts, spacing)."
        ),
    )
    parser.add_argument("--cases", required=True, type=Path, help="folder searched recursively for *.npz cases (or one file)")
    parser.add_argument("--out", required=True, type=Path, help="output folder for metrics.csv, summary.md, curves.png, cases/")
    how = parser.add_mutually_exclusive_group()
    how.add_argument("--command", default=None, help=f"container-style command run once per step with INPUT_DIR/OUTPUT_DIR set (default: '{DEFAULT_COMMAND}')")
    how.add_argument("--inprocess", action="store_true", help="call the inference package in this process (inference.predictor.load_predictor)")
    parser.add_argument("--workdir", type=Path, default=PROJECT_ROOT, help="working directory of --command (default: the project root)")
    parser.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT, help="checkpoint for --inprocess (default: weights/default.pt)")
    parser.add_argument("--name", default="model", help="name of the model in the reports (default: model)")
    parser.add_argument("--settings", default=None,
                        help="with --inprocess: comma-separated predictor settings, one report row each, named by "
                             "the setting (inference/settings.py: coarse|refine[+full|+local|+both][+field=value]), "
                             "e.g. coarse+full,refine+full,refine+local,refine+both; one model load for all")
    parser.add_argument("--max-classes", type=int, default=0,
                        help="score only this many evenly spread classes per case (0 = all; for development)")
    parser.add_argument("--predictors", default="model", help=f"comma-separated predictors to score: model and/or {', '.join(BASELINES)} (default: model)")
    parser.add_argument("--baselines", action="store_true", help="also score the box-fill and empty baselines beside the model")
    box = parser.add_mutually_exclusive_group()
    box.add_argument("--box-modes", choices=["box", "nobox", "both"], default=None, help="with the box step (default), without it (click-only use), or both, reported apart")
    box.add_argument("--no-box", action="store_true", help="same as --box-modes nobox")
    box.add_argument("--both-box-modes", "--with-and-without-box", action="store_true", help="same as --box-modes both")
    parser.add_argument("--physical-spacing", action="store_true", help="NSD with the physical (z, y, x) spacing instead of the organizer's as-stored (x, y, z) one")
    parser.add_argument("--tolerance", type=float, default=2.0, help="NSD tolerance in mm (default: 2.0)")
    parser.add_argument("--include-gts", action="store_true", help="also put 'gts' in the step inputs, as the organizer does for training files")
    parser.add_argument("--limit", type=int, default=None, help="score only the first N cases")
    parser.add_argument("--timeout", type=float, default=None, help="seconds after which one --command run is stopped (default: none)")
    parser.add_argument("--save-predictions", action="store_true", help="also save each case's final segs and all_segs under predictions/")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def build_predictors(args: argparse.Namespace) -> list[Predictor]:
    names = [n.strip() for n in args.predictors.split(",") if n.strip()]
    if args.baselines:
        names += [b for b in BASELINES if b not in names]
    predictors: list[Predictor] = []
    if args.settings and not args.inprocess:
        raise SystemExit("error: --settings needs --inprocess (predict.sh reads SEGFM_REFINE / SEGFM_CLICK_UPDATE)")
    for name in dict.fromkeys(names):
        if name in BASELINES:
            predictors.append(make_baseline(name))
        elif name == "model":
            if args.inprocess:
                from inference.predictor import load_predictor  # lazy: evaluation works without it

                if not Path(args.checkpoint).exists():
                    raise SystemExit(f"error: no checkpoint at {args.checkpoint} (give one with --checkpoint)")
                if args.settings:
                    from inference.network import load_model
                    from inference.predictor import Predictor as ModelPredictor
                    from inference.settings import predictor_options

                    loaded = load_model(args.checkpoint, routes=True)
                    for setting in [t.strip() for t in args.settings.split(",") if t.strip()]:
                        model = ModelPredictor(loaded, **predictor_options(setting))
                        predictors.append(InProcessPredictor.from_model(model, name=setting))
                    continue
                model = load_predictor(str(args.checkpoint))
                predictors.append(InProcessPredictor.from_model(model, name=args.name))
            else:
                predictors.append(
                    SubprocessPredictor(
                        command=args.command or DEFAULT_COMMAND, workdir=args.workdir, name=args.name,
                        timeout_s=args.timeout, log_dir=args.out / "logs" / args.name,
                    )
                )
        else:
            raise SystemExit(f"unknown predictor {name!r}: use model, {', '.join(BASELINES)}")
    return predictors


def _class_subset(max_classes: int):
    """A case loader keeping `max_classes` evenly spread classes (training's validation subset), or None."""
    if max_classes <= 0:
        return None
    from training.train import validation_case  # lazy: only development runs need it

    return lambda path: validation_case(path, max_classes)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    choice = args.box_modes or ("both" if args.both_box_modes else ("nobox" if args.no_box else "box"))
    modes = ["box", "nobox"] if choice == "both" else [choice]
    predictors = build_predictors(args)
    try:
        rows = evaluate_folder(
            args.cases, args.out, predictors, modes, physical_spacing=args.physical_spacing,
            tolerance_mm=args.tolerance, include_gts=args.include_gts, limit=args.limit,
            progress=not args.no_progress, save_predictions=args.save_predictions,
            case_loader=_class_subset(args.max_classes),
        )
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(format_table(summarize(rows), compact=True) if rows else "No case was scored.")
    print(f"\nwrote {args.out / 'metrics.csv'}, {args.out / 'summary.md'}, {args.out / 'curves.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
