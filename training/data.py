"""Training samples: a case, one class, its organizer box (or none), the inference window, the encoded prompts.

Every sample is a pure function of (seed, global sample index), so runs and resumes are reproducible
whatever the number of worker processes. Arrays are (z, y, x) throughout; `spacing` is stored (x, y, z)
and not used (the network sees native voxels, as nnInteractive).

Volumes are read once per process: small ones are held decompressed in RAM, big ones are written once
as uncompressed .npy under `cache_dir` and memory-mapped (the page cache is then shared by every
worker and rank). Worker processes return numpy arrays, which travel through a pipe, not /dev/shm.
"""
from __future__ import annotations

import hashlib
import os
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
from inference.network import CHANNELS
from inference.prompts import ClassPrompts, ImageStats, encode, image_stats
from inference.window import Window

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
    image: np.ndarray
    gts: np.ndarray
    labels: np.ndarray                       # class ids present, sorted
    objects: list[tuple[slice, slice, slice]]  # bounding box per entry of `labels`
    stats: ImageStats

    @property
    def shape(self) -> Triple:
        return tuple(int(v) for v in self.image.shape)  # type: ignore[return-value]


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


def load_arrays(path: Path, cache_dir: Path | None, mmap_min_bytes: float) -> tuple[np.ndarray, np.ndarray]:
    """(imgs, gts) of a training npz; big volumes come memory-mapped from an .npy cache written once."""
    use_mmap = cache_dir is not None and _npz_array_bytes(path) > mmap_min_bytes
    if use_mmap:
        folder = Path(cache_dir) / f"{path.stem}-{_cache_key(path)}"
        img_p, gts_p = folder / "imgs.npy", folder / "gts.npy"
        if not (img_p.is_file() and gts_p.is_file()):
            folder.mkdir(parents=True, exist_ok=True)
            with np.load(path, allow_pickle=False) as z:
                _atomic_save_npy(z["imgs"], img_p)
                _atomic_save_npy(z["gts"], gts_p)
        return np.load(img_p, mmap_mode="r"), np.load(gts_p, mmap_mode="r")
    with np.load(path, allow_pickle=False) as z:
        return np.ascontiguousarray(z["imgs"]), np.ascontiguousarray(z["gts"])


def prepare_case(path: Path, image: np.ndarray, gts: np.ndarray) -> CaseData:
    """Class ids, their bounding boxes (one pass) and the image statistics of a loaded volume."""
    if image.shape != gts.shape or image.ndim != 3:
        raise ValueError(f"{path.name}: imgs {image.shape} and gts {gts.shape} must be the same 3D shape")
    lab = np.asarray(gts)
    if lab.dtype.kind not in "iu":
        lab = lab.astype(np.int64)
    objects = ndimage.find_objects(lab)
    labels = np.array([i + 1 for i, o in enumerate(objects) if o is not None], dtype=np.int64)
    return CaseData(path.stem, image, gts, labels, [objects[i - 1] for i in labels], image_stats(image))


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
        size = 0 if isinstance(image, np.memmap) else image.nbytes + gts.nbytes
        self._cases[i] = case
        self._ram += size
        while self._ram > self.ram_budget and len(self._cases) > 1:
            _, old = self._cases.popitem(last=False)
            if not isinstance(old.image, np.memmap):
                self._ram -= old.image.nbytes + old.gts.nbytes
        return case

    def first_click(self, i: int, label: int) -> Triple:
        """The evaluator's first click of a no-box case for this class (deepest voxel of its largest
        component), (z, y, x); computed on the class's bounding box, which gives the same voxel."""
        key = (i, int(label))
        if key not in self._first_clicks:
            case = self.get(i)
            box = case.objects[int(np.searchsorted(case.labels, label))]
            gt = np.asarray(case.gts[box]) == label
            click = simulate_click(np.zeros_like(gt), gt)
            assert click is not None and click[1] == "fg"
            (z, y, x), _ = click
            self._first_clicks[key] = (z + box[0].start, y + box[1].start, x + box[2].start)
        return self._first_clicks[key]


# ---------------------------------------------------------------------- prompts
def organizer_box(case: CaseData, label: int, seed: int) -> tuple[Triple, Triple]:
    """The organizer's jittered box of one class as an inclusive 3D cuboid (lo, hi), (z, y, x).

    Uses evaluation.boxes on the class's bounding box with the full image's (H, W), with one jitter
    draw from RandomState(seed) (the per-sample seed).
    """
    box = case.objects[int(np.searchsorted(case.labels, label))]
    mask = np.asarray(case.gts[box]) == label
    start = (box[0].start, box[1].start, box[2].start)
    d = box_from_mask(mask, jitter_shift(np.random.RandomState(seed)), start, case.shape[1:])
    lo = (int(d["z_min"]), int(d["z_mid_y_min"]), int(d["z_mid_x_min"]))
    hi = (int(d["z_max"]), int(d["z_mid_y_max"]), int(d["z_mid_x_max"]))
    return lo, hi


