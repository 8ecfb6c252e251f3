"""Reports of an evaluation: the organizer's CSV, a per-modality summary table, and a plot.

The modality of a case is its file-name prefix before the first '_' (CT, MR, US, PET, Microscopy).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

ORGANIZER_COLUMNS = (
    ["CaseName", "TotalRunningTime"]
    + [f"RunningTime_{k}" for k in range(1, 7)]
    + ["DSC_AUC", "NSD_AUC", "DSC_Final", "NSD_Final"]
    + [f"DSC_{k}" for k in range(1, 7)]
    + [f"NSD_{k}" for k in range(1, 7)]
    + ["num_class", "runtime_upperbound"]
)
EXTRA_COLUMNS = ["Predictor", "BoxMode", "TimeOverBudget", "OutputProblems"]
STEP_METRICS = [f"DSC_{k}" for k in range(1, 7)] + [f"NSD_{k}" for k in range(1, 7)]
SUMMARY_METRICS = STEP_METRICS + ["DSC_AUC", "NSD_AUC", "DSC_Final", "NSD_Final"]


def modality_of(case_name: str) -> str:
    """Modality of a case from its file name: the prefix before the first '_'."""
    stem = Path(case_name).name
    stem = stem[:-4] if stem.endswith(".npz") else stem
    return stem.split("_", 1)[0] or "unknown"


def _cell(value: Any) -> Any:
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return repr(float(value))
    return value


def write_csv(rows: Sequence[dict[str, Any]], path: str | Path, columns: Sequence[str]) -> None:
    """Write rows with the given columns (others dropped) as CSV."""
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(columns)
        for row in rows:
            writer.writerow([_cell(row.get(col, "")) for col in columns])


def read_csv(path: str | Path) -> list[dict[str, str]]:
    """Rows of a CSV as dicts of strings."""
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _mean(values: Sequence[float]) -> float:
    array = np.asarray([float(v) for v in values], dtype=np.float64)
    return float(np.nanmean(array)) if array.size and not np.all(np.isnan(array)) else float("nan")


def summarize(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean scores per (predictor, box mode, modality), plus an 'all' line per predictor/mode
    when there are several modalities. `sec_per_class_step` is the mean over cases of
    TotalRunningTime / (num_class x steps run)."""
    groups: dict[tuple[str, str], dict[str, list[dict[str, Any]]]] = {}
    for row in rows:
        key = (str(row.get("Predictor", "")), str(row.get("BoxMode", "box")))
        groups.setdefault(key, {}).setdefault(modality_of(str(row["CaseName"])), []).append(row)
    summary = []
    for (predictor, mode), by_modality in groups.items():
        entries = sorted(by_modality.items())
        if len(entries) > 1:
            entries.append(("all", [r for _, rs in entries for r in rs]))
        for modality, members in entries:
            steps_run = 6 if mode == "box" else 5
            line: dict[str, Any] = {"Predictor": predictor, "BoxMode": mode, "Modality": modality, "Cases": len(members)}
            for metric in SUMMARY_METRICS:
                line[metric] = _mean([r[metric] for r in members])
            line["sec_per_class_step"] = _mean(
                [float(r["TotalRunningTime"]) / max(int(r["num_class"]), 1) / steps_run for r in members]
            )
            line["over_budget"] = sum(str(r.get("TimeOverBudget")) == "True" for r in members)
            summary.append(line)
    return summary


def _fmt(value: float, digits: int = 4) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def format_table(summary: Sequence[dict[str, Any]], compact: bool = False) -> str:
    """Markdown table of a summary; compact keeps the headline columns (for the terminal)."""
    metrics = ["DSC_AUC", "NSD_AUC", "DSC_Final", "NSD_Final", "DSC_1", "NSD_1"] if compact else (
        ["DSC_AUC", "NSD_AUC", "DSC_Final", "NSD_Final"] + STEP_METRICS
    )
    header = ["Predictor", "Box", "Modality", "Cases", *metrics, "s/class/step", "over budget"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for line in summary:
        cells = [line["Predictor"], line["BoxMode"], line["Modality"], str(line["Cases"])]
        for metric in metrics:
            skipped = line["BoxMode"] == "nobox" and metric.endswith("_1")
            cells.append("-" if skipped else _fmt(line[metric]))
        cells += [_fmt(line["sec_per_class_step"], 3), str(line["over_budget"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_curves(rows: Sequence[dict[str, Any]], path: str | Path) -> None:
    """PNG of mean DSC and NSD against the step: one panel row per predictor, one colour per
    modality, solid with a box step, dashed without (steps 2-6 only)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    summary = [s for s in summarize(rows)]
    predictors = list(dict.fromkeys(s["Predictor"] for s in summary))
    modalities = sorted({s["Modality"] for s in summary})
    colours = {m: f"C{i}" for i, m in enumerate(modalities)}
    fig = Figure(figsize=(11, 3.6 * max(len(predictors), 1)))
    FigureCanvasAgg(fig)
    axes = fig.subplots(max(len(predictors), 1), 2, squeeze=False)
    for r, predictor in enumerate(predictors):
        for c, metric in enumerate(("DSC", "NSD")):
            ax = axes[r][c]
            for line in summary:
                if line["Predictor"] != predictor:
                    continue
                first = 1 if line["BoxMode"] == "box" else 2
                steps = list(range(first, 7))
                values = [line[f"{metric}_{k}"] for k in steps]
                ax.plot(
                    steps, values, marker="o", color=colours[line["Modality"]],
                    linestyle="-" if line["BoxMode"] == "box" else "--",
                    linewidth=2.5 if line["Modality"] == "all" else 1.5,
                    label=f"{line['Modality']} ({'box' if line['BoxMode'] == 'box' else 'no box'}, n={line['Cases']})",
                )
            ax.set_title(f"{predictor}: {metric}")
            ax.set_xlabel("step (1 = box, 2-6 = clicks)")
            ax.set_ylabel(metric)
            ax.set_xticks(range(1, 7))
            ax.set_ylim(0, 1.02)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def write_outputs(rows: Sequence[dict[str, Any]], out: Path, errors: Sequence[str] = (), final: bool = True) -> str:
    """Write metrics.csv and the per-run organizer CSVs; with final also summary.md and
    curves.png. Returns the summary markdown ('' when not final)."""
    out.mkdir(parents=True, exist_ok=True)
    write_csv(rows, out / "metrics.csv", ORGANIZER_COLUMNS + EXTRA_COLUMNS)
    runs: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        runs.setdefault(f"{row.get('Predictor', 'predictor')}_{row.get('BoxMode', 'box')}", []).append(row)
    for tag, members in runs.items():
        write_csv(members, out / f"{tag}_metrics.csv", ORGANIZER_COLUMNS)
    if not final:
        return ""
    summary = summarize(rows)
    text = ["# Evaluation summary", "", "Means over cases; AUCs over the 5 click steps (max 4).", ""]
    text.append(format_table(summary) if summary else "No case was scored.")
    problems = [r for r in rows if r.get("OutputProblems")]
    if problems:
        text += ["", "## Output problems (counted as zeros or as the previous output)", ""]
        text += [f"- {r['Predictor']} / {r['BoxMode']} / {r['CaseName']}: {r['OutputProblems']}" for r in problems]
    if errors:
        text += ["", "## Cases that could not be evaluated", ""] + [f"- {e}" for e in errors]
    markdown = "\n".join(text) + "\n"
    (out / "summary.md").write_text(markdown, encoding="utf-8")
    if rows:
        plot_curves(rows, out / "curves.png")
    return markdown
