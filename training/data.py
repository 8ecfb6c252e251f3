"""Training samples: a volume and one object in it, the inference window, augmentation, prompts, encoding.

One sample interface for every data source (`training.mixture`): a source hands over a `CaseData` (an image,
or none when the appearance is to be synthesised, and a label map) and the label of the object to learn.
`render_sample` then does what is common: it places the inference window on the object (`Window.around`
with the zoom rule, zoom jitter and a centre shift), resamples image and labels onto the patch (with a margin
of context when the sample is spatially augmented: affine + elastic via `training.augment`), paints the image
from the labels when asked (`training.synth`) or changes the real image's appearance, and derives every
prompt from the target on the patch grid, so image, labels and prompts stay aligned by construction: the
organizer's jittered box, the evaluator's first click (no box), or a viewer's 2D box, lasso or scribble
(`training.viewer_prompts`). The encoding is the inference code's (`inference.prompts.encode`).

Every sample is a pure function of (seed, global sample index), so runs and resumes are reproducible
whatever the number of worker processes. Arrays are (z, y, x) throughout; `spacing` is stored (x, y, z)
and not used (the network sees native voxels, as nnInteractive).

Volumes are read once per process: small ones are held decompressed in RAM, big ones are written once
as uncompressed .npy under `cache_dir` and memory-mapped (the page cache is then shared by every
worker and rank). Worker processes return numpy arrays, which travel through a pipe, not /dev/shm.
"""
from __future__ import annotations

import ctypes
import hashlib
import json
import os
import signal
import sys
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from scipy import ndimage

from evaluation.boxes import box_from_mask, jitter_shift
from evaluation.clicks import simulate_click
from inference.network import CHANNELS, NUM_INPUT_CHANNELS
from inference.prompts import ClassPrompts, ImageStats, draw_ball, encode, image_stats
from inference.window import Window, zoom_factor

from . import synth, viewer_prompts
from .augment import IntensityOptions, SpatialOptions, appearance_chain, apply_appearance, seeded, spatial
from .synth import SynthOptions

Triple = tuple[int, int, int]
EMPTY_POINTS = np.zeros((0, 3), dtype=np.int64)


# ---------------------------------------------------------------------- the case list
def list_cases(root: str | os.PathLike) -> list[Path]:
    """Every *.npz under `root` (recursive, hidden names skipped), sorted by relative path."""
    root = Path(root)
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise FileNotFoundError(f"training data folder not found: {root}")
    paths = [p for p in root.rglob("*.npz")
             if not any(part.startswith(".") for part in p.relative_to(root).parts)]
    return sorted(paths, key=lambda p: p.relative_to(root).as_posix())


def modality_of(path: str | os.PathLike, root: str | os.PathLike | None = None) -> str:
    """The modality: the first folder of <Modality>/<Dataset>/<case>.npz, else the file-name prefix before '_'."""
    path = Path(path)
    if root is not None:
        try:
            parts = path.relative_to(root).parts
        except ValueError:
            parts = ()
        if len(parts) >= 3:
            return parts[0]
    return path.stem.split("_", 1)[0]


def select_coreset(paths: Sequence[Path], fraction: float, seed: int,
                   root: str | os.PathLike | None = None) -> list[Path]:
    """A reproducible `fraction` of the cases, the same fraction of every modality (at least one each)."""
    if fraction >= 1.0:
        return list(paths)
    by_mod: dict[str, list[Path]] = {}
    for p in paths:
        by_mod.setdefault(modality_of(p, root), []).append(p)
    rng = np.random.default_rng([seed, 0xC0FE])
    chosen: list[Path] = []
    for mod in sorted(by_mod):
        group = by_mod[mod]
        k = max(1, int(round(fraction * len(group))))
        idx = rng.permutation(len(group))[:k]
        chosen += [group[i] for i in sorted(idx)]
    return sorted(chosen, key=lambda p: str(p))


