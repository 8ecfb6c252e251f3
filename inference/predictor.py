"""Segment every class of a case: prompts -> window -> network -> intensity -> paste -> fusion, within the budget.

`Predictor.predict_case(case)` returns the uint8 label map (z, y, x); `Predictor.predict(data)`
does the same from the arrays and objects of a challenge npz (used by the in-process evaluation).
"""
from __future__ import annotations

import dataclasses
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from . import budget as B
from . import precision as P
from .adapt import AdaptConfig, adapt_and_predict
from .case_io import Case, parse_case
from .fallback import add_fallback, fallback_segs  # noqa: F401 - fallback_segs: re-exported
from .fusion import ProductBackgroundFusion
from .graphcut import SEED_LEVEL, GraphCutConfig, native_cut, refine_by_cut, require_maxflow
from .intensity import IntensityConfig, refine_by_intensity
from .local_update import LocalConfig, click_window, extent_changed, merge, previous_pieces
from .network import CHANNELS, LoadedModel, load_model
from .prompts import ClassPrompts, ImageStats, encode, image_stats
from .refine import RefineConfig, refine
from .window import Window, zoom_factor

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_WEIGHTS = PROJECT_ROOT / "weights" / "default.pt"


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def cpu_threads(environ: dict[str, str] | None = None) -> int:
    """Intra-op threads: $OMP_NUM_THREADS where it is a positive integer (a machine shared with other work),
    else every core the process may run on."""
    env = os.environ if environ is None else environ
    try:
        n = int(env.get("OMP_NUM_THREADS", ""))
        if n > 0:
            return n
    except ValueError:
        pass
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def configure_cpu_threads() -> None:
    """Set torch's intra-op threads (see `cpu_threads`)."""
    torch.set_num_threads(cpu_threads())


def class_prompts(case: Case, c: int) -> ClassPrompts:
    """Class index c's box (3D cuboid, inclusive) and clicks, (z, y, x)."""
    b = case.boxes[c] if case.boxes is not None else None
    box = (b.lo, b.hi) if b is not None else None
    return ClassPrompts(box, case.fg_clicks[c], case.bg_clicks[c])


def prompt_extent(prompts: ClassPrompts, prev_slices: tuple[slice, ...] | None) -> tuple[np.ndarray, np.ndarray] | None:
    """Inclusive (lo, hi) (z, y, x) over the box, every click, lasso and scribble voxel and the previous mask;
    None when empty."""
    los, his = [], []
    if prompts.box is not None:
        los.append(np.asarray(prompts.box[0]))
        his.append(np.asarray(prompts.box[1]))
    pts = prompts.points()
    if len(pts):
        los.append(pts.min(0))
        his.append(pts.max(0))
    if prev_slices is not None:
        los.append(np.array([s.start for s in prev_slices]))
        his.append(np.array([s.stop - 1 for s in prev_slices]))
    if not los:
        return None
    return np.min(los, axis=0), np.max(his, axis=0)


def clicks_only(prompts: ClassPrompts) -> bool:
    """Whether an object's prompts are clicks alone: no box (3D or 2D), lasso or scribble."""
    return prompts.box is None and not any(len(v) for v in (prompts.lasso_fg, prompts.lasso_bg,
                                                              prompts.scribble_fg, prompts.scribble_bg))


def positive_prompts(prompts: ClassPrompts) -> ClassPrompts:
    """The prompts without their negative parts (background clicks, lassos and scribbles)."""
    empty = np.zeros((0, 3), np.int64)
    return dataclasses.replace(prompts, bg=empty, lasso_bg=empty, scribble_bg=empty)


