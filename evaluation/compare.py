"""Compare the predictor settings of one evaluation folder: accuracy per second, and per-structure finals.

    python -m evaluation.compare --out DIR [--cases DIR] [--structures CASE] [--top N]

Reads what `python -m evaluation ... --settings A,B,...` wrote into DIR (metrics.csv and cases/<setting>_<mode>/).
Prints (1) one row per setting and box mode: DSC_Final, NSD_Final, DSC_AUC, NSD_AUC, seconds per class per run,
the seconds per class of the five click steps and DSC_AUC per second of them; (2) the response to clicks per
setting and box mode: for foreground and background clicks, how many, the mean change of the clicked
structure's Dice from the step before, and the share of clicks after which it fell; (3) for one case (default: the
first CT of --cases), DSC_Final / NSD_Final per setting of its N largest and N smallest structures (voxels of the
ground truth; names from the case's .json beside the npz when present), one table per box mode.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from evaluation.paired import per_structure
from evaluation.report import read_csv


def _mean(values) -> float:
    a = np.asarray([float(v) for v in values], float)
    return float(np.nanmean(a)) if a.size and not np.all(np.isnan(a)) else float("nan")


def settings_table(rows: list[dict[str, str]]) -> str:
    """Markdown: per (setting, box mode) the means over cases of the finals, AUCs and times."""
    groups: dict[tuple[str, str], list[dict[str, str]]] = {}
    for r in rows:
        groups.setdefault((r["Predictor"], r["BoxMode"]), []).append(r)
    lines = ["| setting | box | cases | DSC_Final | NSD_Final | DSC_AUC | NSD_AUC | s/class/run | "
             "click steps s/class | DSC_AUC per click s/class |", "|" + "---|" * 10]
    for (setting, mode), members in groups.items():
        runs = 6 if mode == "box" else 5
        per_run = _mean([float(r["TotalRunningTime"]) / max(int(r["num_class"]), 1) / runs for r in members])
        clicks = _mean([sum(float(r[f"RunningTime_{k}"]) for k in range(2, 7)) / max(int(r["num_class"]), 1)
                        for r in members])
        auc = _mean([r["DSC_AUC"] for r in members])
        cells = [setting, mode, str(len(members))] + [f"{_mean([r[m] for r in members]):.4f}"
                                                     for m in ("DSC_Final", "NSD_Final", "DSC_AUC", "NSD_AUC")]
        cells += [f"{per_run:.3f}", f"{clicks:.2f}", f"{auc / clicks:.3f}" if clicks > 0 else "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def click_changes(details: dict) -> dict[str, list[float]]:
    """Per click kind ('fg', 'bg'), the clicked structure's Dice change from the previous step, over the click
    steps of one case's details (harness JSON) whose previous step was scored (not the skipped no-box step)."""
    changes: dict[str, list[float]] = {"fg": [], "bg": []}
    steps = details.get("steps") or []  # a case that failed before its first step has none
    for before, after in zip(steps, steps[1:]):
        old, new = before.get("dsc_per_class"), after.get("dsc_per_class")
        if old is None or new is None:
            continue
        for click in after.get("clicks_added") or []:
            if click is not None:
                key = str(click["label"])
                if key in old and key in new:
                    changes[click["kind"]].append(float(new[key]) - float(old[key]))
    return changes