def write_case_list(paths: Sequence[Path], dest: str | os.PathLike, root: str | os.PathLike | None = None) -> None:
    """Write one relative path per line (the coreset list)."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    lines = [(p.relative_to(root).as_posix() if root is not None else str(p)) for p in paths]
    tmp = dest.with_name(f".{dest.name}.tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(dest)


# ---------------------------------------------------------------------- one case in memory
@dataclass
class CaseData:
    """A volume ready for sampling: image and labels (z, y, x), class ids, their boxes and the z-score stats."""

    name: str
    image: np.ndarray | None                 # None: a label map whose image is synthesised
    gts: np.ndarray
    labels: np.ndarray                       # class ids present, sorted
    objects: list[tuple[slice, slice, slice]]  # bounding box per entry of `labels`
    stats: ImageStats | None

    @property
    def shape(self) -> Triple:
        return tuple(int(v) for v in self.gts.shape)  # type: ignore[return-value]

    def box_of(self, label: int) -> tuple[slice, slice, slice]:
        """The bounding box (volume slices, z, y, x) of a label present in the case."""
        return self.objects[int(np.searchsorted(self.labels, label))]


def _cache_key(path: Path) -> str:
    st = path.stat()
    text = f"{path.resolve()}|{st.st_size}|{int(st.st_mtime)}"
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def _atomic_save_npy(arr: np.ndarray, dest: Path) -> None:
    tmp = dest.with_name(f".{dest.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as fh:
        np.save(fh, np.ascontiguousarray(arr))
    os.replace(tmp, dest)


def _npz_array_bytes(path: Path) -> int:
    """Uncompressed bytes of the imgs and gts members (from the npy headers, without decompressing)."""
    import zipfile

    total = 0
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            if info.filename in ("imgs.npy", "gts.npy"):
                total += info.file_size
    return total


def load_arrays(path: Path, cache_dir: Path | None, mmap_min_bytes: float) -> tuple[np.ndarray | None, np.ndarray]:
    """(imgs, gts) of a training npz, imgs None for a label map alone (no `imgs` member); big volumes come
    memory-mapped from an .npy cache written once."""
    use_mmap = cache_dir is not None and _npz_array_bytes(path) > mmap_min_bytes
    if use_mmap:
        folder = Path(cache_dir) / f"{path.stem}-{_cache_key(path)}"
        img_p, gts_p = folder / "imgs.npy", folder / "gts.npy"
        if not gts_p.is_file():
            folder.mkdir(parents=True, exist_ok=True)
            with np.load(path, allow_pickle=False) as z:
                if "imgs" in z.files:
                    _atomic_save_npy(z["imgs"], img_p)
                _atomic_save_npy(z["gts"], gts_p)
        image = np.load(img_p, mmap_mode="r") if img_p.is_file() else None
        return image, np.load(gts_p, mmap_mode="r")
    with np.load(path, allow_pickle=False) as z:
        image = np.ascontiguousarray(z["imgs"]) if "imgs" in z.files else None
        return image, np.ascontiguousarray(z["gts"])


def prepare_case(path: Path | str, image: np.ndarray | None, gts: np.ndarray) -> CaseData:
    """Class ids, their bounding boxes (one pass) and the image statistics of a loaded volume."""
    name = Path(path).name
    if gts.ndim != 3 or (image is not None and image.shape != gts.shape):
        raise ValueError(f"{name}: imgs {None if image is None else image.shape} and gts {gts.shape} must be "
                         "the same 3D shape")
    if gts.dtype.kind not in "iu":
        gts = np.asarray(gts).astype(np.int64)
    objects = ndimage.find_objects(gts)
    labels = np.array([i + 1 for i, o in enumerate(objects) if o is not None], dtype=np.int64)
    stats = image_stats(image) if image is not None else None
    return CaseData(Path(path).stem, image, gts, labels, [objects[i - 1] for i in labels], stats)


class CaseStore:
    """Lazily loaded cases with a RAM budget (least recently used evicted); memory-maps stay open cheaply."""

    def __init__(self, paths: Sequence[Path], cache_dir: str | os.PathLike | None = None,
                 mmap_min_mb: float = 256.0, ram_budget_mb: float = 8192.0):
        self.paths = [Path(p) for p in paths]
        if not self.paths:
            raise ValueError("no training cases (*.npz) found")
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.mmap_min_bytes = float(mmap_min_mb) * 2**20
        self.ram_budget = float(ram_budget_mb) * 2**20
        self._cases: OrderedDict[int, CaseData] = OrderedDict()
        self._ram = 0
        self._first_clicks: dict[tuple[int, int], Triple] = {}
        self._weights: np.ndarray | None = None
        self._difficulty: tuple[dict[str, dict[int, float]], float, float] | None = None
        self._label_probs: dict[int, np.ndarray | None] = {}
        self._size_power = 0.0

    def __len__(self) -> int:
        return len(self.paths)

    def __getstate__(self) -> dict:
        """Pickled for worker processes without the loaded arrays (each worker loads its own)."""
        state = self.__dict__.copy()
        state["_cases"], state["_ram"] = OrderedDict(), 0
        return state

    def get(self, i: int) -> CaseData:
        """Case i, loaded on first use."""
        case = self._cases.get(i)
        if case is not None:
            self._cases.move_to_end(i)
            return case
        image, gts = load_arrays(self.paths[i], self.cache_dir, self.mmap_min_bytes)
        case = prepare_case(self.paths[i], image, gts)
        self._cases[i] = case
        self._ram += _ram_bytes(case)
        while self._ram > self.ram_budget and len(self._cases) > 1:
            _, old = self._cases.popitem(last=False)
            self._ram -= _ram_bytes(old)
        return case

    def label_count(self, i: int) -> int:
        """Number of labels of case i, from its `<stem>.json` sidecar when there is one, else by loading it."""
        side = self.paths[i].with_suffix(".json")
        try:
            return max(1, len(json.loads(side.read_text(encoding="utf-8"))["labels"]))
        except (OSError, ValueError, KeyError, TypeError):
            return max(1, len(self.get(i).labels))

    def case_weights(self, power: float = 0.5, cap: float = 10.0) -> np.ndarray:
        """Sampling probability per case, proportional to min(labels^power, cap): a case with many
        structures is drawn more often than one with a single mask, but not in proportion."""
        if self._weights is None:
            w = np.array([min(self.label_count(i) ** power, cap) for i in range(len(self))], float)
            self._weights = w / w.sum()
        return self._weights

    def set_difficulty(self, dice: dict[str, dict[int, float]], power: float = 1.0, floor: float = 0.1) -> None:
        """Draw the labels of the cases `dice` scores ({case file stem: {label: Dice}}, `training.difficulty`) by
        `training.difficulty.label_weights`; other cases keep drawing their labels uniformly."""
        self._difficulty = (dice, float(power), float(floor))
        self._label_probs = {}

    def set_size_power(self, power: float) -> None:
        """Draw labels with weight (voxels) ^ power (0: uniformly), times the difficulty weights when those are
        set: a power of 0.5 draws a 40,000-voxel organ 16 times as often as a 150-voxel rib of the same case."""
        if power < 0:
            raise ValueError(f"the label size power must be >= 0, not {power}")
        self._size_power = float(power)
        self._label_probs = {}

    def label_probs(self, i: int, case: CaseData) -> np.ndarray | None:
        """Probabilities of case i's labels (in `case.labels` order), None for uniform."""
        probs = None
        if self._difficulty is not None:
            from .difficulty import label_weights

            dice, power, floor = self._difficulty
            scores = dice.get(self.paths[i].stem)
            probs = None if scores is None else label_weights(scores, case.labels, power, floor)
        if self._size_power > 0:
            counts = np.bincount(np.asarray(case.gts).ravel(), minlength=int(case.labels.max()) + 1)
            w = np.maximum(counts[case.labels].astype(float), 1.0) ** self._size_power
            w = w if probs is None else w * probs
            probs = w / w.sum()
        return probs

    def draw_label(self, i: int, case: CaseData, rng: np.random.Generator) -> int:
        """A label of case i: uniformly, or by the difficulty (`set_difficulty`) and size (`set_size_power`)
        weights."""
        if i not in self._label_probs and (self._difficulty is not None or self._size_power > 0):
            self._label_probs[i] = self.label_probs(i, case)
        probs = self._label_probs.get(i)
        if probs is None:
            return int(case.labels[rng.integers(len(case.labels))])
        return int(case.labels[rng.choice(len(case.labels), p=probs)])

    def first_click(self, i: int, label: int) -> Triple:
        """The evaluator's first click of a no-box case for this class, (z, y, x), cached."""
        key = (i, int(label))
        if key not in self._first_clicks:
            self._first_clicks[key] = first_click(self.get(i), int(label))
        return self._first_clicks[key]


