"""Paired comparison of two evaluation folders: the difference of the team's score, with a bootstrap interval.

    python -m evaluation.paired A B [--setting NAME] [--setting-b NAME] [--metric NAME|all]
                                    [--resamples N] [--seed S]

A and B are folders that `python -m evaluation ... --both-box-modes` wrote (cases/<setting>_<mode>/<case>.json).
The score is the one the shipping rule reads: the mean over box modes of the mean over cases of the mean over a
case's structures, for each of the challenge's four metrics per structure (DSC_Final, NSD_Final, and the click
steps' DSC_AUC and NSD_AUC). The difference B - A is paired structure by structure; its interval resamples each
case's structures with replacement (the same draw for both box modes, since they are the same structures), so it
says how much the difference owes to which structures the held-out volumes happen to hold. It does not include
the spread between training runs (seeds): compare two runs of one recipe for that.

With all four metrics it ends with the shipping rule's verdict (`verdict`, fixed on 2026-12-05 before the
candidates it first judged were scored): B ships when its DSC_Final score is at least `SHIP_MARGIN` above A's and
it is not behind on any of the four metrics in 95 % or more of the resamples.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from evaluation.metrics import auc

METRICS = ("DSC_Final", "NSD_Final", "DSC_AUC", "NSD_AUC")  # the challenge's four, per structure
SHIP_MARGIN = 0.01  # the team's rule: DSC_Final (mean of both box modes) at least this much above the default
BEHIND_SHARE = 0.95  # ... and no metric on which B is behind in this share of the resamples or more


def per_structure(details: dict, metric: str = "DSC_Final") -> dict[str, float]:
    """Label id (as a string) -> the structure's DSC_Final, NSD_Final, DSC_AUC or NSD_AUC (the click steps'
    area), from one case's harness JSON."""
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, not {metric!r}")
    key = "dsc_per_class" if metric.startswith("DSC") else "nsd_per_class"
    steps = [s.get(key) for s in details.get("steps") or []]
    if not steps or steps[-1] is None:
        return {}
    if metric.endswith("_Final"):
        return {k: float(v) for k, v in steps[-1].items()}
    # steps before a structure was scored (the no-box mode's skipped first step) count as 0, as in the harness
    return {k: auc([float((s or {}).get(k, 0.0)) for s in steps]) for k in steps[-1]}


def load_pairs(dir_a: Path, dir_b: Path, setting: str, setting_b: str | None = None
               ) -> dict[str, dict[str, tuple[dict, dict]]]:
    """case -> box mode -> (A's, B's harness JSON) for the cases both folders scored in that mode; B's setting is
    `setting_b` when given (two settings of one folder, or folders run with different settings)."""
    pairs: dict[str, dict[str, tuple[dict, dict]]] = {}
    for mode in ("box", "nobox"):
        folder_a, folder_b = dir_a / "cases" / f"{setting}_{mode}", dir_b / "cases" / f"{setting_b or setting}_{mode}"
        if not (folder_a.is_dir() and folder_b.is_dir()):
            continue
        for path_a in sorted(folder_a.glob("*.json")):
            path_b = folder_b / path_a.name
            if path_b.is_file():
                pairs.setdefault(path_a.stem, {})[mode] = (json.loads(path_a.read_text()),
                                                           json.loads(path_b.read_text()))
    return pairs


def paired_values(pairs: dict[str, dict[str, tuple[dict, dict]]], metric: str = "DSC_Final"
                  ) -> dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """case -> box mode -> (A's, B's per-structure values of `metric`) over the structures both scored in every
    mode of that case, in one label order shared by the modes."""
    paired: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
    for case, modes in pairs.items():
        values = {mode: (per_structure(a, metric), per_structure(b, metric)) for mode, (a, b) in modes.items()}
        common = sorted(set.intersection(*(set(a) & set(b) for a, b in values.values())), key=int)
        if common:
            paired[case] = {mode: (np.array([a[k] for k in common]), np.array([b[k] for k in common]))
                            for mode, (a, b) in values.items()}
    return paired


def paired_scores(dir_a: Path, dir_b: Path, setting: str, metric: str = "DSC_Final", setting_b: str | None = None
                  ) -> dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """`paired_values` of `metric` for the folders' cases (`load_pairs`)."""
    return paired_values(load_pairs(dir_a, dir_b, setting, setting_b), metric)


def rule_score(paired: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]], which: int,
               draws: dict[str, np.ndarray] | None = None) -> float:
    """The mean over box modes of the mean over cases of the mean over structures, for folder `which` (0: A,
    1: B); `draws` (case -> structure indices) resamples each case's structures."""
    modes = sorted({m for per_case in paired.values() for m in per_case})
    means = []
    for mode in modes:
        case_means = []
        for case, per_case in paired.items():
            if mode in per_case:
                values = per_case[mode][which]
                case_means.append(float(values[draws[case]].mean() if draws else values.mean()))
        means.append(np.mean(case_means))
    return float(np.mean(means))


