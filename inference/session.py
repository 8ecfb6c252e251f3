"""One object segmented interactively: the session behind `inference.serve`, usable in-process too.

A session holds one image, one target object (its mask, uint8 0/1) and the prompts given so far: points
(+/-), boxes (a viewer's 2D box one slice thick, or a 3D box), lassos (a filled contour on one slice),
scribbles and an initial segmentation. Every prediction goes through the container's own code:
`Predictor.predict_object(ObjectQuery(...), level, budget)` (window and zoom rule, prompt encoding,
network, zoom-out, time budget), the mask is pasted with `Window.paste` and decided with the fusion rule.
Each call returns an `Update`: whether the model ran (or an undo happened) and the region it rewrote.

Axis order: every array, coordinate and box is in the array order of the image given to `set_image`,
called (z, y, x) here. nnInteractive's clients send exactly that order (their spatial axes 1..3 of the
(C, ...) image, named "x, y, z" in nnInteractive's code): napari and 3D Slicer send their numpy volume,
which is (z, y, x), so nothing is transposed anywhere. Boxes are half-open per axis, [[z0, z1], [y0, y1],
[x0, x1]], as in the protocol; a 2D box has size 1 on the axis it was drawn across. Spacing is (z, y, x)
too; it is kept for the caller but, as in the challenge container, the model does not use it (the window
keeps the voxel aspect ratio).

What the model was trained on: 3D boxes, points (+/-), and positive 2D boxes, lassos and scribbles on one
slice (the data engine's viewer prompts; weights/default.pt was trained with them since 2026-12-02).
Negative boxes, negative lassos and negative scribbles are accepted (the protocol has them) and encoded in
nnInteractive's negative channels, but no model here was trained on them: `UNTRAINED` lists them.

The session runs from the repository, not from the challenge image (it uses `evaluation.regions` and, for
intensities, `training.convert`); the container's path never imports it.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

from evaluation.regions import bounding_box, union_slices

from . import budget as B
from .fusion import single_object_mask
from .predictor import ObjectQuery, Predictor
from .prompts import ClassPrompts, image_stats, no_voxels

Region = tuple[slice, slice, slice]  # (z, y, x), half-open
UNTRAINED = ("negative box", "negative lasso", "negative scribble")
INTENSITY_MODES = ("auto", "raw", "percentile", "ct-soft", "ct-lung", "ct-brain", "ct-bone")
MAX_RASTER_VOXELS = 1 << 22  # voxels of boxes held as voxel sets (extra positive boxes, negative boxes)
CT_AIR_HU = -500.0  # 'auto': an image with values below this is taken as CT in Hounsfield units


class SessionError(ValueError):
    """A request the session cannot interpret (the message names the problem)."""


@dataclass(frozen=True)
class Update:
    """What a call changed: `ran` (the model ran, or something was undone) and the region of the mask
    (z, y, x slices, half-open) whose content was rewritten, or None."""

    ran: bool
    region: Region | None = None


def _voxel_lists() -> dict[str, list[np.ndarray]]:
    return {"lasso_fg": [], "lasso_bg": [], "scribble_fg": [], "scribble_bg": []}


@dataclass
class PromptLog:
    """The prompts of the object so far, (z, y, x): the latest positive box (inclusive lo, hi) and voxel
    sets; earlier positive boxes and all negative boxes are kept as voxels of the box channels."""

    box: tuple[tuple[int, int, int], tuple[int, int, int]] | None = None
    fg: list[tuple[int, int, int]] = field(default_factory=list)
    bg: list[tuple[int, int, int]] = field(default_factory=list)
    voxels: dict[str, list[np.ndarray]] = field(default_factory=_voxel_lists)

    def copy(self) -> "PromptLog":
        return PromptLog(self.box, list(self.fg), list(self.bg), {k: list(v) for k, v in self.voxels.items()})

    def class_prompts(self) -> ClassPrompts:
        """The container's prompt object for these prompts (volume coordinates, z, y, x)."""
        def stack(parts: list[np.ndarray]) -> np.ndarray:
            return np.concatenate(parts).astype(np.int64) if parts else no_voxels()

        def points(pts: list[tuple[int, int, int]]) -> np.ndarray:
            return np.asarray(pts, np.int64).reshape(-1, 3)

        v = self.voxels
        return ClassPrompts(self.box, points(self.fg), points(self.bg), stack(v["lasso_fg"]), stack(v["lasso_bg"]),
                            stack(v["scribble_fg"]), stack(v["scribble_bg"]))