def _ram_bytes(case: CaseData) -> int:
    """Bytes a loaded case holds in RAM (memory-mapped arrays count nothing)."""
    return sum(a.nbytes for a in (case.image, case.gts) if a is not None and not isinstance(a, np.memmap))


def first_click(case: CaseData, label: int) -> Triple:
    """The evaluator's first click of a no-box case for this class (deepest voxel of its largest component),
    (z, y, x); computed on the class's bounding box, which gives the same voxel."""
    box = case.box_of(label)
    gt = np.asarray(case.gts[box]) == label
    click = simulate_click(np.zeros_like(gt), gt)
    assert click is not None and click[1] == "fg"
    (z, y, x), _ = click
    return (z + box[0].start, y + box[1].start, x + box[2].start)


# ---------------------------------------------------------------------- prompts
def organizer_box(case: CaseData, label: int, seed: int) -> tuple[Triple, Triple]:
    """The organizer's jittered box of one class as an inclusive 3D cuboid (lo, hi), (z, y, x).

    Uses evaluation.boxes on the class's bounding box with the full image's (H, W), with one jitter
    draw from RandomState(seed) (the per-sample seed).
    """
    box = case.box_of(label)
    mask = np.asarray(case.gts[box]) == label
    start = (box[0].start, box[1].start, box[2].start)
    d = box_from_mask(mask, jitter_shift(np.random.RandomState(seed)), start, case.shape[1:])
    lo = (int(d["z_min"]), int(d["z_mid_y_min"]), int(d["z_mid_x_min"]))
    hi = (int(d["z_max"]), int(d["z_mid_y_max"]), int(d["z_mid_x_max"]))
    return lo, hi