def bootstrap(paired: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]], resamples: int = 10000,
              seed: int = 0) -> np.ndarray:
    """Resampled differences B - A of `rule_score` (each case's structures drawn with replacement)."""
    rng = np.random.default_rng(seed)
    sizes = {case: len(next(iter(per_case.values()))[0]) for case, per_case in paired.items()}
    deltas = np.empty(resamples)
    for i in range(resamples):
        draws = {case: rng.integers(0, n, n) for case, n in sizes.items()}
        deltas[i] = rule_score(paired, 1, draws) - rule_score(paired, 0, draws)
    return deltas


def report(paired: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]], deltas: np.ndarray, metric: str) -> str:
    """Markdown: per case and mode A, B and B - A; then the rule's score, its difference and the interval."""
    lines = [f"| case | box | structures | A {metric} | B {metric} | B - A | B better / worse |", "|" + "---|" * 7]
    for case, per_case in paired.items():
        for mode, (a, b) in per_case.items():
            lines.append(f"| {case} | {mode} | {a.size} | {a.mean():.4f} | {b.mean():.4f} | {b.mean() - a.mean():+.4f} "
                         f"| {(b > a).sum()} / {(b < a).sum()} |")
    score_a, score_b = rule_score(paired, 0), rule_score(paired, 1)
    low, high = np.percentile(deltas, [2.5, 97.5])
    lines += ["", f"{metric}, mean of both box modes: A {score_a:.5f}, B {score_b:.5f}, "
                  f"B - A {score_b - score_a:+.5f}; 95 % interval over structures [{low:+.4f}, {high:+.4f}]; "
                  f"B ahead in {(deltas > 0).mean():.1%} of {deltas.size} resamples"]
    return "\n".join(lines)


def verdict(results: dict[str, tuple[float, float]], margin: float = SHIP_MARGIN,
            behind_share: float = BEHIND_SHARE) -> tuple[bool, str]:
    """The shipping rule over `results` (metric -> (B - A of the rule score, share of resamples with B ahead)):
    (ships, reason). DSC_Final must gain `margin`; no metric may be behind in `behind_share` of the resamples."""
    missing = [m for m in METRICS if m not in results]
    if missing:
        raise ValueError(f"the verdict needs all four metrics; missing {', '.join(missing)}")
    delta, _ = results["DSC_Final"]
    behind = [m for m, (_, ahead) in results.items() if 1.0 - ahead >= behind_share]
    if delta < margin:
        return False, f"DSC_Final {delta:+.4f} is below the +{margin:g} margin"
    if behind:
        return False, f"behind on {', '.join(behind)} in at least {behind_share:.0%} of the resamples"
    return True, f"DSC_Final {delta:+.4f} >= +{margin:g} and behind on no metric"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m evaluation.paired", description=__doc__.splitlines()[0])
    ap.add_argument("a", type=Path, help="evaluation folder of the reference model (A)")
    ap.add_argument("b", type=Path, help="evaluation folder of the candidate (B)")
    ap.add_argument("--setting", default="coarse+full", help="the predictor setting both folders ran")
    ap.add_argument("--setting-b", default=None, help="B's setting, when it differs from A's")
    ap.add_argument("--metric", default="all", choices=METRICS + ("all",),
                    help="per-structure value compared (default: all four, one table each)")
    ap.add_argument("--resamples", type=int, default=10000, help="bootstrap resamples (default 10000)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the resampling")
    args = ap.parse_args(argv)
    pairs = load_pairs(args.a, args.b, args.setting, args.setting_b)  # read once, scored per metric
    results: dict[str, tuple[float, float]] = {}
    for i, metric in enumerate(METRICS if args.metric == "all" else (args.metric,)):
        paired = paired_values(pairs, metric)
        if not paired:
            print(f"error: {args.a} and {args.b} share no scored case of settings {args.setting!r} / "
                  f"{args.setting_b or args.setting!r} (cases/<setting>_box|nobox/*.json)", file=sys.stderr)
            return 1
        deltas = bootstrap(paired, args.resamples, args.seed)
        results[metric] = (rule_score(paired, 1) - rule_score(paired, 0), float((deltas > 0).mean()))
        print(("\n" if i else "") + report(paired, deltas, metric))
    if len(results) == len(METRICS):
        ships, reason = verdict(results)
        print(f"\nshipping rule: B {'ships' if ships else 'does not ship'} ({reason})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
