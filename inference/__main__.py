"""`python -m inference`: predict every *.npz of INPUT_DIR into OUTPUT_DIR (the challenge container's job).

A supervisor process (inference/watchdog.py) runs the network in a worker process and enforces each
case's hard deadline; `--no-watchdog` runs everything in this process.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from pathlib import Path


def list_cases(in_dir: Path) -> list[Path]:
    """The case files of a folder, sorted: every *.npz whose name does not start with '.'."""
    return sorted(p for p in in_dir.glob("*.npz") if not p.name.startswith("."))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m inference",
        description="Segment every class of every challenge case (*.npz) in the input folder and write "
                    "<output>/<same name>.npz with key 'segs' (uint8, shape of 'imgs'). What is answered, "
                    "repaired or refused: docs/input-policy.md.")
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
    ap.add_argument("--refine", choices=("on", "off"), default=os.environ.get("SEGFM_REFINE", "off"),
                    help="re-predict the boundary of zoomed-out objects at native resolution when the budget "
                         "allows (default: $SEGFM_REFINE or off)")
    ap.add_argument("--click-update", choices=("full", "local", "both"),
                    default=os.environ.get("SEGFM_CLICK_UPDATE", "full"),
                    help="at click steps: re-run the whole object (full), predict a native patch around the new "
                         "click and merge it, re-running the object only when its extent changed (local), or "
                         "always both (default: $SEGFM_CLICK_UPDATE or full)")
    ap.add_argument("--intensity", choices=("on", "off"), default=os.environ.get("SEGFM_INTENSITY") or "on",
                    help="move each window's probabilities by the object's own intensity histogram against its "
                         "surroundings' (inference/intensity.py; default: $SEGFM_INTENSITY or on)")
    ap.add_argument("--graphcut", choices=("on", "off"), default=os.environ.get("SEGFM_GRAPHCUT") or "off",
                    help="snap each object's mask to the image's edges with a graph cut (inference/graphcut.py; "
                         "default: $SEGFM_GRAPHCUT or off)")
    ap.add_argument("--adapt", choices=("on", "off"), default=os.environ.get("SEGFM_ADAPT") or None,
                    help="at click steps, fine-tune a copy of the network on the object's own clicks before it "
                         "predicts (inference/adapt.py; default: $SEGFM_ADAPT or the predictor's default)")
    ap.add_argument("--volume-weight", type=float, default=None,
                    help="fusion: a voxel that several classes claim goes to the largest logit(p) - w ln(volume), "
                         "so a structure nested in another's box keeps its voxels (inference/fusion.py; 0: the "
                         "most probable class; default: $SEGFM_VOLUME_WEIGHT or the predictor's default)")
    ap.add_argument("--no-watchdog", action="store_true",
                    help="run the network in this process, without the supervisor that writes fallback "
                         "predictions when a case misses its hard deadline")
    ap.add_argument("--quiet", action="store_true", help="print only errors and warnings")
    ap.add_argument("--worker-fd", type=int, default=None, help=argparse.SUPPRESS)  # set by the supervisor
    ap.add_argument("--skip", type=int, default=0, help=argparse.SUPPRESS)  # first case index of a worker
    return ap.parse_args(argv)


def volume_weight_text(value: float | None) -> str:
    """--volume-weight as the environment variable's text ($SEGFM_VOLUME_WEIGHT when not given)."""
    return os.environ.get("SEGFM_VOLUME_WEIGHT", "") if value is None else repr(value)


def worker_command(args: argparse.Namespace, fd: int, skip: int) -> list[str]:
    """The argv of a worker process for the cases from index `skip` on, reporting to pipe `fd`."""
    cmd = [sys.executable, "-m", "inference", "--input-dir", str(args.input_dir), "--output-dir",
           str(args.output_dir), "--per-class-run-s", repr(args.per_class_run_s), "--tta", str(args.tta),
           "--refine", args.refine, "--click-update", args.click_update, "--intensity", args.intensity,
           "--graphcut", args.graphcut, "--worker-fd", str(fd), "--skip", str(skip)]
    if args.volume_weight is not None:
        cmd += ["--volume-weight", repr(args.volume_weight)]
    if args.adapt is not None:
        cmd += ["--adapt", args.adapt]
    if args.weights:
        cmd += ["--weights", str(args.weights)]
    if args.device:
        cmd += ["--device", args.device]
    if args.quiet:
        cmd.append("--quiet")
    return cmd