# ---------------------------------------------------------------------- one sample
PROMPT_KINDS = ("box", "nobox", "box2d", "lasso", "scribble", "refine")


@dataclass(frozen=True)
class SampleOptions:
    """What a sample draws; a subset of TrainConfig (kept small so workers pickle it cheaply)."""

    patch: Triple
    p_no_box: float = 0.3
    zoom_aug_max: float = 1.25
    nobox_zoom_max: float = 3.0
    shift_frac: float = 0.08
    flip: bool = False
    intensity_scale: float = 0.1
    intensity_shift: float = 0.1
    p_viewer: float = 0.0          # share of samples whose first prompt is a viewer's 2D box, lasso or scribble
    p_refine: float = 0.0          # share of native-resolution tiles on a large object's surface with a coarse mask
    viewer_weights: tuple[float, float, float] = (0.4, 0.3, 0.3)
    p_spatial: float = 0.0         # share of samples deformed by a random affine + elastic transform
    context: float = 1.25          # context margin (x the patch) resampled around a deformed sample
    p_appearance: float = 0.0      # share of real images whose appearance is changed (gamma, bias, ...)
    p_loose_box: float = 0.0       # share of organizer boxes loosened (sides moved out by U(0, loose_box) x extent)
    loose_box: float = 0.25
    anisotropy: float = 1.0        # windows' axes may zoom differently up to this ratio (inference.window.zoom_factors)
    spatial: SpatialOptions = SpatialOptions()
    appearance: IntensityOptions = IntensityOptions()
    synth: SynthOptions = SynthOptions()

    @classmethod
    def from_config(cls, cfg: Any, patch: Sequence[int]) -> "SampleOptions":
        return cls(tuple(int(v) for v in patch), cfg.p_no_box, cfg.zoom_aug_max, cfg.nobox_zoom_max,
                   cfg.shift_frac, cfg.flip, cfg.intensity_scale, cfg.intensity_shift, cfg.p_viewer,
                   p_refine=cfg.p_refine, p_spatial=cfg.p_spatial, p_appearance=cfg.p_appearance,
                   p_loose_box=cfg.p_loose_box, loose_box=cfg.loose_box,
                   anisotropy=cfg.window_anisotropy)


def sample_window(lo, hi, patch: Triple, shape: Triple, zoom_extra: float, shift: np.ndarray,
                  anisotropy: float = 1.0) -> Window:
    """Window.around the extent [lo, hi] (z, y, x) with zoom_extra, its centre moved by `shift` x its size."""
    w = Window.around(lo, hi, patch, shape, zoom_extra=zoom_extra, anisotropy=anisotropy)
    d = np.round(np.asarray(shift, float) * np.asarray(w.size, float))
    return Window.around(np.asarray(lo, float) + d, np.asarray(hi, float) + d, patch, shape, zoom_extra=zoom_extra,
                         anisotropy=anisotropy)


