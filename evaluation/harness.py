"""The organizer's step loop (CVPR25_iter_eval.py), replayed on training-format cases.

One case: step 1 runs the predictor on the box prompt (skipped, and logged as 0, without boxes);
steps 2-6 each first read the current output (missing or malformed -> zeros), cast it to uint8,
simulate one click per class on it, rewrite the step input with the accumulated clicks,
clicks_order and prev_pred, and run the predictor again. After every run the output is scored
(DSC, NSD when the case DSC > 0.2). Arrays are (z, y, x); spacing is stored (x, y, z).

Divergences from the organizer, on purpose: a missing, malformed or wrongly shaped output counts
as zeros and is reported instead of crashing the run; every case gets a row (the organizer adds a
row only when the final output file exists); ground truths whose labels are not 1..N are
relabelled sequentially (a contract-following predictor writes class i+1 for boxes[i]/clicks[i]).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from evaluation.boxes import box_to_ints, boxes_from_gt
from evaluation.clicks import add_click, new_click_state, simulate_clicks
from evaluation.metrics import auc, step_metrics
from evaluation.predictors import (  # noqa: F401 - re-exported: the harness's public API
    DEFAULT_COMMAND,
    PROJECT_ROOT,
    InProcessPredictor,
    Predictor,
    StepRun,
    SubprocessPredictor,
)
from evaluation.regions import class_boxes, relabel_sequential
from evaluation.report import ORGANIZER_COLUMNS, write_outputs

log = logging.getLogger("evaluation")

N_CLICKS = 5
N_STEPS = N_CLICKS + 1
SECONDS_PER_CLASS = 90


@dataclass
class Case:
    """A training-format case: imgs and gts (z, y, x), spacing (x, y, z), sorted class ids."""

    name: str
    imgs: np.ndarray
    gts: np.ndarray
    spacing: np.ndarray
    labels: list[int]
    relabelled: bool = False


def load_case(path: str | os.PathLike) -> Case:
    """Read a training-format npz (imgs, gts, spacing); labels made 1..N if they are not."""
    path = Path(path)
    with np.load(path, allow_pickle=True) as npz:
        missing = [key for key in ("imgs", "gts", "spacing") if key not in npz.files]
        if missing:
            raise KeyError(f"{path.name}: missing keys {missing} (a training-format npz is needed)")
        imgs, gts, spacing = npz["imgs"], npz["gts"], npz["spacing"]
    if gts.shape != imgs.shape[-3:] or gts.ndim != 3:
        raise ValueError(f"{path.name}: gts shape {gts.shape} does not match imgs shape {imgs.shape}")
    sequential, labels = relabel_sequential(gts)
    return Case(path.name, imgs, sequential, spacing, labels, sequential is not gts)


def step_input(
    case: Case,
    boxes: list[dict] | None,
    clicks: list[dict] | None = None,
    clicks_order: list[list] | None = None,
    prev_pred: np.ndarray | None = None,
    include_gts: bool = False,
) -> dict[str, Any]:
    """The step input with the organizer's keys, in its order (gts only with include_gts)."""
    data: dict[str, Any] = {"imgs": case.imgs}
    if include_gts:
        data["gts"] = case.gts
    data["spacing"] = case.spacing
    if clicks is not None:
        data["clicks"] = clicks
        data["clicks_order"] = clicks_order
        data["prev_pred"] = prev_pred
    if boxes is not None:
        data["boxes"] = boxes
    return data


def check_output(segs: np.ndarray | None, problem: str | None, shape: tuple[int, ...]) -> tuple[np.ndarray | None, str | None]:
    """Accept an output only if it is a numeric array of the image's shape."""
    if segs is None:
        return None, problem or "missing output"
    if not isinstance(segs, np.ndarray) or segs.dtype.kind not in "biuf":
        return None, f"malformed output (dtype {getattr(segs, 'dtype', type(segs))})"
    if segs.shape != tuple(shape):
        return None, f"wrong output shape {segs.shape}, expected {tuple(shape)}"
    return segs, None