# ---------------------------------------------------------------------- one sample
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

    @classmethod
    def from_config(cls, cfg: Any, patch: Sequence[int]) -> "SampleOptions":
        return cls(tuple(int(v) for v in patch), cfg.p_no_box, cfg.zoom_aug_max, cfg.nobox_zoom_max,
                   cfg.shift_frac, cfg.flip, cfg.intensity_scale, cfg.intensity_shift)


def sample_window(lo, hi, patch: Triple, shape: Triple, zoom_extra: float, shift: np.ndarray) -> Window:
    """Window.around the extent [lo, hi] (z, y, x) with zoom_extra, its centre moved by `shift` x its size."""
    w = Window.around(lo, hi, patch, shape, zoom_extra=zoom_extra)
    d = np.round(np.asarray(shift, float) * np.asarray(w.size, float))
    return Window.around(np.asarray(lo, float) + d, np.asarray(hi, float) + d, patch, shape, zoom_extra=zoom_extra)


def make_sample(store: CaseStore, opts: SampleOptions, seed: int, index: int) -> dict[str, np.ndarray]:
    """Sample `index` of the stream `seed`: input (8, pz, py, px) float32, target (pz, py, px) bool,
    has_box, click0 (the no-box first click in patch coordinates (z, y, x), NaN with a box), case, label."""
    rng = np.random.default_rng([int(seed), int(index)])
    ci = int(rng.integers(len(store)))
    case = store.get(ci)
    if len(case.labels) == 0:
        raise ValueError(f"{store.paths[ci]}: no labelled class")
    label = int(case.labels[rng.integers(len(case.labels))])
    has_box = bool(rng.random() >= opts.p_no_box)
    shift = rng.uniform(-opts.shift_frac, opts.shift_frac, 3) if opts.shift_frac > 0 else np.zeros(3)
    if has_box:
        lo, hi = organizer_box(case, label, int(rng.integers(2**31)))
        zoom_extra = float(rng.uniform(1.0, opts.zoom_aug_max))
        prompts = ClassPrompts((lo, hi), EMPTY_POINTS, EMPTY_POINTS)
    else:
        click = store.first_click(ci, label)
        lo = hi = click
        zoom_extra = float(rng.uniform(1.0, opts.nobox_zoom_max))
        prompts = ClassPrompts(None, np.asarray([click], dtype=np.int64), EMPTY_POINTS)
    window = sample_window(lo, hi, opts.patch, case.shape, zoom_extra, shift)
    x = encode(window, case.image, case.stats, prompts)
    target = window.crop(case.gts, transform=lambda v: v == label) > 0.5
    click0 = window.to_patch(np.asarray([lo], float))[0] if not has_box else np.full(3, np.nan)
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
            target = torch.flip(target, axes)
            for a in axes:
                click0[a] = opts.patch[a] - 1 - click0[a]
    return {
        "input": x.numpy(),
        "target": target.numpy(),
        "has_box": np.bool_(has_box),
        "click0": click0.astype(np.float32),
        "case": np.int64(ci),
        "label": np.int64(label),
    }


class PromptDataset(torch.utils.data.Dataset):
    """Map-style dataset over an unbounded stream of sample indices (see `StreamSampler`)."""

    def __init__(self, store: CaseStore, opts: SampleOptions, seed: int):
        self.store, self.opts, self.seed = store, opts, int(seed)

    def __len__(self) -> int:
        return 2**62

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        return make_sample(self.store, self.opts, self.seed, int(index))


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


def make_loader(dataset: PromptDataset, sampler: StreamSampler, batch_size: int, num_workers: int,
                pin_memory: bool = False) -> Iterator[dict[str, torch.Tensor]]:
    """Batches as torch tensors; workers (if any) are started with the file system as sharing strategy."""
    if num_workers <= 0:
        it = iter(sampler)

        def gen() -> Iterator[dict[str, torch.Tensor]]:
            while True:
                idx = [next(it) for _ in range(batch_size)]
                yield to_torch(collate([dataset[i] for i in idx]))
        return gen()
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers, collate_fn=collate,
        pin_memory=False, persistent_workers=True, prefetch_factor=4,
        multiprocessing_context="fork" if hasattr(os, "fork") else None)

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
