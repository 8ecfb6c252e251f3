"""Held-out scores by group of structures: seen in training or not, thin or thick.

    python -m evaluation.groups RUN [RUN ...] [--by seen|thickness] [--cases data/heldout]
                                              [--train data/train data/labelmaps] [--thin 8]
                                              [--setting coarse+full] [--list]

RUN is a folder that `python -m evaluation ... --both-box-modes` wrote. `--by seen` (default): a structure is
seen when its name (case-insensitive, from the case's `<case>.json` "labels") is a label name of any `*.json`
under the --train folders; cases labelled by instance (lesion_1, lesion_2, ...) are skipped. `--by thickness`: a
structure is thin when its thickest point, twice the largest distance from inside it to its surface (in voxels
of the stored grid, from the case's `gts` as the harness scored them), is at most --thin voxels. For each run, box mode and case with both
groups it prints the number of structures and their mean DSC_1 (the first scored step), DSC_Final and DSC_AUC;
`--list` adds every structure, worst DSC_Final first. It says whether a gap is new anatomy (unseen behind seen)
or a kind of structure (thin behind thick).
"""
from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np
from scipy import ndimage

from evaluation.harness import load_case
from evaluation.paired import per_structure


def label_names(names_json: Path) -> dict[str, str]:
    """Label id (string) -> structure name, from a case's names JSON ({"labels": {"1": "liver", ...}})."""
    labels = json.loads(names_json.read_text()).get("labels") or {}
    return {str(k): str(v) for k, v in labels.items()}


def training_names(folders: list[Path]) -> set[str]:
    """Every label name (lower case) of the names JSONs under these folders."""
    seen: set[str] = set()
    for folder in folders:
        for path in sorted(folder.rglob("*.json")):
            try:
                seen |= {n.lower() for n in label_names(path).values()}
            except (json.JSONDecodeError, AttributeError):
                continue  # not a names file
    return seen


def is_instance_labelling(labels: dict[str, str]) -> bool:
    """True when every name is one word plus a number (lesion_1, lesion_2, ...): instances, not structures,
    so seen / unseen says nothing."""
    stems = {re.sub(r"[\s_-]*\d+$", "", n.lower()) for n in labels.values()}
    return len(labels) > 1 and len(stems) == 1


def split_seen(labels: dict[str, str], seen: set[str]) -> dict[str, list[str]]:
    """{"seen": label ids whose name is in `seen`, "unseen": the others}, in label order."""
    groups: dict[str, list[str]] = {"seen": [], "unseen": []}
    for k in sorted(labels, key=int):
        groups["seen" if labels[k].lower() in seen else "unseen"].append(k)
    return groups


def max_thickness(gts: np.ndarray) -> dict[str, float]:
    """Label id -> twice the largest inside-to-surface distance of that label in `gts` (z, y, x), in voxels."""
    out: dict[str, float] = {}
    for lab, sl in enumerate(ndimage.find_objects(gts.astype(np.int64)), start=1):
        if sl is not None:
            mask = np.pad(gts[sl] == lab, 1)  # padded: the volume's border counts as surface
            out[str(lab)] = 2.0 * float(ndimage.distance_transform_edt(mask).max())
    return out


def split_thickness(thickness: dict[str, float], thin: float) -> dict[str, list[str]]:
    """{"thin": label ids at most `thin` voxels thick, "thick": the others}, in label order."""
    groups: dict[str, list[str]] = {"thin": [], "thick": []}
    for k in sorted(thickness, key=int):
        groups["thin" if thickness[k] <= thin else "thick"].append(k)
    return groups


def first_step_dsc(details: dict) -> dict[str, float]:
    """Label id -> DSC of the first scored step (the box step; the first click without a box)."""
    for step in details.get("steps") or []:
        if step.get("dsc_per_class"):
            return {k: float(v) for k, v in step["dsc_per_class"].items()}
    return {}