def as_predictor(predictor: Predictor | Callable[..., Any] | Any) -> Predictor:
    """A Predictor from a Predictor, an object with .predict(data, name=...) or fn(data)."""
    if isinstance(predictor, Predictor):
        return predictor
    if hasattr(predictor, "predict") and callable(predictor.predict):
        return InProcessPredictor.from_model(predictor, name=getattr(predictor, "name", "model"))
    if callable(predictor):
        return InProcessPredictor(predictor, name=getattr(predictor, "__name__", "inprocess"))
    raise TypeError(f"not a predictor: {predictor!r}")


def _json_clicks(clicks: list[dict]) -> list[dict]:
    return [{kind: [[int(v) for v in c] for c in cls[kind]] for kind in ("fg", "bg")} for cls in clicks]


@dataclass
class CaseResult:
    """A CSV row and the per-case details (per-class scores per step, clicks, problems)."""

    row: dict[str, Any]
    details: dict[str, Any]
    final_segs: np.ndarray | None = None
    all_segs: list[np.ndarray] = field(default_factory=list)


def run_case(
    case: Case | str | os.PathLike,
    predictor: Predictor | Callable[..., Any],
    use_boxes: bool = True,
    *,
    physical_spacing: bool = False,
    tolerance_mm: float = 2.0,
    include_gts: bool = False,
    on_step: Callable[[], None] | None = None,
    keep_segs: bool = False,
) -> CaseResult:
    """Replay the organizer's 6 steps on one case and score each step."""
    case = case if isinstance(case, Case) else load_case(case)
    predictor = as_predictor(predictor)
    name, gts, labels = case.name, case.gts, case.labels
    n_classes = len(labels)
    boxes = boxes_from_gt(gts, labels) if use_boxes else None
    clicks, clicks_order = new_click_state(n_classes)
    metrics_row: dict[str, Any] = {}
    dscs: list[float] = []
    nsds: list[float] = []
    total_time = 0.0
    problems: list[str] = []
    steps: list[dict[str, Any]] = []
    all_segs: list[np.ndarray] = []
    final_segs = None
    zeros = np.zeros(gts.shape, dtype=np.uint8)
    gt_boxes = class_boxes(gts, labels)

    predictor.begin_case(name)
    try:
        for it in range(N_STEPS):
            step = it + 1
            record: dict[str, Any] = {"step": step}
            if it == 0:
                if boxes is None:
                    metrics_row.update({"RunningTime_1": 0, "DSC_1": 0, "NSD_1": 0})
                    dscs.append(0)
                    nsds.append(0)
                    steps.append({"step": 1, "kind": "skipped (no box)"})
                    if on_step:
                        on_step()
                    continue
                record["kind"] = "box"
                data = step_input(case, boxes, include_gts=include_gts)
            else:
                record["kind"] = "click"
                # what the organizer loads now: the outputs folder's file, or zeros
                current, _ = check_output(*predictor.read_output(name), gts.shape)
                prev_pred = current.astype(np.uint8) if current is not None else zeros
                new_clicks = simulate_clicks(prev_pred, gts, labels, gt_boxes)
                for index, result in enumerate(new_clicks):
                    add_click(clicks, clicks_order, index, result)
                record["clicks_added"] = [
                    None if r is None else {"label": labels[i], "zyx": [int(v) for v in r[0]], "kind": r[1]}
                    for i, r in enumerate(new_clicks)
                ]
                data = step_input(case, boxes, clicks, clicks_order, prev_pred, include_gts)

            run = predictor.run(data, name)
            total_time += run.seconds
            segs, problem = check_output(*predictor.read_output(name), gts.shape)
            if run.problem:
                problem = f"{run.problem}; {problem}" if problem else run.problem
            if problem:
                problems.append(f"step {step}: {problem}")
                log.warning("%s [%s] step %d: %s", name, predictor.name, step, problem)
            scored = segs if segs is not None else zeros
            final_segs = scored
            if keep_segs:
                all_segs.append(scored.astype(np.uint8))
            m = step_metrics(gts, scored, case.spacing, labels, tolerance_mm, physical_spacing, gt_boxes)
            dscs.append(m.dsc)
            nsds.append(m.nsd)
            metrics_row[f"RunningTime_{step}"] = run.seconds
            metrics_row[f"DSC_{step}"] = m.dsc
            metrics_row[f"NSD_{step}"] = m.nsd
            record.update({
                "running_time": run.seconds,
                "dsc": m.dsc,
                "nsd": m.nsd,
                "dsc_per_class": dict(zip(map(str, labels), m.dsc_per_class)),
                "nsd_per_class": None if m.nsd_per_class is None else dict(zip(map(str, labels), m.nsd_per_class)),
                "output_problem": problem,
            })
            steps.append(record)
            if on_step:
                on_step()
    finally:
        predictor.end_case(name)

    upper = SECONDS_PER_CLASS * n_classes
    row: dict[str, Any] = {
        "CaseName": name,
        "TotalRunningTime": total_time,
        **{f"RunningTime_{k}": metrics_row[f"RunningTime_{k}"] for k in range(1, N_STEPS + 1)},
        "DSC_AUC": auc(dscs),
        "NSD_AUC": auc(nsds),
        "DSC_Final": dscs[-1],
        "NSD_Final": nsds[-1],
        **{f"DSC_{k}": metrics_row[f"DSC_{k}"] for k in range(1, N_STEPS + 1)},
        **{f"NSD_{k}": metrics_row[f"NSD_{k}"] for k in range(1, N_STEPS + 1)},
        "num_class": n_classes,
        "runtime_upperbound": upper,
        "Predictor": predictor.name,
        "BoxMode": "box" if use_boxes else "nobox",
        "TimeOverBudget": bool(total_time > upper),
        "OutputProblems": " | ".join(problems),
    }
    assert list(row)[: len(ORGANIZER_COLUMNS)] == ORGANIZER_COLUMNS
    if row["TimeOverBudget"]:
        log.warning("%s [%s]: %.1f s exceeds the budget of 90 s x %d classes", name, predictor.name, total_time, n_classes)
    details = {
        "case": name,
        "predictor": predictor.name,
        "box_mode": row["BoxMode"],
        "labels": labels,
        "relabelled_ground_truth": case.relabelled,
        "shape_zyx": list(gts.shape),
        "spacing_xyz": [float(s) for s in np.asarray(case.spacing).reshape(-1)],
        "nsd_spacing": "physical (z, y, x)" if physical_spacing else "as stored (organizer convention)",
        "boxes": None if boxes is None else [box_to_ints(b) for b in boxes],
        "steps": steps,
        "clicks": _json_clicks(clicks),
        "clicks_order": clicks_order,
        "total_running_time": total_time,
        "runtime_upperbound": upper,
        "time_over_budget": row["TimeOverBudget"],
        "problems": problems,
        "row": row,
    }
    return CaseResult(row, details, final_segs, all_segs)