def draw_prompt_kind(rng: np.random.Generator, opts: SampleOptions) -> str:
    """The first prompt of a sample: 'nobox' (p_no_box), a viewer prompt (p_viewer) or the organizer's 'box'."""
    u = rng.random()
    if u < opts.p_no_box:
        return "nobox"
    if u < opts.p_no_box + opts.p_viewer:
        w = np.asarray(opts.viewer_weights, float)
        return ("box2d", "lasso", "scribble")[int(rng.choice(3, p=w / w.sum()))]
    if u < opts.p_no_box + opts.p_viewer + opts.p_refine:
        return "refine"
    return "box"


REFINE_MIN_ZOOM = 1.5  # objects whose window is zoomed at least this much get native-resolution refinement


def object_zoom(case: CaseData, label: int, patch: Triple) -> float:
    """The zoom of the object's own window by the inference zoom rule (its bounding box on `patch`)."""
    return zoom_factor(np.array([s.stop - s.start for s in case.box_of(label)]), np.asarray(patch))


def surface_voxel(case: CaseData, label: int, rng: np.random.Generator) -> Triple:
    """A random voxel (z, y, x) on the object's surface."""
    box = case.box_of(label)
    mask = np.asarray(case.gts[box]) == label
    surface = np.argwhere(mask & ~ndimage.binary_erosion(mask))
    p = surface[rng.integers(len(surface))] + [s.start for s in box]
    return tuple(int(v) for v in p)  # type: ignore[return-value]


def coarse_mask(target: np.ndarray, rng: np.random.Generator, zoom: float) -> np.ndarray:
    """What a prediction at `zoom` x coarser resolution looks like on the patch (z, y, x): the target blurred by
    a Gaussian of about zoom / 2 voxels and thresholded near 0.5 (rounded corners, lost thin parts)."""
    sigma = float(rng.uniform(0.5, 1.5)) * zoom / 2
    return ndimage.gaussian_filter(target.astype(np.float32), sigma) > float(rng.uniform(0.4, 0.6))


def patch_organizer_box(target: np.ndarray, scale: np.ndarray, shape: Triple, seed: int) -> tuple[Triple, Triple]:
    """The organizer's jittered box of a target on the patch grid, (lo, hi) inclusive (z, y, x); the jitter
    of randint(0, 6) x image size / 256 volume voxels is scaled to patch voxels."""
    hw = (shape[1] / scale[1], shape[2] / scale[2])
    d = box_from_mask(target, jitter_shift(np.random.RandomState(seed)), (0, 0, 0), hw)
    return ((int(d["z_min"]), int(d["z_mid_y_min"]), int(d["z_mid_x_min"])),
            (int(d["z_max"]), int(d["z_mid_y_max"]), int(d["z_mid_x_max"])))


def loosen_box(lo: Triple, hi: Triple, shape: Triple, most: float, rng: np.random.Generator) -> tuple[Triple, Triple]:
    """The inclusive box (lo, hi), (z, y, x), with each side moved outward by U(0, most) x the box's extent on
    that axis (rounded), clipped to a volume of `shape`; it always contains the original box."""
    lo_a, hi_a = np.asarray(lo, float), np.asarray(hi, float)
    extent = hi_a - lo_a + 1
    new_lo = np.maximum(lo_a - np.round(rng.uniform(0, most, 3) * extent), 0)
    new_hi = np.minimum(hi_a + np.round(rng.uniform(0, most, 3) * extent), np.asarray(shape) - 1)
    return tuple(int(v) for v in new_lo), tuple(int(v) for v in new_hi)  # type: ignore[return-value]


def patch_first_click(target: np.ndarray, point: np.ndarray | None) -> Triple:
    """The no-box click on the patch: where the carried first click landed (the maximum of its point map)
    when that is inside the target, else the evaluator's first click on the visible target."""
    if point is not None and point.max() > 0.05:
        c = np.unravel_index(int(np.argmax(point)), point.shape)
        if target[c]:
            return tuple(int(v) for v in c)  # type: ignore[return-value]
    click = simulate_click(np.zeros_like(target), target)
    assert click is not None
    return click[0]


