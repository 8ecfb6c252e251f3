"""Convert medical volumes (NIfTI, MHA/NRRD, DICOM series) to challenge-format npz, and back.

Challenge (CVPR 2025 interactive 3D segmentation) training npz format:

* ``imgs``    uint8, shape (z, y, x): the image, CT windowed / other modalities percentile-clipped,
  rescaled to [0, 255].
* ``gts``     uint8 (uint16 when more than 255 classes), shape (z, y, x): labels relabelled to 1..N.
* ``spacing`` float64, 3 values in (x, y, z) order (SimpleITK order, NOT array order).

Arrays are always in (z, y, x) order exactly as ``SimpleITK.GetArrayFromImage`` returns them (the
voxel order of the file, no reorientation); the stored spacing is (x, y, z). A ``<stem>.json`` beside
each npz keeps the label name table (new id -> name), the original ids, and the geometry needed to write
a prediction back to NIfTI.

Command line::

    python -m training.convert IMAGE [LABELS] OUT.npz [--modality CT] [--window soft] [--names names.json]
    python -m training.convert --to-nifti PRED.npz --reference IMAGE_OR_JSON OUT.nii.gz

IMAGE may be a file readable by SimpleITK (.nii/.nii.gz/.mha/.mhd/.nrrd/...) or a directory holding one
DICOM series.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import SimpleITK as sitk

#: Bumped whenever the conversion output changes; prepare_data re-converts files of another version.
CONVERTER_VERSION = 1

#: Organizer CT windows as (width, level) in Hounsfield units.
CT_WINDOWS: dict[str, tuple[float, float]] = {
    "soft": (400.0, 40.0),
    "lung": (1500.0, -160.0),
    "brain": (80.0, 40.0),
    "bone": (1800.0, 400.0),
}
MODALITIES: tuple[str, ...] = ("CT", "MR", "PET", "US", "Microscopy")
PERCENTILES: tuple[float, float] = (0.5, 99.5)


class ConversionError(Exception):
    """A problem with a user-supplied file (message names the file and the problem)."""


# --------------------------------------------------------------------------------------------- reading
def read_image(path: str | os.PathLike[str]) -> sitk.Image:
    """Read an image file or a DICOM series directory into a SimpleITK image.

    A directory is read as a DICOM series (the series with the most files if it holds several).
    NIfTI files SimpleITK refuses (e.g. non-orthonormal direction cosines) are read with nibabel.
    """
    p = Path(path)
    if not p.exists():
        raise ConversionError(f"{p}: file or directory does not exist")
    if p.is_dir():
        return _read_dicom_series(p)
    try:
        return sitk.ReadImage(str(p))
    except RuntimeError as exc:
        if p.name.lower().endswith((".nii", ".nii.gz")):
            try:
                return _read_nifti_nibabel(p)
            except Exception as exc2:  # noqa: BLE001 - report both failures
                raise ConversionError(f"{p}: cannot read NIfTI ({exc2}); SimpleITK said: {_first_line(exc)}")
        raise ConversionError(f"{p}: cannot read image: {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return lines[-1] if lines else type(exc).__name__


def _read_dicom_series(folder: Path) -> sitk.Image:
    """Read the (largest) DICOM series in ``folder``."""
    reader = sitk.ImageSeriesReader()
    ids = reader.GetGDCMSeriesIDs(str(folder)) or ()
    if not ids:
        raise ConversionError(f"{folder}: directory holds no DICOM series")
    files_by_id = {sid: reader.GetGDCMSeriesFileNames(str(folder), sid) for sid in ids}
    sid = max(ids, key=lambda s: len(files_by_id[s]))
    if len(ids) > 1:
        print(f"note: {folder} holds {len(ids)} DICOM series; using {sid} ({len(files_by_id[sid])} files)",
              file=sys.stderr)
    reader.SetFileNames(files_by_id[sid])
    try:
        return reader.Execute()
    except RuntimeError as exc:
        raise ConversionError(f"{folder}: cannot read DICOM series {sid}: {_first_line(exc)}") from None


def _read_nifti_nibabel(path: Path) -> sitk.Image:
    """Read NIfTI with nibabel and convert its RAS affine to an LPS SimpleITK image (3D only)."""
    import nibabel as nib

    nii = nib.load(str(path))
    data = np.asanyarray(nii.dataobj)
    if data.ndim != 3:
        raise ConversionError(f"{path}: expected a 3D volume, got shape {data.shape}")
    affine = np.asarray(nii.affine, dtype=np.float64)
    lps = np.diag([-1.0, -1.0, 1.0]) @ affine[:3, :4]
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    direction = lps[:3, :3] / spacing
    # nibabel data is (x, y, z); SimpleITK arrays are (z, y, x)
    img = sitk.GetImageFromArray(np.ascontiguousarray(data.transpose(2, 1, 0)))
    img.SetSpacing([float(s) for s in spacing])
    img.SetOrigin([float(o) for o in lps[:3, 3]])
    # orthonormalise (SimpleITK requires it); the polar factor is the nearest rotation
    u, _, vt = np.linalg.svd(direction)
    img.SetDirection([float(v) for v in (u @ vt).ravel()])
    return img


def image_to_array(img: sitk.Image) -> np.ndarray:
    """Return the voxel array in (z, y, x) order (3D, single component)."""
    if img.GetDimension() != 3:
        raise ConversionError(f"expected a 3D image, got {img.GetDimension()}D")
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise ConversionError(f"expected a single-channel image, got {img.GetNumberOfComponentsPerPixel()} channels")
    return sitk.GetArrayFromImage(img)


def geometry(img: sitk.Image) -> dict[str, Any]:
    """Geometry of ``img``: spacing/origin in (x, y, z), direction row-major 3x3, shape in (z, y, x)."""
    return {
        "spacing_xyz": [float(s) for s in img.GetSpacing()],
        "origin_xyz": [float(o) for o in img.GetOrigin()],
        "direction": [float(d) for d in img.GetDirection()],
        "shape_zyx": [int(s) for s in reversed(img.GetSize())],
    }


# --------------------------------------------------------------------------------------------- intensity
def window_ct(hu: np.ndarray, width: float, level: float) -> np.ndarray:
    """Window Hounsfield units to [level - width/2, level + width/2] and rescale to uint8 [0, 255].

    Linear map ``(hu - lower) / width * 255`` rounded to nearest; values outside the window saturate.
    Any axis order (elementwise).
    """
    lower = level - width / 2.0
    scaled = (np.asarray(hu, dtype=np.float64) - lower) / float(width) * 255.0
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def clip_percentiles(img: np.ndarray, low: float = PERCENTILES[0], high: float = PERCENTILES[1]) -> tuple[np.ndarray, tuple[float, float]]:
    """Clip to the [low, high] percentiles (over all voxels) and rescale to uint8 [0, 255].

    Images already in [0, 255] with integer values are returned unchanged (cast to uint8), as in the
    challenge preprocessing. Returns the uint8 array and the (lower, upper) bounds used. Elementwise.
    """
    a = np.asarray(img)
    if a.size == 0:
        raise ConversionError("empty image")
    finite = a[np.isfinite(a)] if np.issubdtype(a.dtype, np.floating) else a
    if finite.size == 0:
        raise ConversionError("image holds no finite values")
    amin, amax = float(finite.min()), float(finite.max())
    if amin >= 0 and amax <= 255 and (np.issubdtype(a.dtype, np.integer) or np.all(np.mod(finite, 1) == 0)):
        return np.nan_to_num(a).astype(np.uint8), (0.0, 255.0)
    lo, hi = (float(v) for v in np.percentile(finite, [low, high]))
    if hi <= lo:
        return np.zeros(a.shape, dtype=np.uint8), (lo, hi)
    scaled = (np.clip(np.nan_to_num(a.astype(np.float64), nan=lo), lo, hi) - lo) / (hi - lo) * 255.0
    return np.rint(scaled).astype(np.uint8), (lo, hi)


def normalize_intensity(arr: np.ndarray, modality: str, window: str = "soft") -> tuple[np.ndarray, dict[str, Any]]:
    """Challenge intensity preprocessing for one modality; returns uint8 array and a description dict."""
    if modality == "CT":
        if window not in CT_WINDOWS:
            raise ConversionError(f"unknown CT window {window!r}; choose one of {sorted(CT_WINDOWS)}")
        width, level = CT_WINDOWS[window]
        return window_ct(arr, width, level), {"window": window, "width": width, "level": level}
    out, (lo, hi) = clip_percentiles(arr)
    return out, {"window": None, "percentiles": list(PERCENTILES), "clip": [lo, hi]}


# --------------------------------------------------------------------------------------------- labels
def relabel_sequential(labels: np.ndarray) -> tuple[np.ndarray, dict[int, int]]:
    """Map the nonzero label ids present, sorted, to 1..N (0 stays background).

    Returns the relabelled array (uint8, or uint16 when N > 255; same axis order as the input) and the
    mapping new id -> original id.
    """
    lab = np.asarray(labels)
    if np.issubdtype(lab.dtype, np.floating):
        if not np.all(np.isfinite(lab)) or np.any(np.mod(lab, 1) != 0):
            raise ConversionError("label map holds non-integer values")
        lab = lab.astype(np.int64)
    if lab.size and lab.min() < 0:
        raise ConversionError("label map holds negative values")
    ids = np.unique(lab)
    ids = ids[ids != 0]
    n = len(ids)
    if n > 65535:
        raise ConversionError(f"too many labels ({n})")
    dtype = np.uint8 if n <= 255 else np.uint16
    top = int(ids[-1]) if n else 0
    if top < 1 << 20:  # lookup table: fast, no int64 copy of the volume
        lut = np.zeros(top + 1, dtype=dtype)
        lut[ids] = np.arange(1, n + 1, dtype=dtype)
        out = lut[lab]
    else:
        out = np.where(lab == 0, 0, np.searchsorted(ids, lab) + 1).astype(dtype)
    return out, {i + 1: int(orig) for i, orig in enumerate(ids)}


def merge_masks(masks: Sequence[np.ndarray], ids: Sequence[int] | None = None) -> np.ndarray:
    """Merge boolean masks (same shape, any axis order) into one label array; mask i gets ``ids[i]`` (default i + 1).

    Overlaps: masks are painted in decreasing voxel count, so the smaller structure keeps a shared voxel
    (a cord inside its canal, a lumen inside the vessel). uint8, or uint16 above 255.
    """
    ids = list(ids) if ids is not None else list(range(1, len(masks) + 1))
    if len(ids) != len(masks):
        raise ValueError("one id per mask")
    if not masks:
        raise ValueError("no masks to merge")
    out = np.zeros(np.shape(masks[0]), dtype=np.uint8 if max(ids, default=0) <= 255 else np.uint16)
    order = sorted(range(len(masks)), key=lambda i: -int(np.count_nonzero(masks[i])))
    for i in order:
        out[np.asarray(masks[i], dtype=bool)] = ids[i]
    return out


def load_names(path: str | os.PathLike[str]) -> dict[int, str]:
    """Read a label-name table: JSON ``{"1": "spleen", ...}`` or a sidecar with a ``labels`` key,
    or CSV with columns ``id`` and ``structure`` (or ``name``)."""
    p = Path(path)
    if not p.is_file():
        raise ConversionError(f"{p}: names file does not exist")
    try:
        if p.suffix.lower() == ".csv":
            import csv

            with open(p, newline="", encoding="utf-8-sig") as fh:
                rows = list(csv.DictReader(fh))
            key = "structure" if rows and "structure" in rows[0] else "name"
            return {int(r["id"]): r[key].strip() for r in rows}
        data = json.loads(p.read_text(encoding="utf-8"))
        if isinstance(data, dict) and "labels" in data and isinstance(data["labels"], dict):
            if "original_ids" in data:  # one of our sidecars: key by original id
                return {int(data["original_ids"][k]): v for k, v in data["labels"].items()}
            data = data["labels"]
        return {int(k): str(v) for k, v in data.items()}
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ConversionError(f"{p}: cannot parse label names ({exc})") from None


# --------------------------------------------------------------------------------------------- resampling
def resample_to_spacing(img: sitk.Image, spacing_xyz: Sequence[float], is_label: bool,
                        default_value: float | None = None) -> sitk.Image:
    """Resample to ``spacing_xyz`` (x, y, z) keeping origin, direction and physical extent.

    Linear interpolation for images (do it on raw intensities, before windowing), nearest neighbour
    for label maps. ``default_value`` fills voxels outside the input (default: the image minimum).
    """
    old_sp = np.array(img.GetSpacing(), dtype=np.float64)
    new_sp = np.array(spacing_xyz, dtype=np.float64)
    size = np.maximum(1, np.round(np.array(img.GetSize()) * old_sp / new_sp)).astype(int)
    if default_value is None:
        default_value = 0.0 if is_label else float(sitk.GetArrayViewFromImage(img).min())
    src = img if is_label else sitk.Cast(img, sitk.sitkFloat32)
    return sitk.Resample(
        src, [int(s) for s in size], sitk.Transform(), sitk.sitkNearestNeighbor if is_label else sitk.sitkLinear,
        img.GetOrigin(), [float(s) for s in new_sp], img.GetDirection(), float(default_value), src.GetPixelID(),
    )


# --------------------------------------------------------------------------------------------- writing
def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_replace(tmp: str | os.PathLike[str], path: str | os.PathLike[str]) -> None:
    """Give a ``mkstemp`` file normal permissions (0666 minus umask, not 0600) and move it onto ``path``."""
    os.chmod(tmp, 0o666 & ~_umask())
    os.replace(tmp, path)


def save_npz(path: str | os.PathLike[str], **arrays: np.ndarray) -> None:
    """Write arrays like ``np.savez_compressed``, atomically and byte-reproducibly.

    Same zip layout as numpy's (one deflated ``<key>.npy`` per array) but with a fixed timestamp, so the
    same content gives the same bytes; written to a temp name in the target folder, then ``os.replace``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh, zipfile.ZipFile(fh, "w", zipfile.ZIP_DEFLATED, allowZip64=True) as zf:
            for key, val in arrays.items():
                info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
                info.compress_type = zipfile.ZIP_DEFLATED
                info.external_attr = 0o644 << 16
                buf = io.BytesIO()
                np.lib.format.write_array(buf, np.asanyarray(val), allow_pickle=False)
                zf.writestr(info, buf.getvalue())
        atomic_replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_json(path: str | os.PathLike[str], data: Mapping[str, Any]) -> None:
    """Write JSON atomically (temp name in the same folder + os.replace), stable key order."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=1)
            fh.write("\n")
        atomic_replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def sidecar_path(npz_path: str | os.PathLike[str]) -> Path:
    """``foo/CT_X_case.npz`` -> ``foo/CT_X_case.json``."""
    p = Path(npz_path)
    return p.with_name(p.name[:-4] + ".json" if p.name.endswith(".npz") else p.name + ".json")


def modality_from_name(path: str | os.PathLike[str]) -> str | None:
    """Modality from the challenge file-name prefix (text before the first '_'), if it is a known one."""
    prefix = Path(path).name.split("_", 1)[0]
    return next((m for m in MODALITIES if m.lower() == prefix.lower()), None)


# --------------------------------------------------------------------------------------------- conversion
def convert_images(image: sitk.Image, labels: sitk.Image | None, modality: str = "CT", window: str = "soft",
                   names: Mapping[int, str] | None = None,
                   image_name: str = "image", label_name: str = "labels") -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Convert in-memory SimpleITK images to (npz arrays, sidecar metadata).

    Arrays: ``imgs`` uint8 (z, y, x), ``gts`` (z, y, x) relabelled 1..N if ``labels`` given, ``spacing``
    float64 (x, y, z). Metadata: labels (new id -> name), original_ids (new id -> original id), geometry.
    """
    if modality not in MODALITIES:
        raise ConversionError(f"unknown modality {modality!r}; choose one of {list(MODALITIES)}")
    arr = image_to_array(image)
    imgs, intensity = normalize_intensity(arr, modality, window)
    out: dict[str, np.ndarray] = {"imgs": imgs}
    meta: dict[str, Any] = {"modality": modality, "window": intensity.get("window"), "intensity": intensity}
    if labels is not None:
        lab = image_to_array(labels)
        if lab.shape != arr.shape:
            raise ConversionError(
                f"{label_name}: label map shape {lab.shape} (z, y, x) does not match image {image_name} shape {arr.shape}")
        _check_same_grid(image, labels, image_name, label_name)
        out["gts"], label_meta = relabel_with_names(lab, names, label_name)
        meta.update(label_meta)
    out["spacing"] = np.asarray(image.GetSpacing(), dtype=np.float64)
    meta["spacing_xyz"] = [float(s) for s in image.GetSpacing()]
    meta["geometry"] = geometry(image)
    meta["converter_version"] = CONVERTER_VERSION
    return out, meta


