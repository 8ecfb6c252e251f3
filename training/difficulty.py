"""How well a model segments each structure of its training cases: the file behind `--hard-examples`.

Every class of every case is predicted from the organizer's box alone (one step, through the inference path as
the evaluation runs it, all classes of a case fused together) and scored by Dice. Training with
`--hard-examples FILE` then draws the labels of a real case in proportion to `(1 - Dice) ^ power + floor`
instead of uniformly (`label_weights`), so the structures the model still misses come up more often; the case
itself is drawn as before.

    python -m training.difficulty --checkpoint weights/default.pt --data data/train --out .cache/difficulty.json

The file maps each case (the npz file name without `.npz`) to {label id as stored in its `gts`: Dice}.
Run it on training cases only: the weights are a training choice.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

MAX_CLASSES_PER_RUN = 255  # a challenge output is uint8: cases with more classes are predicted in groups


PROMPTS = ("box", "click")  # the organizer's box step, or its no-box first step (one click per class)


def first_step_input(case, prompt: str = "box") -> dict:
    """The organizer's first step of an evaluation `Case` (labels 1..n): its boxes, or (`click`) one click per class
    on an empty previous prediction, as the no-box mode's first click step."""
    from evaluation.boxes import boxes_from_gt
    from evaluation.clicks import add_click, new_click_state, simulate_clicks
    from evaluation.harness import step_input
    from evaluation.regions import class_boxes

    if prompt == "box":
        return step_input(case, boxes_from_gt(case.gts))
    if prompt != "click":
        raise ValueError(f"prompt must be one of {PROMPTS}, not {prompt!r}")
    zeros = np.zeros(case.gts.shape, np.uint8)
    clicks, order = new_click_state(len(case.labels))
    for index, result in enumerate(simulate_clicks(zeros, case.gts, case.labels, class_boxes(case.gts, case.labels))):
        add_click(clicks, order, index, result)
    return step_input(case, None, clicks, order, zeros)


def case_difficulty(predictor, path: str | os.PathLike, prompt: str = "box"
                    ) -> tuple[dict[int, float], dict[int, int]]:
    """({label id as stored: first-step Dice}, {label id: voxels}) for one training npz (imgs, gts, spacing), from
    the box (`box`) or from one click (`click`)."""
    from evaluation.harness import Case
    from evaluation.metrics import dice_per_class
    from evaluation.regions import labels_of

    path = Path(path)
    with np.load(path, allow_pickle=False) as npz:
        imgs, gts, spacing = npz["imgs"], npz["gts"], npz["spacing"]
    labels = labels_of(gts)
    scores: dict[int, float] = {}
    for start in range(0, len(labels), MAX_CLASSES_PER_RUN):
        group = labels[start:start + MAX_CLASSES_PER_RUN]
        lut = np.zeros(int(gts.max()) + 1, np.uint8)
        lut[group] = np.arange(1, len(group) + 1)
        seq = lut[gts]
        case = Case(path.name, imgs, seq, spacing, list(range(1, len(group) + 1)))
        segs = predictor.predict(first_step_input(case, prompt), name=path.name)
        scores.update(zip((int(v) for v in group), dice_per_class(seq, np.asarray(segs), range(1, len(group) + 1))))
    counts = np.bincount(gts.ravel().astype(np.int64), minlength=max(labels, default=0) + 1)
    return scores, {int(k): int(counts[k]) for k in labels}


SIZE_BINS = (0, 500, 2000, 10000)  # voxels: the compare table's size groups start here


def label_weights(dice: dict[int, float], labels: Sequence[int], power: float = 1.0,
                  floor: float = 0.1) -> np.ndarray:
    """Drawing probabilities of `labels`: (1 - Dice) ^ power + floor, normalised; a label the file does not score
    gets the mean weight of those it does (all equal when it scores none)."""
    w = np.array([(1.0 - min(max(dice[int(v)], 0.0), 1.0)) ** power + floor if int(v) in dice else np.nan
                  for v in labels], float)
    if np.all(np.isnan(w)):
        w[:] = 1.0
    w[np.isnan(w)] = np.nanmean(w)
    return w / w.sum()