def structure_scores(details: dict) -> dict[str, dict[str, float]]:
    """metric -> label id -> score, for DSC_1, DSC_Final and DSC_AUC of one case's harness JSON."""
    return {"DSC_1": first_step_dsc(details), "DSC_Final": per_structure(details, "DSC_Final"),
            "DSC_AUC": per_structure(details, "DSC_AUC")}


def summarise(scores: dict[str, dict[str, float]], groups: dict[str, list[str]]) -> dict[str, dict[str, float]]:
    """group -> {"n", "DSC_1", "DSC_Final", "DSC_AUC"} means over the group's scored structures (`structure_scores`)."""
    out: dict[str, dict[str, float]] = {}
    for group, ids in groups.items():
        ids = [k for k in ids if k in scores["DSC_Final"]]
        if ids:
            out[group] = {"n": len(ids), **{m: float(np.mean([s[k] for k in ids])) for m, s in scores.items()}}
    return out


def case_groups(case: Path, by: str, seen: set[str], thin: float, relabelled: bool,
                cache: dict) -> dict[str, list[str]] | None:
    """The two groups of one held-out case (`case` = its .npz path), or None where they say nothing. Label ids
    are the harness's: where it `relabelled` the ground truth 1..N, the names JSON's ids no longer apply."""
    if by == "seen":
        names_json = case.with_suffix(".json")
        if relabelled or not names_json.is_file():
            return None
        labels = label_names(names_json)
        return None if is_instance_labelling(labels) else split_seen(labels, seen)
    if case not in cache:
        if not case.is_file():
            return None
        cache[case] = max_thickness(load_case(case).gts)  # the harness's labels, relabelled as it scored them
    return split_thickness(cache[case], thin)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path, help="evaluation folders (cases/<setting>_<mode>/<case>.json)")
    ap.add_argument("--by", choices=("seen", "thickness"), default="seen", help="how to group the structures")
    ap.add_argument("--cases", type=Path, default=Path("data/heldout"),
                    help="folder of the cases (.npz for --by thickness, names .json for --by seen)")
    ap.add_argument("--train", type=Path, nargs="+", default=[Path("data/train"), Path("data/labelmaps")],
                    help="folders whose names JSONs define the seen structures")
    ap.add_argument("--thin", type=float, default=8.0, help="--by thickness: thin means at most this many voxels")
    ap.add_argument("--setting", default="coarse+full", help="the evaluation setting to read")
    ap.add_argument("--list", action="store_true", help="also list every structure, worst DSC_Final first")
    args = ap.parse_args(argv)
    seen = training_names(args.train) if args.by == "seen" else set()
    cache: dict = {}
    print("| run | box | case | group | n | DSC_1 | DSC_Final | DSC_AUC |\n|---|---|---|---|---|---|---|---|")
    for run in args.runs:
        for mode in ("box", "nobox"):
            for path in sorted((run / "cases" / f"{args.setting}_{mode}").glob("*.json")):
                details = json.loads(path.read_text())
                groups = case_groups(args.cases / f"{path.stem}.npz", args.by, seen, args.thin,
                                     bool(details.get("relabelled_ground_truth")), cache)
                if not groups or not all(groups.values()):
                    continue
                scores = structure_scores(details)
                for group, s in summarise(scores, groups).items():
                    print(f"| {run.name} | {mode} | {path.stem} | {group} | {s['n']} | {s['DSC_1']:.3f} | "
                          f"{s['DSC_Final']:.3f} | {s['DSC_AUC']:.3f} |")
                if args.list:
                    names_json = args.cases / path.name
                    relabelled = bool(details.get("relabelled_ground_truth"))
                    labels = label_names(names_json) if names_json.is_file() and not relabelled else {}
                    final, first = scores["DSC_Final"], scores["DSC_1"]
                    for k in sorted(final, key=final.get):
                        group = next((g for g, ids in groups.items() if k in ids), "-")
                        print(f"    {labels.get(k, k)} ({group}): DSC_1 {first.get(k, 0.0):.2f}, "
                              f"DSC_Final {final[k]:.2f}")


if __name__ == "__main__":
    main()