def evaluate_case(
    case_path: str | os.PathLike,
    predictor: Predictor | Callable[..., Any],
    out_dir: str | os.PathLike | None = None,
    use_boxes: bool = True,
    *,
    physical_spacing: bool = False,
    tolerance_mm: float = 2.0,
    include_gts: bool = False,
    on_step: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Score one case; returns its CSV row and writes `<out_dir>/<case>.json` when out_dir is set."""
    result = run_case(
        case_path, predictor, use_boxes, physical_spacing=physical_spacing,
        tolerance_mm=tolerance_mm, include_gts=include_gts, on_step=on_step,
    )
    if out_dir is not None:
        write_details(result.details, Path(out_dir))
    return result.row


def write_details(details: dict[str, Any], folder: Path) -> Path:
    """Write one case's details as `<folder>/<case stem>.json`."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{Path(details['case']).stem}.json"
    path.write_text(json.dumps(details, indent=1, default=_json_default), encoding="utf-8")
    return path


def _json_default(value: Any) -> Any:
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def find_cases(cases_dir: str | os.PathLike) -> list[Path]:
    """Every .npz under a folder (recursive), sorted by file name as the organizer sorts."""
    root = Path(cases_dir)
    if root.is_file():
        return [root]
    return sorted(root.rglob("*.npz"), key=lambda p: (p.name, str(p)))


def evaluate_folder(
    cases_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    predictors: Predictor | Callable[..., Any] | Sequence[Predictor] | Mapping[str, Predictor],
    box_modes: Iterable[str] = ("box",),
    *,
    physical_spacing: bool = False,
    tolerance_mm: float = 2.0,
    include_gts: bool = False,
    limit: int | None = None,
    progress: bool = True,
    save_predictions: bool = False,
    report: bool = True,
    case_loader: Callable[[Path], Case] | None = None,
) -> list[dict[str, Any]]:
    """Score every case under `cases_dir` with each predictor and box mode ('box', 'nobox').

    Writes into `out_dir`: metrics.csv (all rows: the organizer's columns, then Predictor, BoxMode,
    TimeOverBudget, OutputProblems), `<predictor>_<mode>_metrics.csv` (organizer columns only),
    summary.md, curves.png, cases/<predictor>_<mode>/<case>.json, and with save_predictions
    predictions/<predictor>_<mode>/<case>.npz (segs, all_segs). A case that fails to load is
    reported and skipped; the others go on. `case_loader(path)` replaces `load_case` (e.g. fewer classes).
    """
    if isinstance(predictors, Mapping):
        runners = list(predictors.values())
    elif isinstance(predictors, Sequence) and not isinstance(predictors, (str, bytes)):
        runners = [as_predictor(p) for p in predictors]
    else:
        runners = [as_predictor(predictors)]
    modes = list(box_modes)
    for mode in modes:
        if mode not in ("box", "nobox"):
            raise ValueError(f"box mode must be 'box' or 'nobox', got {mode!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cases = find_cases(cases_dir)[: limit if limit is not None else None]
    if not cases:
        raise FileNotFoundError(f"no .npz cases under {cases_dir}")
    rows: list[dict[str, Any]] = []
    errors: list[str] = []
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(runners) * len(modes) * len(cases) * N_STEPS, unit="step", dynamic_ncols=True)
    try:
        for runner in runners:
            for mode in modes:
                tag = f"{runner.name}_{mode}"
                for path in cases:
                    if bar is not None:
                        bar.set_description(f"{tag} {path.name}")
                    done_before = bar.n if bar is not None else 0
                    try:
                        result = run_case(
                            case_loader(path) if case_loader is not None else path, runner, mode == "box", physical_spacing=physical_spacing,
                            tolerance_mm=tolerance_mm, include_gts=include_gts,
                            on_step=(lambda: bar.update(1)) if bar is not None else None,
                            keep_segs=save_predictions,
                        )
                    except Exception as exc:  # noqa: BLE001 - one failing case never stops the others
                        message = f"{tag} {path.name}: {type(exc).__name__}: {exc}"
                        log.error("case failed: %s", message)
                        errors.append(message)
                        if bar is not None:
                            bar.update(done_before + N_STEPS - bar.n)
                        continue
                    rows.append(result.row)
                    write_details(result.details, out / "cases" / tag)
                    if save_predictions and result.final_segs is not None:
                        pred_dir = out / "predictions" / tag
                        pred_dir.mkdir(parents=True, exist_ok=True)
                        np.savez_compressed(pred_dir / path.name, segs=result.final_segs.astype(np.uint8), all_segs=np.stack(result.all_segs))
                    if report:
                        write_outputs(rows, out, errors, final=False)
    finally:
        if bar is not None:
            bar.close()
        for runner in runners:
            runner.close()
    if report:
        write_outputs(rows, out, errors, final=True)
    return rows