def patch_prompts(kind: str, target: np.ndarray, scale: np.ndarray, shape: Triple, point: np.ndarray | None,
                  rng: np.random.Generator, p_loose: float = 0.0, loose: float = 0.0) -> tuple[ClassPrompts, np.ndarray]:
    """The first prompt of `kind` derived from the patch target; also click0 (the no-box click, else NaN).
    An organizer box is loosened (`loosen_box`, up to `loose` of the extent per side) with probability `p_loose`."""
    click0 = np.full(3, np.nan)
    if kind == "box":
        box = patch_organizer_box(target, scale, shape, int(rng.integers(2**31)))
        if p_loose > 0 and rng.random() < p_loose:
            box = loosen_box(*box, target.shape, loose, rng)
        return ClassPrompts(box, EMPTY_POINTS, EMPTY_POINTS), click0
    if kind == "nobox":
        c = patch_first_click(target, point)
        return ClassPrompts(None, np.asarray([c], dtype=np.int64), EMPTY_POINTS), np.asarray(c, float)
    if kind == "box2d":
        return ClassPrompts(viewer_prompts.box2d(target, rng), EMPTY_POINTS, EMPTY_POINTS), click0
    if kind == "lasso":
        return ClassPrompts(None, EMPTY_POINTS, EMPTY_POINTS, lasso_fg=viewer_prompts.lasso(target, rng)), click0
    if kind == "scribble":
        return ClassPrompts(None, EMPTY_POINTS, EMPTY_POINTS, scribble_fg=viewer_prompts.scribble(target, rng)), click0
    raise ValueError(f"unknown prompt kind {kind!r}")


def point_map(window: Window, point) -> np.ndarray:
    """A click ball at a volume point (z, y, x) drawn on the window's patch (so it can be deformed along)."""
    m = torch.zeros(window.patch, dtype=torch.float32)
    draw_ball(m, window.to_patch(np.asarray([point], float))[0])
    return m.numpy()


def render_sample(case: CaseData, label: int, paint: bool, opts: SampleOptions,
                  rng: np.random.Generator, click: Triple | None = None) -> dict[str, np.ndarray] | None:
    """One training sample of object `label` of `case` (see the module docstring); None when the object
    vanished from the patch (tiny objects under resampling or deformation: the caller draws again).

    `paint`: synthesise the image from the label map (always when the case has no image). `click` is the
    evaluator's first click (z, y, x) of the object, needed for no-box samples (computed when None).
    """
    paint = paint or case.image is None
    kind = draw_prompt_kind(rng, opts)
    zoom = object_zoom(case, label, opts.patch) if kind == "refine" else 1.0
    if kind == "refine" and zoom < REFINE_MIN_ZOOM:
        kind = "box"  # a small object: inference does not refine it
    centre = surface_voxel(case, label, rng) if kind == "refine" else None
    shift = rng.uniform(-opts.shift_frac, opts.shift_frac, 3) if opts.shift_frac > 0 else np.zeros(3)
    if kind == "nobox":
        click = click if click is not None else first_click(case, label)
        lo = hi = click
        zoom_extra = float(rng.uniform(1.0, opts.nobox_zoom_max))
    elif kind == "refine":
        lo = hi = centre
        zoom_extra = float(rng.uniform(1.0, 1.3))  # native or near-native resolution
    else:
        box = case.box_of(label)
        lo, hi = tuple(s.start for s in box), tuple(s.stop - 1 for s in box)
        zoom_extra = float(rng.uniform(1.0, opts.zoom_aug_max))
    window = sample_window(lo, hi, opts.patch, case.shape, zoom_extra, shift, opts.anisotropy)
    deform = bool(rng.random() < opts.p_spatial) and kind != "refine"  # refinement tiles keep the volume's frame
    frame = window.grown(np.round(np.asarray(opts.patch) * opts.context).astype(int)) if deform else window
    labels = frame.crop_nearest(case.gts)
    image = None if paint else frame.crop(case.image, fill=case.stats.mean).numpy()
    point = point_map(frame, click) if kind == "nobox" else None
    change_look = bool(rng.random() < opts.p_appearance)
    with seeded(int(rng.integers(2**31))):
        if deform:
            image, labels, point = spatial(image, labels, point, opts.patch, opts.spatial)
        target = labels == label
        if not target.any():
            return None
        if paint:
            image = synth.paint(labels, label, opts.synth)
            stats = ImageStats(float(image.mean()), max(float(image.std()), 1e-6))
        else:
            image = apply_appearance(image, appearance_chain(opts.appearance)) if change_look else image
            stats = case.stats
    prev = None
    has_box = kind != "nobox"
    if kind == "refine":  # the organizer's box (half of the time) as it crosses this tile, and a coarse mask
        box_lo, box_hi = organizer_box(case, label, int(rng.integers(2**31)))
        has_box = bool(rng.random() < 0.5) and window.overlaps(box_lo, box_hi)
        a, b = window.box_to_patch(box_lo, box_hi)
        prompts = ClassPrompts((tuple(a), tuple(b - 1)) if has_box else None, EMPTY_POINTS, EMPTY_POINTS)
        prev = coarse_mask(target, rng, zoom)
        click0 = np.full(3, np.nan)
    else:
        prompts, click0 = patch_prompts(kind, target, window.scale, case.shape, point, rng,
                                        opts.p_loose_box, opts.loose_box)
    x = encode(Window.identity(opts.patch), image, stats, prompts, prev)
    target_t = torch.from_numpy(target)
    # light augmentation: intensity scale/shift of the image channel, optional flips
    img = x[CHANNELS["image"]]
    if opts.intensity_scale > 0:
        img.mul_(1.0 + float(rng.uniform(-opts.intensity_scale, opts.intensity_scale)))
    if opts.intensity_shift > 0:
        img.add_(float(rng.uniform(-opts.intensity_shift, opts.intensity_shift)))
    if opts.flip:
        axes = [a for a in range(3) if rng.random() < 0.5]
        if axes:
            x = torch.flip(x, [a + 1 for a in axes])
            target_t = torch.flip(target_t, axes)
            for a in axes:
                click0[a] = opts.patch[a] - 1 - click0[a]
    return {
        "input": x.numpy(),
        "target": target_t.numpy(),
        "has_box": np.bool_(has_box),
        "click0": click0.astype(np.float32),
        "kind": np.int64(PROMPT_KINDS.index(kind)),
        "label": np.int64(label),
    }