def anchored_slices(prev_mask: np.ndarray, prev_label: int | None, prev_slices: tuple[slice, ...],
                    prompts: ClassPrompts, reach: int = 2) -> tuple[slice, ...] | None:
    """The bounding box (volume slices, z, y, x) of the previous mask's connected components that a positive
    prompt touches: a component inside the box, or within `reach` voxels of a foreground click, lasso or
    scribble voxel; None when no component is touched.

    Components that no positive prompt touches are false positives the next prediction drops: they must not
    stretch the window (a far-away one zooms a small object out of sight)."""
    crop = prev_mask[prev_slices]
    comps, n = ndimage.label(crop == prev_label if prev_label is not None else crop != 0)
    if n == 0:
        return None
    origin = np.array([s.start for s in prev_slices])
    touched: set[int] = set()
    if prompts.box is not None:
        lo = np.maximum(np.asarray(prompts.box[0]) - origin, 0)
        hi = np.minimum(np.asarray(prompts.box[1]) - origin + 1, crop.shape)
        if np.all(hi > lo):
            touched.update(np.unique(comps[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]).tolist())
    pts = np.concatenate([np.asarray(p, np.int64).reshape(-1, 3)
                          for p in (prompts.fg, prompts.lasso_fg, prompts.scribble_fg)]) - origin
    for p in pts:
        lo, hi = np.maximum(p - reach, 0), np.minimum(p + reach + 1, crop.shape)
        if np.all(hi > lo):
            touched.update(np.unique(comps[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]).tolist())
    touched.discard(0)
    if not touched:
        return None
    boxes = [b for i, b in enumerate(ndimage.find_objects(comps), start=1) if i in touched]
    lo = np.min([[b.start for b in box] for box in boxes], axis=0) + origin
    hi = np.max([[b.stop for b in box] for box in boxes], axis=0) + origin
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))


@dataclass
class ObjectQuery:
    """What one object's prediction needs: the image (z, y, x) and its z-score statistics, the object's
    prompts (volume coordinates, z, y, x), and the previous segmentation: a label volume (z, y, x) whose
    voxels equal to `prev_label` (nonzero when None) are the object, with their bounding box `prev_slices`.

    `new_click` (z, y, x), when set, is the click just added (also in `prompts`): with a previous mask it
    allows the click-local update. `prev_probs` / `prev_origin` replace the previous mask by a float map over
    the part of the volume starting at `prev_origin` (set by the refinement for its tiles).

    `anchored`: the window is placed on the positive prompts and the previous mask's components they touch
    (`anchored_slices`), not on negative prompts or untouched components. For a prediction that replaces the
    whole object (the challenge's classes): what lies outside the window is dropped, which is what a
    background click far from the object asks for."""

    image: np.ndarray
    stats: ImageStats
    prompts: ClassPrompts
    prev_mask: np.ndarray | None = None
    prev_label: int | None = None
    prev_slices: tuple[slice, ...] | None = None
    new_click: np.ndarray | None = None
    prev_probs: np.ndarray | None = None
    prev_origin: tuple[int, int, int] = (0, 0, 0)
    anchored: bool = False


def query_extent(query: ObjectQuery) -> tuple[np.ndarray, np.ndarray] | None:
    """The extent (lo, hi), (z, y, x) inclusive, the window is placed on (see `ObjectQuery.anchored`)."""
    prompts, prev_slices = query.prompts, query.prev_slices
    if query.anchored:
        positive = positive_prompts(prompts)
        if positive.box is not None or len(positive.points()):
            if prev_slices is not None and query.prev_mask is not None:
                prev_slices = anchored_slices(query.prev_mask, query.prev_label, prev_slices, positive)
            prompts = positive
    return prompt_extent(prompts, prev_slices)


@dataclass
class ObjectUpdate:
    """One object's new prediction: probabilities (window patch, z, y, x) on `window`. With `keeps_outside` the
    previous mask stands outside the window (a click-local update); without, the object is zero outside it.
    `runs`: network runs it took."""

    window: Window
    probs: torch.Tensor
    keeps_outside: bool = False
    runs: int = 0