def convert_labelmap(labels: sitk.Image, names: Mapping[int, str] | None = None,
                     label_name: str = "labels") -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Label map without an image (for label-to-image synthesis): arrays ``gts`` (z, y, x) 1..N and ``spacing``
    (x, y, z); metadata as ``convert_images`` (labels, original_ids, geometry)."""
    gts, meta = relabel_with_names(image_to_array(labels), names, label_name)
    meta.update({"spacing_xyz": [float(s) for s in labels.GetSpacing()], "geometry": geometry(labels),
                 "converter_version": CONVERTER_VERSION})
    return {"gts": gts, "spacing": np.asarray(labels.GetSpacing(), dtype=np.float64)}, meta


def relabel_with_names(lab: np.ndarray, names: Mapping[int, str] | None,
                       label_name: str = "labels") -> tuple[np.ndarray, dict[str, Any]]:
    """``relabel_sequential`` plus the sidecar tables ``labels`` (new id -> name) and ``original_ids``."""
    gts, mapping = relabel_sequential(lab)
    names = dict(names or {})
    missing = sorted(orig for orig in mapping.values() if names and orig not in names)
    if missing:
        print(f"warning: {label_name}: no name for label ids {missing}", file=sys.stderr)
    return gts, {"labels": {str(new): names.get(orig, f"label_{orig}") for new, orig in mapping.items()},
                 "original_ids": {str(new): orig for new, orig in mapping.items()}}


def _check_same_grid(image: sitk.Image, labels: sitk.Image, image_name: str, label_name: str) -> None:
    """Warn when the label map's physical grid differs from the image's (same shape already checked)."""
    sp_ok = np.allclose(image.GetSpacing(), labels.GetSpacing(), rtol=1e-3, atol=1e-4)
    or_ok = np.allclose(image.GetOrigin(), labels.GetOrigin(), atol=1e-2 * max(image.GetSpacing()))
    di_ok = np.allclose(image.GetDirection(), labels.GetDirection(), atol=1e-3)
    if not (sp_ok and or_ok and di_ok):
        print(f"warning: {label_name}: geometry (spacing/origin/direction) differs from {image_name}; "
              "using the voxel grids as they are", file=sys.stderr)


def convert_files(image_path: str | os.PathLike[str], label_path: str | os.PathLike[str] | None,
                  out_path: str | os.PathLike[str], modality: str | None = None, window: str = "soft",
                  names: Mapping[int, str] | None = None, extra_meta: Mapping[str, Any] | None = None,
                  resample_xyz: Sequence[float] | None = None) -> dict[str, Any]:
    """Convert an image (+ optional label map) file/DICOM folder to ``out_path`` npz + sidecar JSON.

    ``resample_xyz``: optional target spacing (x, y, z) in mm; the image is resampled linearly before
    intensity normalisation, labels with nearest neighbour. Returns the sidecar metadata.
    """
    out_path = Path(out_path)
    if not out_path.name.endswith(".npz"):
        raise ConversionError(f"{out_path}: output name must end with .npz")
    modality = modality or modality_from_name(out_path) or "CT"
    image = read_image(image_path)
    labels = read_image(label_path) if label_path is not None else None
    if resample_xyz is not None:
        if labels is not None and labels.GetSize() == image.GetSize():
            labels.CopyInformation(image)  # resample both on the image's grid
        image = resample_to_spacing(image, resample_xyz, is_label=False)
        if labels is not None:
            labels = resample_to_spacing(labels, resample_xyz, is_label=True)
    arrays, meta = convert_images(image, labels, modality, window, names,
                                  image_name=str(image_path), label_name=str(label_path))
    meta = {**meta, **dict(extra_meta or {})}
    save_npz(out_path, **arrays)
    save_json(sidecar_path(out_path), _order_meta(meta))
    return meta


def _order_meta(meta: Mapping[str, Any]) -> dict[str, Any]:
    first = ["labels", "original_ids", "source", "license", "spacing_xyz", "modality", "window"]
    return {**{k: meta[k] for k in first if k in meta}, **{k: v for k, v in meta.items() if k not in first}}


def resample_onto(img: sitk.Image, reference: sitk.Image, is_label: bool = True) -> sitk.Image:
    """Resample ``img`` onto ``reference``'s voxel grid by physical position (nearest neighbour for labels,
    linear otherwise); voxels of the reference outside ``img`` become 0. Handles crops with offset origins."""
    interp = sitk.sitkNearestNeighbor if is_label else sitk.sitkLinear
    return sitk.Resample(img, reference, sitk.Transform(), interp, 0.0, img.GetPixelID())


def shrink_labelmap(labels: sitk.Image, max_voxels: int, margin_voxels: int = 8) -> tuple[sitk.Image, dict[str, Any]]:
    """Keep a label map under ``max_voxels``: crop to the labelled bounding box (+ margin), then, if still too
    large, coarsen x and y (nearest neighbour) by the factor needed. Returns the image and what was done."""
    n = int(np.prod(labels.GetSize()))
    if n <= max_voxels:
        return labels, {}
    arr = sitk.GetArrayViewFromImage(labels)  # (z, y, x)
    nz = np.nonzero(arr)
    done: dict[str, Any] = {"original_shape_zyx": list(arr.shape), "original_spacing_xyz": list(labels.GetSpacing())}
    if nz[0].size:
        lo = [max(int(a.min()) - margin_voxels, 0) for a in nz]
        hi = [min(int(a.max()) + margin_voxels + 1, s) for a, s in zip(nz, arr.shape)]
        index_xyz = [lo[2], lo[1], lo[0]]
        size_xyz = [hi[2] - lo[2], hi[1] - lo[1], hi[0] - lo[0]]
        labels = sitk.RegionOfInterest(labels, size_xyz, index_xyz)
        done["crop_index_xyz"], done["crop_size_xyz"] = index_xyz, size_xyz
    n = int(np.prod(labels.GetSize()))
    if n > max_voxels:
        nx, ny, nz = labels.GetSize()
        f = float(np.sqrt(n / max_voxels))
        size = [max(1, int(nx / f)), max(1, int(ny / f)), nz]  # floor: the product stays under max_voxels
        sp = labels.GetSpacing()
        new_sp = [sp[0] * nx / size[0], sp[1] * ny / size[1], sp[2]]  # same physical extent
        origin = labels.TransformContinuousIndexToPhysicalPoint(
            [(new_sp[0] / sp[0] - 1) / 2, (new_sp[1] / sp[1] - 1) / 2, 0.0])  # first new voxel centre
        labels = sitk.Resample(labels, size, sitk.Transform(), sitk.sitkNearestNeighbor, origin, new_sp,
                               labels.GetDirection(), 0.0, labels.GetPixelID())
        done["inplane_factor"] = round(nx / size[0], 4)
    done["spacing_xyz"] = list(labels.GetSpacing())
    return labels, done


# --------------------------------------------------------------------------------------------- write-back
def load_prediction(npz_path: str | os.PathLike[str], key: str | None = None) -> np.ndarray:
    """Load the label array (z, y, x) from a prediction npz: ``segs`` if present, else ``gts``."""
    p = Path(npz_path)
    if not p.is_file():
        raise ConversionError(f"{p}: prediction file does not exist")
    try:
        with np.load(p, allow_pickle=False) as data:
            keys = [key] if key else ["segs", "gts"]
            for k in keys:
                if k in data.files:
                    return np.asarray(data[k])
            raise ConversionError(f"{p}: no {' or '.join(repr(k) for k in keys)} array (has {data.files})")
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise ConversionError(f"{p}: cannot read npz ({exc})") from None


def reference_geometry(reference: str | os.PathLike[str]) -> dict[str, Any]:
    """Geometry from a reference image/DICOM folder, or from one of our sidecar JSON files."""
    p = Path(reference)
    if p.is_file() and p.suffix.lower() == ".json":
        data = json.loads(p.read_text(encoding="utf-8"))
        if "geometry" not in data:
            raise ConversionError(f"{p}: JSON has no 'geometry' entry (not a converter sidecar)")
        return data["geometry"]
    if p.is_file():  # read the header only
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(p))
        try:
            reader.ReadImageInformation()
        except RuntimeError:
            return geometry(read_image(p))
        return {"spacing_xyz": list(reader.GetSpacing()), "origin_xyz": list(reader.GetOrigin()),
                "direction": list(reader.GetDirection()), "shape_zyx": list(reversed(reader.GetSize()))}
    return geometry(read_image(p))


def prediction_to_image(pred_zyx: np.ndarray, geom: Mapping[str, Any]) -> sitk.Image:
    """Wrap a (z, y, x) label array into a SimpleITK image with the given geometry."""
    shape = tuple(int(s) for s in geom["shape_zyx"])
    if pred_zyx.ndim != 3 or tuple(pred_zyx.shape) != shape:
        raise ConversionError(f"prediction shape {tuple(pred_zyx.shape)} (z, y, x) does not match the reference {shape}")
    arr = pred_zyx
    if arr.dtype not in (np.uint8, np.uint16, np.int16, np.int32, np.uint32):
        arr = arr.astype(np.uint16 if arr.max(initial=0) > 255 else np.uint8)
    img = sitk.GetImageFromArray(np.ascontiguousarray(arr))
    img.SetSpacing([float(v) for v in geom["spacing_xyz"]])
    img.SetOrigin([float(v) for v in geom["origin_xyz"]])
    img.SetDirection([float(v) for v in geom["direction"]])
    return img


def restore_original_ids(pred: np.ndarray, original_ids: Mapping[str, int]) -> np.ndarray:
    """Map labels 1..N back to the original ids (table from a sidecar JSON); other values -> 0."""
    top = max([int(k) for k in original_ids] + [int(pred.max(initial=0))])
    lut = np.zeros(top + 1, dtype=np.int64)
    for new, orig in original_ids.items():
        lut[int(new)] = int(orig)
    out = lut[pred.astype(np.int64)]
    return out.astype(np.uint8 if out.max(initial=0) <= 255 else np.uint16)


def npz_to_nifti(pred_path: str | os.PathLike[str], reference: str | os.PathLike[str],
                 out_path: str | os.PathLike[str], key: str | None = None,
                 original_ids_from: str | os.PathLike[str] | None = None) -> sitk.Image:
    """Write ``segs`` (or ``gts``) of ``pred_path`` to NIfTI (or any SimpleITK format) with the
    reference's origin, spacing and direction, so it overlays the original scan in 3D Slicer."""
    pred = load_prediction(pred_path, key)
    geom = reference_geometry(reference)
    if original_ids_from is not None:
        side = json.loads(Path(original_ids_from).read_text(encoding="utf-8"))
        pred = restore_original_ids(pred, side["original_ids"])
    try:
        img = prediction_to_image(pred, geom)
    except ConversionError as exc:
        raise ConversionError(f"{pred_path}: {exc} ({reference})") from None
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.name}.tmp{''.join(out_path.suffixes)}")
    try:
        sitk.WriteImage(img, str(tmp), useCompression=True)
        os.replace(tmp, out_path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return img


# --------------------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m training.convert",
        description="Convert a scan (+ label map) to challenge npz (imgs/gts uint8 in (z,y,x), spacing (x,y,z)), "
                    "or write a prediction npz back to NIfTI with the original geometry.",
        epilog="examples:\n"
               "  python -m training.convert ct.nii.gz seg.nii.gz CT_Mine_case1.npz --names names.json\n"
               "  python -m training.convert dicom_dir/ CT_Mine_case2.npz --window lung\n"
               "  python -m training.convert --to-nifti outputs/CT_Mine_case1.npz --reference ct.nii.gz pred.nii.gz",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("paths", nargs="+", metavar="PATH",
                   help="convert: IMAGE [LABELS] OUT.npz (IMAGE/LABELS: NIfTI, MHA, NRRD, ... or a DICOM series "
                        "folder). --to-nifti: OUT.nii.gz")
    p.add_argument("--modality", choices=MODALITIES, default=None,
                   help="default: from OUT's name prefix (e.g. CT_..., MR_...), else CT")
    p.add_argument("--window", choices=sorted(CT_WINDOWS), default="soft",
                   help="CT window: soft W400 L40 (default), lung W1500 L-160, brain W80 L40, bone W1800 L400")
    p.add_argument("--names", metavar="FILE",
                   help="label names: JSON {\"id\": \"name\"} (original ids) or CSV with columns id,structure")
    p.add_argument("--to-nifti", metavar="PRED.npz", help="write segs (or gts) of PRED.npz back to an image file")
    p.add_argument("--reference", metavar="IMAGE",
                   help="with --to-nifti: the original image / DICOM folder (or the converter's sidecar .json)")
    p.add_argument("--key", choices=("segs", "gts"), help="with --to-nifti: array to write (default segs, else gts)")
    p.add_argument("--original-ids", metavar="SIDECAR.json",
                   help="with --to-nifti: map labels 1..N back to the original ids listed in this sidecar JSON")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.to_nifti:
            if len(args.paths) != 1:
                parser.error("--to-nifti takes exactly one positional OUT path")
            if not args.reference:
                parser.error("--to-nifti needs --reference IMAGE")
            img = npz_to_nifti(args.to_nifti, args.reference, args.paths[0], args.key, args.original_ids)
            print(f"wrote {args.paths[0]} (size x,y,z {img.GetSize()}, spacing {img.GetSpacing()})")
            return 0
        if len(args.paths) not in (2, 3):
            parser.error("convert takes IMAGE [LABELS] OUT.npz")
        image_path, out = args.paths[0], args.paths[-1]
        label_path = args.paths[1] if len(args.paths) == 3 else None
        names = load_names(args.names) if args.names else None
        meta = convert_files(image_path, label_path, out, args.modality, args.window, names,
                             extra_meta={"source": str(image_path) + (f" + {label_path}" if label_path else "")})
        n = len(meta.get("labels", {}))
        print(f"wrote {out} ({meta['modality']}, shape z,y,x {tuple(meta['geometry']['shape_zyx'])}, "
              f"spacing x,y,z {tuple(round(s, 4) for s in meta['spacing_xyz'])}, {n} labels) + {sidecar_path(out).name}")
        return 0
    except ConversionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