def make_sample(sources: Any, opts: SampleOptions, seed: int, index: int, attempts: int = 8) -> dict[str, np.ndarray]:
    """Sample `index` of the stream `seed`: a source drawn from the mixture (a `training.mixture.Sources`, or
    a bare CaseStore = real images only), then `render_sample`; redrawn when the object vanished.
    Adds `source` (the index of the source in `training.mixture.SOURCE_NAMES`)."""
    from .mixture import as_sources

    sources = as_sources(sources)
    for attempt in range(attempts):
        rng = np.random.default_rng([int(seed), int(index), attempt])
        drawn = sources.draw(rng)
        sample = render_sample(drawn.case, drawn.label, drawn.paint, opts, rng, drawn.click)
        if sample is not None:
            sample["source"] = np.int64(drawn.source)
            return sample
    raise RuntimeError(f"sample {index} of stream {seed}: the object vanished from the patch {attempts} times "
                       f"(last: {drawn.case.name} label {drawn.label})")


class PromptDataset(torch.utils.data.Dataset):
    """Map-style dataset over an unbounded stream of sample indices (see `StreamSampler`)."""

    def __init__(self, sources: Any, opts: SampleOptions, seed: int):
        from .mixture import as_sources

        self.sources, self.opts, self.seed = as_sources(sources), opts, int(seed)

    def __len__(self) -> int:
        return 2**62

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        return make_sample(self.sources, self.opts, self.seed, int(index))


class StreamSampler(torch.utils.data.Sampler):
    """The distributed sampler: forward pass p of rank r gets global sample indices
    (p * world + r) * batch + j, j < batch, from pass `start` on (resume = start at step * accum)."""

    def __init__(self, batch_size: int, rank: int = 0, world: int = 1, start: int = 0):
        self.batch_size, self.rank, self.world, self.start = batch_size, rank, world, start

    def __iter__(self) -> Iterator[int]:
        p = self.start
        while True:
            base = (p * self.world + self.rank) * self.batch_size
            yield from range(base, base + self.batch_size)
            p += 1

    def __len__(self) -> int:
        return 2**62