def touches_border(mask: torch.Tensor, window: Window) -> bool:
    """Whether the predicted mask (patch, z, y, x) reaches a window face that lies inside the volume."""
    for axis, side in window.border_faces_inside():
        face = mask.select(axis, 0 if side == 0 else mask.shape[axis] - 1)
        if bool(face.any()):
            return True
    return False


# Test-time augmentation: the mirror sets (spatial axes of (z, y, x)) averaged for each --tta level.
TTA_FLIPS: dict[int, tuple[tuple[int, ...], ...]] = {
    1: ((),),
    2: ((), (2,)),
    4: ((), (2,), (1,), (1, 2)),
    8: ((), (0,), (1,), (2,), (0, 1), (0, 2), (1, 2), (0, 1, 2)),
}


CLICK_UPDATES = ("full", "local", "both")
DEFAULT_REFINE = RefineConfig()  # what "refine" / SEGFM_REFINE=on uses
REFINE_BY_DEFAULT = False  # off: no gain on the held-out volumes at 1.4x the time (docs/refinement.md)
DEFAULT_CLICK_UPDATE = "full"  # measured best on the held-out volumes (docs/refinement.md)
DEFAULT_INTENSITY = IntensityConfig()  # what "+intensity" / SEGFM_INTENSITY=on uses
INTENSITY_BY_DEFAULT = True  # on: docs/intensity.md
DEFAULT_GRAPHCUT = GraphCutConfig()  # what "+cut" / SEGFM_GRAPHCUT=on uses
GRAPHCUT_BY_DEFAULT = False  # off: short of the margin set before the held-out run (docs/graphcut.md)
DEFAULT_ADAPT = AdaptConfig()  # what "+adapt" / SEGFM_ADAPT=on uses (inference/adapt.py)
ADAPT_BY_DEFAULT = False  # off: lesions lost and 4 s per object and click (docs/adapt.md); the server only on request
DEFAULT_CLICK_ZOOM = 1.0  # off: small structures lose what large ones gain (weights/README.md, "One click on a large structure")
DEFAULT_MIN_ZOOM = 1.0  # the seed paper's rule: small objects at the volume's resolution (magnifying them: docs/refinement.md)
DEFAULT_VOLUME_WEIGHT = 0.0  # off: +0.0045 held-out mean against a 0.005 margin set before the run; 0.5 opt-in (docs/fusion.md)


def new_click(case: Case, c: int) -> tuple[np.ndarray | None, bool]:
    """Class index c's click of the current step, (z, y, x), and whether the step gave the class no click
    (the organizer's simulator clicks only where the previous prediction has an error)."""
    order = case.clicks_order[c] if c < len(case.clicks_order) else []
    if not order:
        return None, False
    kind = order[-1]
    if kind is None:
        return None, True
    pts = case.fg_clicks[c] if kind == "fg" else case.bg_clicks[c]
    return (np.asarray(pts[-1]) if len(pts) else None), False


def clip_z(region: tuple[slice, ...], values: np.ndarray, z_lo: int, z_hi: int
           ) -> tuple[tuple[slice, ...], np.ndarray] | None:
    """The part of a pasted slab (volume slices z, y, x and its values) with z in [z_lo, z_hi], or None.

    The challenge's box gives the object's exact slice extent (z_min, z_max: contract section 1), so voxels on
    other slices are never the object."""
    start, stop = max(region[0].start, z_lo), min(region[0].stop, z_hi + 1)
    if stop <= start:
        return None
    return (slice(start, stop), *region[1:]), values[start - region[0].start: stop - region[0].start]


def pin_points(region: tuple[slice, ...], values: np.ndarray, points: np.ndarray, value: float) -> np.ndarray:
    """`values` over the volume `region` (z, y, x slices) with the voxels of `points` (N, 3) (z, y, x) that lie
    inside it set to `value`; a copy when any does, `values` itself otherwise."""
    points = np.asarray(points, np.int64).reshape(-1, 3)
    lo = np.array([s.start for s in region])
    hi = np.array([s.stop for s in region])
    inside = points[np.all((points >= lo) & (points < hi), axis=1)]
    if not len(inside):
        return values
    out = np.array(values, dtype=np.float32, copy=True)
    out[tuple((inside - lo).T)] = value
    return out


