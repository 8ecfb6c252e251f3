"""The time budget: 90 s per class over all six runs, start-up and model loading included.

Per run that is `per_class_run_s` (15 s) per class. The deadline of a case counts from the start
of the process (or `SEGFM_START`, the epoch time `predict.sh` exports before Python starts) for
the first case, and from the case's own start for later cases. Before each class the budget
chooses how much work that class may get:
    REFINE    FULL, then the boundary re-predicted at native resolution (inference/refine.py)
    FULL      the network, with zoom-out re-runs when the mask touches the window border
    NO_ZOOM   the network once
    REDUCED   the network once on a half-resolution patch (about 1/8 of the cost)
    FALLBACK  no network: keep the previous prediction (or, at the box step, the filled box)
Refinement is the first to go: REFINE needs the measured network runs per refined class (coarse, zoom-outs and
tiles; a prior before any) for every class left, and each tile asks `affords(REFINE)` again before it runs.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import numpy as np

REFINE, FULL, NO_ZOOM, REDUCED, FALLBACK = 0, 1, 2, 3, 4  # best first: a larger number is less work
LEVEL_NAMES = {REFINE: "refine", FULL: "full", NO_ZOOM: "no-zoom", REDUCED: "reduced", FALLBACK: "fallback"}


def process_start_time() -> float:
    """Epoch seconds when this run began: `SEGFM_START` if predict.sh set it, else now."""
    try:
        return float(os.environ["SEGFM_START"])
    except (KeyError, ValueError):
        return time.time()


@dataclass
class Budget:
    """Deadline bookkeeping for one case; costs are measured as classes are processed."""

    num_classes: int
    start: float = field(default_factory=time.time)
    per_class_run_s: float = 15.0
    safety: float = 0.8  # share of the budget we plan to use; the rest absorbs container start and jitter
    reserve_s: float = 1.0  # fused labels and the output file
    first_run_estimate_s: float = 2.0
    first_refine_runs_estimate: float = 3.0  # network runs per class at the REFINE level before any is measured
    refine_margin: float = 1.25  # REFINE plans with this much more than the measured runs per refined class
    clock: callable = time.time
    _run_costs: list = field(default_factory=list)
    _refine_runs: list = field(default_factory=list)
    classes_left: int = 1  # as given to the last `begin_class` (the class being processed included)

    @classmethod
    def for_interaction(cls, seconds: float, run_estimate_s: float = 2.0) -> "Budget":
        """The budget of one interactive prediction of one object: `seconds` from now, nothing reserved;
        `run_estimate_s`: the expected cost of a network run (e.g. the previous interaction's `run_cost`).
        A session predicts at `min(budget.begin_class(1), NO_ZOOM)`: the click's own run always happens,
        zoom-outs and refinement tiles only while the budget allows."""
        return cls(1, per_class_run_s=seconds, safety=1.0, reserve_s=0.0, first_run_estimate_s=run_estimate_s)

    @property
    def deadline(self) -> float:
        return self.start + self.safety * self.per_class_run_s * self.num_classes

    def remaining(self) -> float:
        return self.deadline - self.reserve_s - self.clock()

    def record_run(self, seconds: float) -> None:
        """Record the cost of one network run (window encode + forward + paste)."""
        self._run_costs.append(float(seconds))

    @property
    def run_cost(self) -> float:
        """Expected seconds per network run: the worst of the last few, or the prior before any."""
        return max(self._run_costs[-5:]) if self._run_costs else self.first_run_estimate_s

    def record_refined(self, runs: int) -> None:
        """Record how many network runs one class took at the REFINE level (coarse, zoom-outs, tiles)."""
        self._refine_runs.append(int(runs))

    @property
    def refine_runs(self) -> float:
        """Expected network runs per class at the REFINE level: the mean of the last 20, or the prior."""
        recent = self._refine_runs[-20:]
        return float(np.mean(recent)) if recent else self.first_refine_runs_estimate

    def begin_class(self, classes_left: int) -> int:
        """The work level for the next class, given how many (including it) are left; remembered for `affords`."""
        self.classes_left = max(int(classes_left), 1)
        return self.level(self.classes_left)

    def level(self, classes_left: int) -> int:
        """The work level for the next class, given how many (including it) are left."""
        left = self.remaining()
        need = self.run_cost * max(int(classes_left), 1)
        if left >= max(2.5, self.refine_margin * self.refine_runs) * need:
            return REFINE
        if left >= 2.5 * need:
            return FULL
        if left >= need:
            return NO_ZOOM
        if left >= need / 6.0 and left >= self.run_cost / 6.0:
            return REDUCED
        return FALLBACK

    def affords(self, level: int) -> bool:
        """Whether the class being processed may still work at `level` (or better), by the clock now."""
        return self.level(self.classes_left) <= level


# The watchdog (inference/watchdog.py) keeps this much before a case's hard deadline to write its fallback.
# For a case the worker has read (validated), only 'prev_pred' and the boxes are read again and the labels
# are written uncompressed; a case not read yet is read whole first. Rates measured on this 2-core machine
# at load 6 on a 300x512x512 CT-like case (whole case 20 MB/s of npz, prev_pred 115 Mvoxel/s, raw write
# 220-330 Mvoxel/s), halved for margin.
FALLBACK_FIXED_S = 0.5
READ_BYTES_PER_S = 10e6
PREV_READ_VOXELS_PER_S = 55e6
RAW_WRITE_VOXELS_PER_S = 100e6
WATCHDOG_MIN_SHARE = 0.9  # the planner aims at 80 % of a case's share; the watchdog never acts before 90 %


def hard_deadline(start: float, num_classes: int, per_class_run_s: float = 15.0) -> float:
    """The latest moment a case's output should appear: its whole share of the budget, no safety margin."""
    return start + per_class_run_s * max(num_classes, 1)


def fallback_reserve_s(voxels: int, file_bytes: int | None = None) -> float:
    """Seconds to write a case's fallback: from its small members, or (`file_bytes` given) after reading it whole."""
    read = voxels / PREV_READ_VOXELS_PER_S if file_bytes is None else file_bytes / READ_BYTES_PER_S
    return FALLBACK_FIXED_S + read + voxels / RAW_WRITE_VOXELS_PER_S


def watchdog_time(start: float, num_classes: int, per_class_run_s: float, reserve_s: float) -> float:
    """When the watchdog takes a case over: its hard deadline less the reserve, never before 90 % of its share."""
    hard = hard_deadline(start, num_classes, per_class_run_s)
    return max(hard - reserve_s, start + WATCHDOG_MIN_SHARE * (hard - start))