def box_voxels(lo, hi) -> np.ndarray:
    """Every voxel (N, 3) of the inclusive box [lo, hi] (z, y, x)."""
    lo, hi = np.asarray(lo, np.int64), np.asarray(hi, np.int64)
    size = hi - lo + 1
    if int(np.prod(size)) > MAX_RASTER_VOXELS:
        raise SessionError(f"a box of {int(np.prod(size))} voxels cannot be added beside the current box "
                           f"(at most {MAX_RASTER_VOXELS}); reset the object, or draw a 2D box")
    return np.argwhere(np.ones(tuple(size), bool)) + lo


def prepare_image(image: np.ndarray, intensity: str = "auto") -> np.ndarray:
    """The image (z, y, x) in the intensity convention the model was trained on (the challenge's [0, 255]).

    'raw': unchanged. 'ct-soft' / 'ct-lung' / 'ct-brain' / 'ct-bone': Hounsfield units windowed as the
    organizers did (`training.convert.window_ct`). 'percentile': clipped to the 0.5-99.5 percentiles and
    rescaled (`training.convert.clip_percentiles`; integer images already in [0, 255] stay as they are).
    'auto': integer images in [0, 255] unchanged, images with values below -500 (air in HU) the soft-tissue
    CT window, anything else 'percentile'."""
    if intensity not in INTENSITY_MODES:
        raise SessionError(f"unknown intensity mode {intensity!r}; one of {', '.join(INTENSITY_MODES)}")
    image = np.asarray(image)
    if intensity == "raw":
        return image
    if np.issubdtype(image.dtype, np.floating) and not np.isfinite(image).all():
        raise SessionError("the image holds NaN or infinite values")
    lo, hi = float(image.min()), float(image.max())
    if intensity == "auto":
        if np.issubdtype(image.dtype, np.integer) and lo >= 0 and hi <= 255:
            return image.astype(np.uint8, copy=False)
        intensity = "ct-soft" if lo < CT_AIR_HU else "percentile"
    from training.convert import CT_WINDOWS, clip_percentiles, window_ct  # the data's own preprocessing

    if intensity == "percentile":
        return clip_percentiles(image)[0]
    width, level = CT_WINDOWS[intensity.removeprefix("ct-")]
    out = np.empty(image.shape, np.uint8)
    for z in range(0, image.shape[0], 16):  # elementwise: slab by slab bounds the float64 temporaries
        out[z:z + 16] = window_ct(image[z:z + 16], width, level)
    return out


def _round_inside(value: float, n: int, what: str) -> int:
    """A voxel index from a coordinate inside the volume's extent [-0.5, n - 0.5] of one axis."""
    if not np.isfinite(value) or value < -0.5 or value > n - 0.5:
        raise SessionError(f"{what} {value} lies outside the image (0..{n - 1})")
    return int(min(max(round(value), 0), n - 1))


def _mask_voxels(mask: np.ndarray, shape: tuple[int, ...], bbox) -> np.ndarray:
    """Voxels (N, 3) (z, y, x) set in a full-volume mask, or in a crop placed at the half-open `bbox`."""
    mask = np.asarray(mask)
    if mask.ndim != 3 or mask.dtype.kind not in "biuf":
        raise SessionError(f"a mask must be a 3D numeric array, got {mask.ndim}D {mask.dtype}")
    if bbox is None:
        if mask.shape != tuple(shape):
            raise SessionError(f"mask shape {mask.shape} differs from the image shape {tuple(shape)} "
                               "(send the full volume or a crop with its interaction bbox)")
        return np.argwhere(mask != 0)
    bounds = _int_bounds(bbox)
    for axis, ((a, b), n) in enumerate(zip(bounds, shape)):
        if not 0 <= a <= b <= n:
            raise SessionError(f"interaction bbox {bbox} leaves the image on axis {axis} (0..{n})")
    if tuple(b - a for a, b in bounds) != mask.shape:
        raise SessionError(f"mask shape {mask.shape} differs from the interaction bbox size "
                           f"{tuple(b - a for a, b in bounds)}")
    return np.argwhere(mask != 0) + np.array([a for a, _ in bounds])