def pin_clicks(fusion: ProductBackgroundFusion, class_id: int, pieces, fg: np.ndarray, bg: np.ndarray) -> None:
    """Add one class's pasted pieces ((region, values), volume z, y, x) to the fusion with its clicks pinned:
    probability 0 at its background clicks, 1 at its foreground clicks.

    The organizer places a foreground click inside the object and a background click outside it, so both voxels
    are known; a tiny object (a few voxels) that the network loses after a background click keeps its clicked
    voxels at least."""
    for region, values in pieces:
        fusion.add(class_id, region, pin_points(region, values, bg, 0.0))
    for z, y, x in np.asarray(fg, np.int64).reshape(-1, 3):
        if not all(0 <= v < n for v, n in zip((z, y, x), fusion.shape)):
            continue
        fusion.add(class_id, (slice(z, z + 1), slice(y, y + 1), slice(x, x + 1)), np.ones((1, 1, 1), np.float32))


def box_z_range(case: Case, c: int) -> tuple[int, int] | None:
    """Class index c's slice range (z_lo, z_hi) from its challenge box, widened to its foreground clicks
    (which the organizer only places on the object); None without a box."""
    b = case.boxes[c] if case.boxes is not None else None
    if b is None:
        return None
    zs = [b.lo[0], b.hi[0], *(int(p[0]) for p in np.asarray(case.fg_clicks[c]).reshape(-1, 3))]
    return min(zs), max(zs)


def trained_anisotropy(model: LoadedModel) -> float:
    """The window anisotropy a checkpoint was trained with (`--window-anisotropy`; 1, isotropic, when unrecorded)."""
    return float(model.meta.get("train_config", {}).get("window_anisotropy", 1.0))


def reduced_patch(patch: tuple[int, int, int], divisor: tuple[int, int, int]) -> tuple[int, int, int]:
    """Half the patch per axis, rounded to a multiple of the network's divisor."""
    return tuple(max(d, int(round(p / 2 / d)) * d) for p, d in zip(patch, divisor))