def run_cases(args: argparse.Namespace, cases: list[Path], first: int = 0, report=None) -> int:
    """Predict cases[first:] in this process; every valid case gets an output. Returns the exit status."""
    from . import budget as B
    from .case_io import CaseError, read_case, write_segs
    from .fallback import fallback_segs
    from .predictor import load_predictor
    from .settings import env_options
    from .watchdog import Reporter

    report = report or Reporter()
    out_dir = Path(args.output_dir)
    process_start = B.process_start_time()
    t_load = time.time()
    predictor = load_predictor(args.weights, args.device, per_class_run_s=args.per_class_run_s,
                               verbose=not args.quiet, tta=args.tta,
                               **env_options({"SEGFM_REFINE": args.refine, "SEGFM_CLICK_UPDATE": args.click_update,
                                             "SEGFM_INTENSITY": args.intensity, "SEGFM_GRAPHCUT": args.graphcut,
                                             "SEGFM_ADAPT": args.adapt or "",
                                             "SEGFM_VOLUME_WEIGHT": volume_weight_text(args.volume_weight)}))
    if not args.quiet:
        routes = "".join(f", {m} cases: {r.source}" for m, r in predictor.model.routes.items())
        print(f"model {predictor.model.source}{routes} on {predictor.device} loaded in {time.time() - t_load:.2f} s "
              f"({time.time() - process_start:.2f} s since start)", file=sys.stderr)
    failures = 0
    for i in range(first, len(cases)):
        path = cases[i]
        case_start = process_start if i == first else time.time()
        report.send("begin", i, repr(case_start))
        status = "ok"
        try:
            case = read_case(path)
        except CaseError as err:
            print(f"error: {err}", file=sys.stderr)
            report.send("done", i, "refused")
            failures += 1
            continue
        except Exception as err:  # noqa: BLE001 - one case never stops the others
            print(f"error: {path.name}: unreadable ({type(err).__name__}: {err})", file=sys.stderr)
            report.send("done", i, "refused")
            failures += 1
            continue
        report.send("case", i, case.num_classes, case.image.size)
        for w in case.warnings:
            print(f"warning: {path.name}: {w}", file=sys.stderr)
        budget = B.Budget(case.num_classes, start=case_start, per_class_run_s=args.per_class_run_s)
        try:
            segs = predictor.predict_case(case, budget)
        except Exception:  # a valid case always gets an output
            traceback.print_exc()
            print(f"error: {path.name}: prediction failed; writing the fallback prediction", file=sys.stderr)
            segs = fallback_segs(case)
            status = "failed"
        try:
            write_segs(out_dir / path.name, segs)
        except Exception as err:  # noqa: BLE001 - a failed write loses this case only
            print(f"error: {path.name}: could not write the output ({type(err).__name__}: {err})", file=sys.stderr)
            status = "failed"
        del case, segs
        failures += status != "ok"
        report.send("done", i, status)
        if not args.quiet:
            print(f"{path.name}: {budget.num_classes} classes, {time.time() - case_start:.2f} s", file=sys.stderr)
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    in_dir, out_dir = Path(args.input_dir).absolute(), Path(args.output_dir).absolute()
    args.input_dir, args.output_dir = in_dir, out_dir
    if args.weights:
        args.weights = str(Path(args.weights).absolute())
    if not in_dir.is_dir():
        print(f"error: input folder {in_dir} does not exist", file=sys.stderr)
        return 2
    cases = list_cases(in_dir)
    if not cases:
        print(f"no *.npz cases in {in_dir}", file=sys.stderr)
        return 0
    out_dir.mkdir(parents=True, exist_ok=True)
    if args.worker_fd is not None or args.no_watchdog:
        from .watchdog import Reporter

        return run_cases(args, cases, args.skip, Reporter(args.worker_fd))
    from . import budget as B
    from .watchdog import Supervisor

    supervisor = Supervisor(cases, out_dir, lambda fd, skip: worker_command(args, fd, skip), args.per_class_run_s)
    return supervisor.run(B.process_start_time())


if __name__ == "__main__":
    sys.exit(main())
