"""`python -m inference`: predict every *.npz of INPUT_DIR into OUTPUT_DIR (the challenge container's job)."""
from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m inference",
        description="Segment every class of every challenge case (*.npz) in the input folder and write "
                    "<output>/<same name>.npz with key 'segs' (uint8, shape of 'imgs').")
    ap.add_argument("--input-dir", default=os.environ.get("INPUT_DIR", "/workspace/inputs"),
                    help="folder of input cases (default: $INPUT_DIR or /workspace/inputs)")
    ap.add_argument("--output-dir", default=os.environ.get("OUTPUT_DIR", "/workspace/outputs"),
                    help="folder for predictions (default: $OUTPUT_DIR or /workspace/outputs)")
    ap.add_argument("--weights", default=os.environ.get("SEGFM_WEIGHTS"),
                    help="native checkpoint file or nnInteractive v1.0 folder (default: $SEGFM_WEIGHTS or weights/default.pt)")
    ap.add_argument("--device", default=os.environ.get("SEGFM_DEVICE"), help="cpu or cuda (default: cuda when present)")
    ap.add_argument("--per-class-run-s", type=float, default=float(os.environ.get("SEGFM_PER_CLASS_RUN_S", 15.0)),
                    help="time budget per class per run in seconds (default 15 = 90 s over 6 runs)")
    ap.add_argument("--tta", type=int, choices=(1, 2, 4, 8), default=os.environ.get("SEGFM_TTA", "1"),
                    help="test-time augmentation: average this many mirrored copies per network run "
                         "(1 = off; 2 = x; 4 = x, y; 8 = all axes; default: $SEGFM_TTA or 1)")
    ap.add_argument("--refine", choices=("on", "off"), default=os.environ.get("SEGFM_REFINE", "on"),
                    help="re-predict the boundary of zoomed-out objects at native resolution when the budget "
                         "allows (default: $SEGFM_REFINE or on)")
    ap.add_argument("--click-update", choices=("full", "local", "both"),
                    default=os.environ.get("SEGFM_CLICK_UPDATE", "local"),
                    help="at click steps: re-run the whole object (full), predict a native patch around the new "
                         "click and merge it, re-running the object only when its extent changed (local), or "
                         "always both (default: $SEGFM_CLICK_UPDATE or local)")
    ap.add_argument("--quiet", action="store_true", help="print only errors")
    args = ap.parse_args(argv)

    from . import budget as B
    from .case_io import CaseError, read_case, write_segs
    from .predictor import fallback_segs, load_predictor
    from .settings import env_options

    process_start = B.process_start_time()
    in_dir, out_dir = Path(args.input_dir), Path(args.output_dir)
    cases = sorted(p for p in in_dir.glob("*.npz") if not p.name.startswith("."))
    if not in_dir.is_dir():
        print(f"error: input folder {in_dir} does not exist", file=sys.stderr)
        return 2
    if not cases:
        print(f"no *.npz cases in {in_dir}", file=sys.stderr)
        return 0
    t_load = time.time()
    predictor = load_predictor(args.weights, args.device, per_class_run_s=args.per_class_run_s,
                               verbose=not args.quiet, tta=args.tta,
                               **env_options({"SEGFM_REFINE": args.refine, "SEGFM_CLICK_UPDATE": args.click_update}))
    if not args.quiet:
        print(f"model {predictor.model.source} on {predictor.device} loaded in {time.time() - t_load:.2f} s "
              f"({time.time() - process_start:.2f} s since start)", file=sys.stderr)
    failures = 0
    for i, path in enumerate(cases):
        case_start = process_start if i == 0 else time.time()
        try:
            case = read_case(path)
        except CaseError as err:
            print(f"error: {err}", file=sys.stderr)
            failures += 1
            continue
        for w in case.warnings:
            print(f"warning: {path.name}: {w}", file=sys.stderr)
        budget = B.Budget(case.num_classes, start=case_start, per_class_run_s=args.per_class_run_s)
        try:
            segs = predictor.predict_case(case, budget)
        except Exception:  # a valid case always gets an output
            traceback.print_exc()
            print(f"error: {path.name}: prediction failed; writing the fallback prediction", file=sys.stderr)
            segs = fallback_segs(case)
            failures += 1
        write_segs(out_dir / path.name, segs)
        if not args.quiet:
            print(f"{path.name}: {case.num_classes} classes, shape {case.shape}, "
                  f"{time.time() - case_start:.2f} s", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