class Predictor:
    """A loaded model plus the per-case loop; the model is loaded once per process."""

    def __init__(self, model: LoadedModel, device: torch.device | str | None = None,
                 max_zoom_outs: int = 3, zoom_out_factor: float = 1.5, per_class_run_s: float = 15.0,
                 verbose: bool = False, tta: int = 1, precision: str | None = None,
                 refine: RefineConfig | None = DEFAULT_REFINE if REFINE_BY_DEFAULT else None, click_update: str = DEFAULT_CLICK_UPDATE,
                 local: LocalConfig = LocalConfig(), box_z_clip: bool = True, anchored_extent: bool = True,
                 pin_clicks: bool = True,
                 intensity: IntensityConfig | None = DEFAULT_INTENSITY if INTENSITY_BY_DEFAULT else None,
                 graphcut: GraphCutConfig | None = DEFAULT_GRAPHCUT if GRAPHCUT_BY_DEFAULT else None,
                 volume_weight: float = DEFAULT_VOLUME_WEIGHT, click_zoom: float = DEFAULT_CLICK_ZOOM,
                 min_zoom: float = DEFAULT_MIN_ZOOM, window_anisotropy: float | None = None,
                 adapt: AdaptConfig | None = DEFAULT_ADAPT if ADAPT_BY_DEFAULT else None):
        self.device = torch.device(device) if device is not None else default_device()
        self.precision = P.resolve(self.device, precision)  # $SEGFM_PRECISION when None
        self._autocast = P.autocast(self.device, self.precision)
        if self.device.type == "cpu":
            configure_cpu_threads()
        self.model = model  # the default; `predict_case` swaps in the case's modality route (model.routes)
        for m in (model, *model.routes.values()):
            m.net.to(self.device).eval()
        self.max_zoom_outs = max_zoom_outs
        self.zoom_out_factor = zoom_out_factor
        self.per_class_run_s = per_class_run_s
        self.verbose = verbose
        if tta not in TTA_FLIPS:
            raise ValueError(f"tta must be one of {sorted(TTA_FLIPS)} (mirrored copies averaged), not {tta}")
        self.tta = tta
        if click_update not in CLICK_UPDATES:
            raise ValueError(f"click_update must be one of {', '.join(CLICK_UPDATES)}, not {click_update!r}")
        self.refine = refine  # None: no refinement (REFINE works as FULL)
        self.click_update = click_update
        self.local = local
        self.box_z_clip = box_z_clip  # challenge cases: nothing outside the box's exact slice extent
        self.anchored_extent = anchored_extent  # challenge cases: ObjectQuery.anchored
        self.pin_clicks = pin_clicks  # challenge cases: clicked voxels keep the organizer's answer (pin_clicks)
        self.intensity = intensity  # None: the network's probabilities as they are (inference/intensity.py)
        self.graphcut = graphcut  # None: no edge snapping (inference/graphcut.py)
        self.adapt = adapt  # None: no per-window fine-tuning at click steps (inference/adapt.py)
        self.volume_weight = volume_weight  # which class a voxel several classes claim gets (inference/fusion.py)
        if not click_zoom >= 1.0:
            raise ValueError(f"click_zoom must be >= 1, not {click_zoom}")
        if not 0.25 <= min_zoom <= 1.0:
            raise ValueError(f"min_zoom must be in [0.25, 1], not {min_zoom}")
        self.min_zoom = min_zoom  # below 1: coarse windows of small objects magnified down to this zoom
        if window_anisotropy is not None and not 1.0 <= window_anisotropy <= 4.0:
            raise ValueError(f"window_anisotropy must be in [1, 4], not {window_anisotropy}")
        self.window_anisotropy = window_anisotropy  # None: what the checkpoint was trained with (trained_anisotropy)
        self.click_zoom = click_zoom  # first prediction of an object prompted by clicks alone: window this much larger
        if graphcut is not None:
            require_maxflow()  # fail at start, not at the first object

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike | None = None, device=None, routes: bool = True,
                        **kw) -> "Predictor":
        """With `routes` (default) the checkpoint's modality routes too (inference/network.py), which only
        `predict_case` reads: a caller that never predicts whole cases (the server) passes routes=False."""
        path = Path(path) if path is not None else Path(os.environ.get("SEGFM_WEIGHTS", DEFAULT_WEIGHTS))
        dev = torch.device(device) if device is not None else default_device()
        return cls(load_model(path, dev, routes=routes), dev, **kw)

    # ------------------------------------------------------------------ one network run
    @torch.inference_mode()
    def run_network(self, x: torch.Tensor, tta: int = 1) -> torch.Tensor:
        """Foreground probability (pz, py, px) for one encoded input (8, pz, py, px); with tta > 1 the mean
        over that many mirrored copies (one batch), each mirrored back."""
        flips = TTA_FLIPS[tta]
        x = x.to(self.device, non_blocking=True)
        inp = torch.stack([torch.flip(x, [a + 1 for a in f]) if f else x for f in flips])
        with self._autocast():
            logits = self.model.net(inp).float()
        probs = torch.sigmoid(logits[:, 1] - logits[:, 0])
        mean = sum(torch.flip(p, list(f)) if f else p for p, f in zip(probs, flips)) / len(flips)
        return mean.cpu()

    def predict_window(self, query: "ObjectQuery", window: Window, tta: int = 1, adapt: bool = True) -> torch.Tensor:
        """Foreground probabilities (patch, z, y, x) of one object inside `window`: from a copy of the network
        fine-tuned on the object's clicks when the adaptation is on and `adapt` allows it (inference/adapt.py),
        moved by the window's intensities when the intensity step is on (inference/intensity.py), then snapped to
        its edges when the graph-cut step is on (inference/graphcut.py; a zoomed-out window with `native` is cut
        after the coarse pass)."""
        x = encode(window, query.image, query.stats, query.prompts, query.prev_mask, query.prev_label,
                   query.prev_probs, query.prev_origin)
        probs = self.run_network(x, tta)
        if adapt and self.adapt is not None:
            adapted = adapt_and_predict(self.model.net, x, probs, self.adapt, self._autocast, self.device)
            probs = adapted if adapted is not None else probs
        cut_here = self.graphcut is not None and not self._cut_natively(window)
        if self.intensity is None and not cut_here:
            return probs
        valid = window.inside_mask(query.image.shape)  # computed once for both steps
        if self.intensity is not None:
            probs = refine_by_intensity(probs, x[CHANNELS["image"]], self.intensity,
                                        valid if self.intensity.inside_only else None)
        if cut_here:
            probs = refine_by_cut(probs, x[CHANNELS["image"]], self.graphcut, valid,
                                  x[CHANNELS["click_pos"]] >= SEED_LEVEL, x[CHANNELS["click_neg"]] >= SEED_LEVEL)
        return probs

    def _cut_natively(self, window: Window) -> bool:
        """Whether the graph cut of this window waits for the coarse pass, on the volume's own grid (`native`)."""
        return self.graphcut is not None and self.graphcut.native and not window.native_resolution

    def _timed_window(self, query: "ObjectQuery", window: Window, tta: int, budget: B.Budget | None,
                      counter: list[int], adapt: bool = True) -> torch.Tensor:
        """predict_window, its cost (by the budget's clock) recorded in the budget and counted in counter[0]."""
        if budget is None:
            counter[0] += 1
            return self.predict_window(query, window, tta, adapt=adapt)
        t0 = budget.clock()
        probs = self.predict_window(query, window, tta, adapt=adapt)
        budget.record_run(budget.clock() - t0)
        counter[0] += 1
        return probs

    # ------------------------------------------------------------------ one object
    def predict_object(self, query: "ObjectQuery", level: int = B.REFINE,
                       budget: B.Budget | None = None) -> tuple[Window, torch.Tensor] | None:
        """Window and probabilities (window patch, z, y, x) of the whole object, or None when it has no prompt.

        What `predict_update` predicts; a click-local update is merged into the previous mask here, so the
        window always holds the whole object (zero outside it). Used by the challenge's per-class loop."""
        update = self.predict_update(query, level, budget)
        if update is None or not update.keeps_outside:
            return None if update is None else (update.window, update.probs)
        merged = merge(query.prev_slices, previous_pieces(query.prev_mask, query.prev_label, query.prev_slices),
                       update.window, update.probs, self.local.max_region_voxels)
        if merged is not None:
            return merged
        return self.predict_object(dataclasses.replace(query, new_click=None), level, budget)  # too large to merge

    def predict_update(self, query: "ObjectQuery", level: int = B.REFINE,
                       budget: B.Budget | None = None) -> "ObjectUpdate | None":
        """One object's new prediction, or None when it has no prompt at all.

        Coarse pass: the window is centred on the extent of the prompts and the previous mask (zoom rule); from
        the FULL level up it grows while the mask touches a window face inside the volume. At the REFINE level
        the boundary of a zoomed-out result is then re-predicted at native resolution (inference/refine.py) and
        the window is a native one (`Window.native`: patch = size). With `query.new_click` and a previous mask,
        `click_update` 'local' predicts only a native patch around the click (returned with keeps_outside: the
        previous mask stands outside it), and the coarse pass as well when the object's extent changed; 'both'
        always runs both; the patch is then pasted over the coarse result (inference/local_update.py).
        Interactive sessions use this directly: only the returned window changes."""
        prompts = query.prompts
        extent = query_extent(query)
        if extent is None:
            return None
        runs = [0]
        local = None
        adapt = level <= B.FULL  # the per-window fine-tuning is the first thing a short budget drops
        if (self.click_update != "full" and level <= B.NO_ZOOM and query.new_click is not None
                and query.prev_mask is not None and query.prev_slices is not None
                and zoom_factor(extent[1] - extent[0] + 1, self.model.patch_size) <= self.local.max_object_zoom):
            patch_window = click_window(query.new_click, self.model.patch_size, query.image.shape, self.local.zoom)
            local_probs = self._timed_window(query, patch_window, self.tta, budget, runs, adapt)
            local = (patch_window, local_probs)
            crop = patch_window.crop_nearest(query.prev_mask)
            old = crop == query.prev_label if query.prev_label is not None else crop != 0
            changed = extent_changed((local_probs > 0.5).numpy(), old, patch_window, self.local)
            if self.click_update == "local" and not changed:
                self._record_refined(level, budget, runs)
                return ObjectUpdate(patch_window, local_probs, True, runs[0])
        window, probs = self._coarse(query, extent, level, budget, runs, adapt)
        if level == B.REFINE and self.refine is not None:
            tile_prompts = prompts if self.refine.box_in_tiles else dataclasses.replace(prompts, box=None)

            def tile(tile_window: Window, prev: np.ndarray, origin) -> torch.Tensor:
                tile_query = dataclasses.replace(query, prompts=tile_prompts, prev_probs=prev, prev_origin=tuple(origin))
                return self._timed_window(tile_query, tile_window, self.tta, budget, runs, adapt)

            refined = refine(tile, window, probs, self.refine,
                             keep_going=(lambda: budget.affords(B.REFINE)) if budget is not None else (lambda: True))
            if refined is not None:
                window, probs = refined.window, refined.probs
        if self._cut_natively(window):
            cut = native_cut(window, probs, query.image, self.graphcut)
            if cut is not None:
                window, probs = cut
        if local is not None:
            merged = merge(window.inside(), window.paste(probs), local[0], local[1], self.local.max_region_voxels)
            if merged is not None:
                window, probs = merged
        self._record_refined(level, budget, runs)
        return ObjectUpdate(window, probs, False, runs[0])

    @staticmethod
    def _record_refined(level: int, budget: B.Budget | None, runs: list[int]) -> None:
        if budget is not None and level == B.REFINE:
            budget.record_refined(runs[0])

    def _coarse(self, query: "ObjectQuery", extent, level: int, budget: B.Budget | None,
                runs: list[int], adapt: bool = True) -> tuple[Window, torch.Tensor]:
        """The coarse pass: the zoom-rule window around the extent, grown while the mask touches its border."""
        patch = self.model.patch_size
        if level == B.REDUCED:
            patch = reduced_patch(patch, self.model.divisor)
        first_click = clicks_only(query.prompts) and query.prev_slices is None and query.prev_probs is None
        zoom_extra = self.click_zoom if first_click else 1.0
        aniso = self.window_anisotropy if self.window_anisotropy is not None else trained_anisotropy(self.model)
        window = Window.around(extent[0], extent[1], patch, query.image.shape, zoom_extra, min_zoom=self.min_zoom,
                               anisotropy=aniso)
        if level == B.REDUCED:  # the reduced level is for saving time: no TTA, not a typical run's cost
            runs[0] += 1
            return window, self.predict_window(query, window, 1, adapt=False)
        probs = self._timed_window(query, window, self.tta, budget, runs, adapt)
        zoom_outs = 0
        while (level <= B.FULL and zoom_outs < self.max_zoom_outs and touches_border(probs > 0.5, window)):
            bigger = window.zoomed(self.zoom_out_factor)
            if bigger.size == window.size or (budget is not None and budget.level(1) > B.FULL):
                break
            window, probs = bigger, self._timed_window(query, bigger, self.tta, budget, runs, adapt)
            zoom_outs += 1
        return window, probs

    def predict_class(self, case: Case, c: int, stats: ImageStats, prev_slices, level: int,
                      budget: B.Budget | None = None, click: np.ndarray | None = None) -> tuple[Window, torch.Tensor] | None:
        """Window and probabilities of class index c of a challenge case, or None when it has no prompt;
        `click` is the class's click of this step (z, y, x), if any."""
        query = ObjectQuery(case.image, stats, class_prompts(case, c), case.prev_pred, c + 1, prev_slices, click,
                            anchored=self.anchored_extent)
        return self.predict_object(query, level, budget)

    # ------------------------------------------------------------------ one case
    def predict_case(self, case: Case, budget: B.Budget | None = None) -> np.ndarray:
        """The uint8 (z, y, x) label map of all classes of a case, by the model of the case's modality."""
        default = self.model
        self.model = default.for_case(case.name)
        try:
            return self._predict_case(case, budget)
        finally:
            self.model = default

    def _predict_case(self, case: Case, budget: B.Budget | None) -> np.ndarray:
        budget = budget or B.Budget(case.num_classes, per_class_run_s=self.per_class_run_s)
        stats = image_stats(case.image)
        fusion = ProductBackgroundFusion(case.shape, self.volume_weight)
        prev_objects = ndimage.find_objects(case.prev_pred, max_label=case.num_classes) if case.prev_pred is not None else []
        levels = []
        for c in range(case.num_classes):
            prev_slices = prev_objects[c] if c < len(prev_objects) else None
            level = budget.begin_class(case.num_classes - c)
            click, unclicked = new_click(case, c)
            if unclicked and case.prev_pred is not None:
                level = B.FALLBACK  # the organizer gives no click only where the previous mask had no error
            levels.append(level)
            result = None
            if level != B.FALLBACK:
                result = self.predict_class(case, c, stats, prev_slices, level, budget, click)
            if result is None:
                self._add_fallback(fusion, case, c, prev_slices)
                continue
            window, probs = result
            z_range = box_z_range(case, c) if self.box_z_clip else None
            pieces = (clip_z(region, values, *z_range) if z_range is not None else (region, values)
                      for region, values in window.paste(probs))
            pieces = [p for p in pieces if p is not None]
            if self.volume_weight > 0:  # only the volume-weighted overlap rule reads it
                fusion.set_volume(c + 1, float(sum(np.count_nonzero(values > 0.5) for _, values in pieces)))
            if self.pin_clicks:
                pin_clicks(fusion, c + 1, pieces, case.fg_clicks[c], case.bg_clicks[c])
            else:
                for piece in pieces:
                    fusion.add(c + 1, *piece)
        if self.verbose:
            counts = {B.LEVEL_NAMES[k]: levels.count(k) for k in sorted(set(levels))}
            print(f"  {case.name}: {case.num_classes} classes, levels {counts}, "
                  f"run cost {budget.run_cost:.2f} s, {budget.remaining():.1f} s left", file=sys.stderr)
        return fusion.labels()

    _add_fallback = staticmethod(add_fallback)

    def predict(self, data: dict[str, Any], name: str = "case") -> np.ndarray:
        """Predict from the contents of a challenge npz (imgs, spacing, boxes, clicks, clicks_order, prev_pred)."""
        return self.predict_case(parse_case(data, name))


def load_predictor(checkpoint_path: str | os.PathLike | None = None, device=None, routes: bool = True,
                   **kw) -> Predictor:
    """A ready Predictor for a native checkpoint file or an nnInteractive folder (default: weights/default.pt),
    with the file's modality routes unless `routes` is False."""
    return Predictor.from_checkpoint(checkpoint_path, device, routes, **kw)