def clicks_table(out: Path) -> str:
    """Markdown: per setting and box mode, the clicks of each kind over all cases, their mean Dice change and
    the share after which the clicked structure's Dice fell (`click_changes`)."""
    lines = ["| setting | box | fg clicks | fg mean Dice change | fg share worse | bg clicks | "
             "bg mean Dice change | bg share worse |", "|" + "---|" * 8]
    for run in sorted(p for p in (out / "cases").iterdir() if p.is_dir()):
        setting, _, mode = run.name.rpartition("_")
        pooled: dict[str, list[float]] = {"fg": [], "bg": []}
        for f in sorted(run.glob("*.json")):
            for kind, values in click_changes(json.loads(f.read_text())).items():
                pooled[kind] += values
        cells = [setting, mode]
        for kind in ("fg", "bg"):
            v = np.asarray(pooled[kind], float)
            cells += [str(v.size), f"{v.mean():+.4f}", f"{(v < 0).mean():.2f}"] if v.size else [str(v.size), "-", "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def structure_sizes(case_path: Path) -> tuple[dict[str, int], dict[str, str]]:
    """Ground-truth voxels per label id (as strings) and names from the sidecar json (id -> name)."""
    from evaluation.groups import label_names
    from evaluation.harness import load_case

    case = load_case(case_path)
    counts = np.bincount(case.gts.ravel())
    sizes = {str(lab): int(counts[lab]) for lab in case.labels}
    names: dict[str, str] = {}
    sidecar = case_path.with_suffix(".json")
    if sidecar.is_file() and not case.relabelled:
        names = label_names(sidecar)
    return sizes, names


def structures_table(out: Path, case_path: Path, top: int = 5, mode: str = "box") -> str:
    """Markdown: DSC_Final / NSD_Final of the `top` largest and smallest structures, one column per setting
    run in box mode `mode` ('box' or 'nobox')."""
    sizes, names = structure_sizes(case_path)
    suffix = f"_{mode}"
    runs = sorted(p for p in (out / "cases").iterdir()
                  if p.name.endswith(suffix) and (p / f"{case_path.stem}.json").is_file())
    finals = {}
    for run in runs:
        details = json.loads((run / f"{case_path.stem}.json").read_text())
        finals[run.name[: -len(suffix)]] = (per_structure(details, "DSC_Final"), per_structure(details, "NSD_Final"))
    order = sorted(sizes, key=lambda k: -sizes[k])
    chosen = order[:top] + [k for k in order[-top:] if k not in order[:top]]
    header = ["structure", "voxels"] + list(finals)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for i, k in enumerate(chosen):
        if i == min(top, len(order)) and len(order) > top:
            lines.append("| ... | | " + " | ".join("" for _ in finals) + " |")
        cells = [names.get(k, f"label {k}"), str(sizes[k])]
        for dsc, nsd in finals.values():
            d, n = dsc.get(k), nsd.get(k)
            cells.append(f"{d:.3f} / {n:.3f}" if d is not None and n is not None else
                         (f"{d:.3f} / -" if d is not None else "-"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m evaluation.compare", description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, type=Path, help="the folder `python -m evaluation` wrote")
    ap.add_argument("--cases", type=Path, default=None, help="the cases folder evaluated (for the structure table)")
    ap.add_argument("--structures", default=None, help="case file name for the structure table (default: first CT)")
    ap.add_argument("--top", type=int, default=5, help="largest and smallest structures shown (default 5)")
    args = ap.parse_args(argv)
    metrics = args.out / "metrics.csv"
    if not metrics.is_file():
        print(f"error: no {metrics}", file=sys.stderr)
        return 1
    print(settings_table(read_csv(metrics)))
    if (args.out / "cases").is_dir():
        print("\nResponse to clicks (Dice change of the clicked structure from the step before)\n")
        print(clicks_table(args.out))
    if args.cases is not None:
        from evaluation.harness import find_cases

        paths = find_cases(args.cases)
        pick = [p for p in paths if p.name == args.structures] if args.structures else \
            [p for p in paths if p.name.startswith("CT_")][:1]
        if not pick:
            print(f"error: no case {args.structures or 'CT_*'} under {args.cases}", file=sys.stderr)
            return 1
        for mode in ("box", "nobox"):
            table = structures_table(args.out, pick[0], args.top, mode)
            if table.count("\n") > 1:
                print(f"\n{pick[0].name} ({mode}): DSC_Final / NSD_Final of the {args.top} largest and "
                      f"{args.top} smallest structures\n")
                print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