def read_difficulty(path: str | os.PathLike) -> dict[str, dict[int, float]]:
    """The file `main` writes: {case name: {label id: Dice}}."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(data, dict) or not isinstance(data.get("cases"), dict):
        raise ValueError(f"{path}: not a difficulty file (no 'cases' object)")
    return {str(name): {int(k): float(v) for k, v in scores.items()} for name, scores in data["cases"].items()}


def _summary(dice: np.ndarray, share_below: float | None = 0.3) -> str:
    """'mean (share < share_below)' of the scored (not NaN) values ('mean' alone without share_below), '-' when
    there are none."""
    scored = dice[~np.isnan(dice)]
    if not scored.size:
        return "-"
    share = f" ({np.mean(scored < share_below):.0%} < {share_below})" if share_below is not None else ""
    return f"{scored.mean():.3f}{share}"


def compare(files: Sequence[str | os.PathLike]) -> str:
    """A text table of several difficulty files over the structures of the first: the mean first-step Dice per
    modality (the case name's first `_` field), overall and (when the first file records voxel counts) per size
    group, the share below 0.3, and the mean over the first file's hardest quarter (how much the structures it
    missed moved)."""
    from evaluation.report import modality_of

    runs = [read_difficulty(f) for f in files]
    keys = [(case, label) for case, scores in runs[0].items() for label in scores]
    values = np.array([[run.get(case, {}).get(label, np.nan) for case, label in keys] for run in runs])
    modality = np.array([modality_of(case) for case, _ in keys])
    lines = ["group | " + " | ".join(Path(f).name for f in files)]
    for name, sel in [*((m, modality == m) for m in sorted(set(modality))), ("all", np.ones(len(keys), bool))]:
        lines.append(f"{name} (n={int(sel.sum())}) | " + " | ".join(_summary(v[sel]) for v in values))
    sizes = json.loads(Path(files[0]).read_text(encoding="utf-8")).get("voxels") or {}
    size = np.array([sizes.get(case, {}).get(str(label), -1) for case, label in keys], float)
    edges = [*SIZE_BINS, np.inf]
    for lo, hi in zip(edges[:-1], edges[1:]):
        sel = (size >= lo) & (size < hi)
        if sel.any():
            name = f"{lo:,}+ voxels" if hi == np.inf else f"{lo:,}-{int(hi):,} voxels"
            lines.append(f"{name} (n={int(sel.sum())}) | " + " | ".join(_summary(v[sel]) for v in values))
    q = np.quantile(values[0], 0.25)
    hard = values[0] <= q
    lines.append(f"hardest quarter of the first (Dice <= {q:.3f}, n={int(hard.sum())}) | "
                 + " | ".join(_summary(v[hard], share_below=None) for v in values))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.difficulty", description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default="weights/default.pt", help="the model to score (native checkpoint)")
    parser.add_argument("--data", help="folder of training npz cases (imgs, gts, spacing)")
    parser.add_argument("--out", type=Path, help="the JSON file to write")
    parser.add_argument("--prompt", choices=PROMPTS, default="box", help="the first step scored: the organizer's "
                        "box (the --hard-examples file), or one click per structure without a box (diagnostics)")
    parser.add_argument("--compare", nargs="+", metavar="FILE", help="instead of scoring: print a table of these "
                        "difficulty files over the structures of the first (per modality, overall, its hardest "
                        "quarter)")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True)
    args = parser.parse_args(argv)
    if args.compare:
        print(compare(args.compare))
        return 0
    if not args.data or not args.out:
        parser.error("--data and --out are required (unless --compare)")
    from tqdm import tqdm

    from inference.predictor import load_predictor

    from .data import list_cases

    predictor = load_predictor(args.checkpoint)
    cases: dict[str, dict[str, float]] = {}
    voxels: dict[str, dict[str, int]] = {}
    for path in tqdm(list_cases(args.data), desc="difficulty", disable=not args.progress):
        scores, sizes = case_difficulty(predictor, path, args.prompt)
        cases[path.stem] = {str(k): round(v, 4) for k, v in scores.items()}
        voxels[path.stem] = {str(k): v for k, v in sizes.items()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(f".{args.out.name}.tmp")
    prompt = "box, one step" if args.prompt == "box" else "one click, no box, one step"
    tmp.write_text(json.dumps({"checkpoint": str(args.checkpoint), "prompt": prompt, "cases": cases,
                               "voxels": voxels}, indent=1), encoding="utf-8")
    os.replace(tmp, args.out)
    scores = [v for c in cases.values() for v in c.values()]
    print(f"{len(scores)} structures of {len(cases)} cases: mean {args.prompt}-step Dice {np.mean(scores):.3f} "
          f"-> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