def _int_bounds(bbox) -> list[tuple[int, int]]:
    """A box [[z0, z1], [y0, y1], [x0, x1]] (numbers, rounded; image array order) -> int pairs, or SessionError."""
    try:
        pairs = [(float(a), float(b)) for a, b in bbox]
    except (TypeError, ValueError):
        raise SessionError(f"a box must be [[lo, hi], [lo, hi], [lo, hi]], got {bbox!r}") from None
    if len(pairs) != 3 or not all(np.isfinite(v) for p in pairs for v in p):
        raise SessionError(f"a box must be three finite [lo, hi] pairs, got {bbox!r}")
    return [(int(round(a)), int(round(b))) for a, b in pairs]


def offset(inner: Region | None, outer: Region) -> Region | None:
    """`inner` (z, y, x slices relative to the start of `outer`) in volume coordinates (None stays None)."""
    if inner is None:
        return None
    return tuple(slice(o.start + s.start, o.start + s.stop) for s, o in zip(inner, outer))


@dataclass
class _UndoEntry:
    prompts: PromptLog
    pending: bool
    mask_box: Region | None
    region: Region | None = None  # the mask region the interaction rewrote, and its content before
    before: np.ndarray | None = None


class InteractiveSession:
    """One image and one target object. Not thread-safe: the server serialises calls per session.

    `seconds_per_interaction` is the time budget of one prediction (zoom-outs stop when it runs short, as in
    the container's budget); `undo_depth` how many interactions can be undone (0: none)."""

    def __init__(self, predictor: Predictor, seconds_per_interaction: float = 4.0, do_autozoom: bool = True,
                 undo_depth: int = 1, intensity: str = "auto"):
        if intensity not in INTENSITY_MODES:
            raise SessionError(f"unknown intensity mode {intensity!r}")
        self.predictor = predictor
        self.seconds_per_interaction = float(seconds_per_interaction)
        self.do_autozoom = bool(do_autozoom)
        self.intensity = intensity
        self.undo_depth = int(undo_depth)
        self.image: np.ndarray | None = None
        self.spacing: tuple[float, float, float] | None = None
        self.mask: np.ndarray | None = None
        self._stats = None
        self._clear()

    # ------------------------------------------------------------------ state
    def _clear(self) -> None:
        self.prompts = PromptLog()
        self.pending = False
        self.mask_box: Region | None = None
        self._undo: deque[_UndoEntry] = deque(maxlen=max(self.undo_depth, 1))
        if self.mask is not None:
            self.mask[...] = 0

    @property
    def shape(self) -> tuple[int, int, int]:
        self._need_image()
        return tuple(self.image.shape)

    def _need_image(self) -> None:
        if self.image is None:
            raise SessionError("no image: call set_image first")

    def set_image(self, image: np.ndarray, spacing=None) -> None:
        """A new image (z, y, x), or (1, z, y, x) as the clients send it; spacing (z, y, x) in mm, optional.
        Clears the object, its prompts and the undo log."""
        image = np.asarray(image)
        if image.ndim == 4:
            if image.shape[0] != 1:
                raise SessionError(f"the model takes one image channel, got {image.shape[0]} (shape {image.shape})")
            image = image[0]
        if image.ndim != 3 or min(image.shape) < 1:
            raise SessionError(f"the image must be 3D (z, y, x) with every axis >= 1, got shape {image.shape}")
        if image.dtype.kind not in "biuf":
            raise SessionError(f"the image must be numeric, got {image.dtype}")
        if spacing is not None:
            spacing = tuple(float(s) for s in np.asarray(spacing, float).reshape(-1))
            if len(spacing) != 3 or not all(np.isfinite(s) and s > 0 for s in spacing):
                raise SessionError(f"spacing must be 3 positive numbers (z, y, x), got {spacing}")
        prepared = prepare_image(image.astype(np.uint8) if image.dtype == bool else image, self.intensity)
        self.image, self.spacing = prepared, spacing
        self._stats = image_stats(prepared)
        self.mask = np.zeros(prepared.shape, np.uint8)
        self._clear()

    def reset(self) -> None:
        """Forget the object: empty mask, no prompts, no undo."""
        self._need_image()
        self._clear()

    def clear_mask(self) -> None:
        """Empty the object's mask (a new target buffer); the prompts stay, the undo log is cleared."""
        self._need_image()
        self.mask[...] = 0
        self.mask_box = None
        self._undo.clear()

    # ------------------------------------------------------------------ interactions
    def add_point(self, coordinate, positive: bool = True, run_prediction: bool = True) -> Update:
        """A click at `coordinate` (z, y, x; floats are rounded), positive or negative."""
        self._need_image()
        try:
            values = [float(v) for v in coordinate]
        except (TypeError, ValueError):
            raise SessionError(f"a point must be 3 numbers (z, y, x), got {coordinate!r}") from None
        if len(values) != 3:
            raise SessionError(f"a point must be 3 numbers (z, y, x), got {coordinate!r}")
        p = tuple(_round_inside(v, n, f"point coordinate {i}") for i, (v, n) in enumerate(zip(values, self.shape)))

        def change(log: PromptLog) -> None:
            (log.fg if positive else log.bg).append(p)
        return self._interact(change, run_prediction, new_click=p)

    def add_box(self, bbox, positive: bool = True, run_prediction: bool = True) -> Update:
        """A box [[z0, z1], [y0, y1], [x0, x1]] (half-open; floats rounded, then clipped to the image): size 1 on
        one axis for a viewer's 2D box, a cuboid otherwise. The latest positive box is the box prompt; earlier
        positive boxes and negative boxes (untrained) become voxels of the box channels."""
        self._need_image()
        bounds = _int_bounds(bbox)
        clipped = [(min(max(a, 0), n), min(max(b, 0), n)) for (a, b), n in zip(bounds, self.shape)]
        for axis, (a, b) in enumerate(clipped):
            if b <= a:
                raise SessionError(f"box {bbox} has size zero on axis {axis} inside the image {self.shape}")
        lo = tuple(a for a, _ in clipped)
        hi = tuple(b - 1 for _, b in clipped)
        negative_voxels = None if positive else box_voxels(lo, hi)

        def change(log: PromptLog) -> None:
            if not positive:
                log.voxels["lasso_bg"].append(negative_voxels)
                return
            if log.box is not None:
                log.voxels["lasso_fg"].append(box_voxels(*log.box))
            log.box = (lo, hi)
        return self._interact(change, run_prediction)

    def add_lasso(self, mask: np.ndarray, positive: bool = True, run_prediction: bool = True, bbox=None) -> Update:
        """A filled contour (nonzero voxels of `mask`, usually on one slice): the full volume (z, y, x), or a crop
        whose half-open placement is `bbox` [[z0, z1], [y0, y1], [x0, x1]]. Negative lassos are untrained."""
        return self._add_voxels(mask, "lasso_fg" if positive else "lasso_bg", run_prediction, bbox)

    def add_scribble(self, mask: np.ndarray, positive: bool = True, run_prediction: bool = True, bbox=None) -> Update:
        """A stroke (nonzero voxels of `mask`), full volume (z, y, x) or a crop at `bbox`, as `add_lasso`.
        Negative scribbles are untrained."""
        return self._add_voxels(mask, "scribble_fg" if positive else "scribble_bg", run_prediction, bbox)

    def _add_voxels(self, mask, name: str, run_prediction: bool, bbox) -> Update:
        self._need_image()
        voxels = _mask_voxels(mask, self.shape, bbox)

        def change(log: PromptLog) -> None:
            log.voxels[name].append(voxels)
        return self._interact(change, run_prediction)

    def set_initial_segmentation(self, seg: np.ndarray, run_prediction: bool = False) -> Update:
        """Start from a segmentation (z, y, x; nonzero = object): it becomes the mask and the previous
        segmentation; every prompt is forgotten (the undo log stays). With run_prediction the model refines it."""
        self._need_image()
        seg = np.asarray(seg)
        if seg.shape != self.shape or seg.dtype.kind not in "biuf":
            raise SessionError(f"initial segmentation {seg.shape} {seg.dtype} does not match the image {self.shape}")
        entry = self._push(region=tuple(slice(0, n) for n in self.shape))
        try:
            self.prompts = PromptLog()
            self.pending = False
            np.not_equal(seg, 0, out=self.mask.view(bool))
            self.mask_box = bounding_box(self.mask)
            if not run_prediction:
                return Update(False, entry.region)
            return self._predict(entry)
        except Exception:
            self._restore(self._undo.pop())
            raise

    def predict(self) -> Update:
        """Predict from the prompts queued with run_prediction=False; Update(False) when none are queued."""
        self._need_image()
        if not self.pending:
            return Update(False)
        entry = self._push()
        try:
            return self._predict(entry)
        except Exception:
            self._restore(self._undo.pop())
            raise

    def undo(self) -> Update:
        """Revert the latest interaction (prompts and mask); the region is the tight box of the voxels that
        changed back (None when none did). Update(False) when there is nothing to undo."""
        self._need_image()
        if self.undo_depth <= 0 or not self._undo:
            return Update(False)
        entry = self._undo.pop()
        changed = None
        if entry.region is not None:
            diff = self.mask[entry.region] != entry.before
            changed = offset(bounding_box(diff), entry.region)
        self._restore(entry)
        return Update(True, changed)

    # ------------------------------------------------------------------ internals
    def _push(self, region: Region | None = None) -> _UndoEntry:
        entry = _UndoEntry(self.prompts.copy(), self.pending, self.mask_box)
        if region is not None:
            entry.region, entry.before = region, self.mask[region].copy()
        self._undo.append(entry)
        return entry

    def _restore(self, entry: _UndoEntry) -> None:
        self.prompts, self.pending, self.mask_box = entry.prompts, entry.pending, entry.mask_box
        if entry.region is not None:
            self.mask[entry.region] = entry.before

    def _interact(self, change, run_prediction: bool, new_click: tuple[int, int, int] | None = None) -> Update:
        """Apply `change` to a copy of the prompts, then predict (or queue); rolled back on any error.
        `new_click` (z, y, x): the point this change adds, which allows the container's click-local update
        when it is the only change since the last prediction."""
        entry = self._push()
        try:
            log = self.prompts.copy()
            change(log)
            self.prompts = log
            if not run_prediction:
                self.pending = True
                return Update(False)
            return self._predict(entry, None if entry.pending else new_click)
        except Exception:
            self._restore(self._undo.pop())
            raise

    def _predict(self, entry: _UndoEntry, new_click: tuple[int, int, int] | None = None) -> Update:
        """Run the container's per-object prediction and paste it; records the rewritten region in `entry`."""
        prev = self.mask if self.mask_box is not None else None
        query = ObjectQuery(self.image, self._stats, self.prompts.class_prompts(), prev,
                            1 if prev is not None else None, self.mask_box,
                            None if new_click is None else np.asarray(new_click))
        level = B.FULL if self.do_autozoom else B.NO_ZOOM
        budget = B.Budget(1, per_class_run_s=self.seconds_per_interaction)
        result = self.predictor.predict_object(query, level, budget)
        self.pending = False
        if result is None:
            return Update(False)
        window, probs = result
        region = window.inside()
        if any(s.stop <= s.start for s in region):
            return Update(True, None)
        if entry.region is None:
            entry.region, entry.before = region, self.mask[region].copy()
        for slab, values in window.paste(probs):
            self.mask[slab] = single_object_mask(values)
        box = union_slices(self.mask_box, region)
        self.mask_box = offset(bounding_box(self.mask[box]), box)
        return Update(True, region)