def collate(samples: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Stack samples into numpy batches (numpy crosses the worker pipe without shared memory)."""
    return {k: np.stack([s[k] for s in samples]) for k in samples[0]}


def to_torch(batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in batch.items()}


def collate_torch(samples: list[dict[str, np.ndarray]]) -> dict[str, torch.Tensor]:
    """`collate` as torch tensors, made in the worker: they cross to the training process in shared memory."""
    return to_torch(collate(samples))


def shm_free_bytes(path: str = "/dev/shm") -> int:
    """Free bytes of the shared-memory file system (0 where there is none)."""
    try:
        st = os.statvfs(path)
    except OSError:
        return 0
    return st.f_bavail * st.f_frsize


def loader_uses_shm(batch_bytes: int, num_workers: int, prefetch: int, free_bytes: int | None = None) -> bool:
    """Whether batches may travel in shared memory: /dev/shm must hold twice what the workers keep in flight
    (containers often give it 64 MB, where torch's shared tensors fail with a bus error; then numpy goes
    through the pipes). Through a pipe the training process unpickles every byte of every batch, one process
    for all workers: a batch of 24 samples at 64^3 is 225 MB."""
    free = shm_free_bytes() if free_bytes is None else free_bytes
    return num_workers > 0 and free >= 2 * batch_bytes * num_workers * prefetch


def die_with_parent(_worker_id: int = 0) -> None:
    """Have the kernel end this worker when the training process dies (Linux): torch's own parent check runs
    only between samples, so a worker busy in a long (or hung) sample outlived a killed run."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # 1 = PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass


def make_loader(dataset: PromptDataset, sampler: StreamSampler, batch_size: int, num_workers: int,
                pin_memory: bool = False, shared: bool | None = None) -> Iterator[dict[str, torch.Tensor]]:
    """Batches as torch tensors. With workers, `shared` (None: `loader_uses_shm` decides) sends them as torch
    tensors in shared memory, pinned by the loader's own thread; else as numpy through the pipes. The batches
    are the same either way, and the same as without workers."""
    if num_workers <= 0:
        it = iter(sampler)

        def gen() -> Iterator[dict[str, torch.Tensor]]:
            while True:
                idx = [next(it) for _ in range(batch_size)]
                yield to_torch(collate([dataset[i] for i in idx]))
        return gen()
    prefetch = 4
    if shared is None:
        voxels = int(np.prod(dataset.opts.patch))
        shared = loader_uses_shm(batch_size * voxels * (4 * NUM_INPUT_CHANNELS + 1), num_workers, prefetch)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
        collate_fn=collate_torch if shared else collate, pin_memory=pin_memory and shared,
        persistent_workers=True, prefetch_factor=prefetch, worker_init_fn=die_with_parent,
        multiprocessing_context="fork" if hasattr(os, "fork") else None)
    if shared:  # already torch tensors, pinned by the loader
        return iter(loader)

    def gen_workers() -> Iterator[dict[str, torch.Tensor]]:
        for b in loader:
            t = to_torch(b)
            if pin_memory:
                t = {k: v.pin_memory() for k, v in t.items()}
            yield t
    return gen_workers()


# ---------------------------------------------------------------------- synthetic cases (tests, bench)
def synthetic_case(shape: Triple = (40, 64, 64), n_classes: int = 3, seed: int = 0) -> dict[str, np.ndarray]:
    """A challenge-format training case with ellipsoid objects of distinct intensity, (z, y, x), uint8."""
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij")
    img = rng.normal(60, 12, shape).astype(np.float32)
    gts = np.zeros(shape, np.uint8)
    for c in range(1, n_classes + 1):
        r = rng.uniform(0.12, 0.25, 3) * np.asarray(shape)
        ctr = rng.uniform(r + 1, np.asarray(shape) - r - 1)
        inside = ((zz - ctr[0]) / r[0]) ** 2 + ((yy - ctr[1]) / r[1]) ** 2 + ((xx - ctr[2]) / r[2]) ** 2 <= 1
        gts[inside] = c
        img[inside] = rng.normal(100 + 40 * c, 10, int(inside.sum()))
    return {"imgs": np.clip(img, 0, 255).astype(np.uint8), "gts": gts,
            "spacing": np.array([1.0, 1.0, 1.0])}


def write_synthetic_cases(folder: str | os.PathLike, n: int = 3, shape: Triple = (40, 64, 64),
                          n_classes: int = 3, seed: int = 0, modalities: Sequence[str] = ("CT", "MR")) -> list[Path]:
    """Write n synthetic training npz files <Modality>_synth<i>.npz into `folder`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        p = folder / f"{modalities[i % len(modalities)]}_synth{i:03d}.npz"
        np.savez_compressed(p, **synthetic_case(shape, n_classes, seed + i))
        out.append(p)
    return out


def measure_loading(dataset: PromptDataset, n: int = 20) -> float:
    """Samples per second of the sampling pipeline alone (one process)."""
    dataset[0]
    t0 = time.perf_counter()
    for i in range(1, n + 1):
        dataset[i]
    return n / (time.perf_counter() - t0)
