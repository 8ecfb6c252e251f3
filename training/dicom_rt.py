"""DICOM label objects onto their image series: RTSTRUCT contours and DICOM SEG frames (pydicom, scikit-image).

* RTSTRUCT: each ROI's closed planar contours (polygons in patient coordinates, mm) are rasterised slice by
  slice onto the referenced series with an even-odd rule (the per-contour fills of one slice are combined by
  XOR, so a contour inside another leaves a hole), then the ROIs are painted largest first so a smaller
  structure keeps the voxels it shares with a larger one (``convert.merge_masks``).
* DICOM SEG: every frame names its segment (``SegmentIdentificationSequence``) and its plane
  (``PlanePositionSequence.ImagePositionPatient``); frames are mapped onto the series' slices by projecting
  that position into the series' voxel grid. FRACTIONAL segmentations are thresholded at half the maximum.

The image series itself is read with SimpleITK (``convert.read_image``): it applies the rescale slope and
intercept per slice (PET in the units of its header). Label arrays are (z, y, x); SimpleITK indices and
spacing are (x, y, z).
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pydicom
import SimpleITK as sitk
from skimage.draw import polygon as fill_polygon

from training.convert import ConversionError, merge_masks

#: A contour whose points lie further than this (in slices) from one slice plane is refused.
PLANE_TOLERANCE = 0.25


@dataclass
class Roi:
    """One RTSTRUCT region: number, name and its contours, each an (n, 3) array of patient (x, y, z) mm."""
    number: int
    name: str
    contours: list[np.ndarray]


# --------------------------------------------------------------------------------------------- geometry
def physical_to_index(points_xyz: np.ndarray, image: sitk.Image) -> np.ndarray:
    """Continuous voxel indices (i, j, k) = (x, y, z) order of patient points (n, 3) on ``image``'s grid."""
    origin = np.asarray(image.GetOrigin(), dtype=np.float64)
    spacing = np.asarray(image.GetSpacing(), dtype=np.float64)
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    # p = origin + direction @ (spacing * index)  ->  index = (direction^-1 (p - origin)) / spacing
    return (np.linalg.solve(direction, (np.asarray(points_xyz, np.float64) - origin).T).T) / spacing


# --------------------------------------------------------------------------------------------- RTSTRUCT
def read_rtstruct(path: str | Path) -> list[Roi]:
    """ROIs of an RTSTRUCT file with their CLOSED_PLANAR contours (other contour types are skipped)."""
    path = Path(path)
    try:
        ds = pydicom.dcmread(str(path))
    except Exception as exc:  # noqa: BLE001 - any parse failure is a bad input file
        raise ConversionError(f"{path}: cannot read DICOM ({exc})") from None
    if ds.get("Modality") != "RTSTRUCT":
        raise ConversionError(f"{path}: not an RTSTRUCT (Modality {ds.get('Modality')!r})")
    names = {int(r.ROINumber): str(r.ROIName) for r in ds.get("StructureSetROISequence", [])}
    rois: list[Roi] = []
    for rc in ds.get("ROIContourSequence", []):
        number = int(rc.ReferencedROINumber)
        contours, skipped = [], 0
        for c in rc.get("ContourSequence", []):
            pts = np.asarray([float(v) for v in c.ContourData], dtype=np.float64).reshape(-1, 3)
            if c.get("ContourGeometricType", "CLOSED_PLANAR") != "CLOSED_PLANAR" or len(pts) < 3:
                skipped += 1
                continue
            contours.append(pts)
        if skipped:
            print(f"warning: {path}: ROI {names.get(number, number)!r}: skipped {skipped} contour(s) that are "
                  "not closed planar polygons", file=sys.stderr)
        rois.append(Roi(number, names.get(number, f"ROI_{number}"), contours))
    return rois


def rasterise_contours(contours: Sequence[np.ndarray], image: sitk.Image, label: str = "ROI") -> np.ndarray:
    """Boolean mask (z, y, x) of closed planar contours on ``image``'s grid, even-odd rule per slice.

    Each contour is mapped to voxel indices, assigned to the slice nearest to its plane and filled
    (pixel centres inside the polygon, scikit-image); fills of the same slice are XOR-ed, so nested
    contours make holes. Contours off the volume are skipped with a warning.
    """
    nx, ny, nz = image.GetSize()
    mask = np.zeros((nz, ny, nx), dtype=bool)
    outside = 0
    for pts in contours:
        idx = physical_to_index(pts, image)
        k_float = float(idx[:, 2].mean())
        k = int(np.floor(k_float + 0.5))
        if np.abs(idx[:, 2] - k).max() > PLANE_TOLERANCE:
            raise ConversionError(f"{label}: a contour does not lie in one slice plane of the series "
                                  f"(slice index {idx[:, 2].min():.2f}..{idx[:, 2].max():.2f})")
        if not 0 <= k < nz:
            outside += 1
            continue
        rr, cc = fill_polygon(idx[:, 1], idx[:, 0], shape=(ny, nx))
        fill = np.zeros((ny, nx), dtype=bool)
        fill[rr, cc] = True
        mask[k] ^= fill
    if outside:
        print(f"warning: {label}: {outside} contour(s) lie outside the series' slices; skipped", file=sys.stderr)
    return mask


def rtstruct_labels(rtstruct: str | Path, image: sitk.Image,
                    roi_names: Sequence[str] | None = None) -> tuple[sitk.Image, dict[int, str], dict[str, int]]:
    """Label image on ``image``'s grid from an RTSTRUCT: ROI i (in file order, or ``roi_names`` order) -> id i.

    Overlaps: larger ROIs are painted first, smaller ones on top. Returns (label image, id -> ROI name,
    ROI name -> voxel count of its own rasterised mask before the merge).
    """
    rois = {r.name: r for r in read_rtstruct(rtstruct)}
    wanted = list(roi_names) if roi_names is not None else list(rois)
    missing = [n for n in wanted if n not in rois]
    if missing:
        raise ConversionError(f"{rtstruct}: no ROI named {missing} (has {sorted(rois)})")
    masks = [rasterise_contours(rois[n].contours, image, f"{rtstruct}: ROI {n!r}") for n in wanted]
    lab = merge_masks(masks)
    out = sitk.GetImageFromArray(lab)
    out.CopyInformation(image)
    return out, {i + 1: n for i, n in enumerate(wanted)}, {n: int(m.sum()) for n, m in zip(wanted, masks)}


# --------------------------------------------------------------------------------------------- SEG
def frames_to_slices(positions_xyz: np.ndarray, image: sitk.Image, label: str = "SEG") -> tuple[np.ndarray, np.ndarray]:
    """Slice index and in-plane pixel shift of each frame, from the frames' ImagePositionPatient (F, 3) mm.

    Returns ``k`` (F,) slice indices of the series and ``shift`` (F, 2) integer (di, dj) = (column, row)
    offsets of each frame's first pixel on the series grid (rounded half up; a non-integer offset is
    reported). Frames that do not lie on a slice plane raise ConversionError.
    """
    idx = physical_to_index(np.asarray(positions_xyz, np.float64).reshape(-1, 3), image)
    k = np.floor(idx[:, 2] + 0.5).astype(int)
    if np.abs(idx[:, 2] - k).max(initial=0) > PLANE_TOLERANCE:
        raise ConversionError(f"{label}: frame positions do not fall on the series' slice planes")
    shift = np.floor(idx[:, :2] + 0.5).astype(int)
    off = np.abs(idx[:, :2] - shift).max(initial=0)
    if off > 1e-3:
        print(f"note: {label}: frames are offset by {off:.2f} pixel from the series grid in-plane; "
              "rounded to the nearest pixel (half up)", file=sys.stderr)
    return k, shift


def seg_labels(seg_path: str | Path, image: sitk.Image) -> tuple[sitk.Image, dict[int, str], dict[str, int]]:
    """Label image on ``image``'s grid from a DICOM SEG: segment number s -> id s (names: SegmentLabel).

    Frames are placed by ``frames_to_slices``; FRACTIONAL frames are thresholded at half the maximum value.
    Overlapping segments: larger painted first. Returns (label image, id -> name, name -> voxel count).
    """
    seg_path = Path(seg_path)
    try:
        ds = pydicom.dcmread(str(seg_path))
        frames = np.asarray(ds.pixel_array)
    except Exception as exc:  # noqa: BLE001 - any parse failure is a bad input file
        raise ConversionError(f"{seg_path}: cannot read DICOM SEG ({exc})") from None
    if ds.get("Modality") != "SEG":
        raise ConversionError(f"{seg_path}: not a DICOM SEG (Modality {ds.get('Modality')!r})")
    if frames.ndim == 2:
        frames = frames[None]
    if ds.get("SegmentationType") == "FRACTIONAL":
        frames = frames >= float(ds.get("MaximumFractionalValue", 255)) / 2.0
    else:
        frames = frames > 0
    shared = ds.SharedFunctionalGroupsSequence[0] if "SharedFunctionalGroupsSequence" in ds else None
    per_frame = ds.PerFrameFunctionalGroupsSequence

    def item(fg: pydicom.Dataset, seq: str) -> pydicom.Dataset | None:
        if seq in fg:
            return fg[seq].value[0]
        return shared[seq].value[0] if shared is not None and seq in shared else None

    orient = item(per_frame[0], "PlaneOrientationSequence")
    measures = item(per_frame[0], "PixelMeasuresSequence")
    if orient is None or measures is None:
        raise ConversionError(f"{seg_path}: SEG lacks plane orientation or pixel spacing")
    d = np.asarray(image.GetDirection()).reshape(3, 3)
    if not np.allclose(np.asarray([float(v) for v in orient.ImageOrientationPatient]), np.r_[d[:, 0], d[:, 1]], atol=1e-3):
        raise ConversionError(f"{seg_path}: SEG plane orientation differs from the image series'")
    row_sp, col_sp = (float(v) for v in measures.PixelSpacing)  # DICOM: (between rows, between columns)
    if not np.allclose((col_sp, row_sp), image.GetSpacing()[:2], rtol=1e-3):
        raise ConversionError(f"{seg_path}: SEG pixel spacing {(col_sp, row_sp)} differs from the image series' "
                              f"{image.GetSpacing()[:2]}")
    positions = np.asarray([[float(v) for v in item(fg, "PlanePositionSequence").ImagePositionPatient]
                            for fg in per_frame])
    numbers = np.asarray([int(item(fg, "SegmentIdentificationSequence").ReferencedSegmentNumber) for fg in per_frame])
    k, shift = frames_to_slices(positions, image, str(seg_path))
    names = {int(s.SegmentNumber): str(s.get("SegmentLabel", f"segment_{int(s.SegmentNumber)}"))
             for s in ds.SegmentSequence}
    nx, ny, nz = image.GetSize()
    ids = sorted(names)
    masks = {s: np.zeros((nz, ny, nx), dtype=bool) for s in ids}
    dropped = 0
    for f in range(len(frames)):
        if not 0 <= k[f] < nz or numbers[f] not in masks:
            dropped += 1
            continue
        place_frame(masks[numbers[f]][k[f]], frames[f], shift[f])
    if dropped:
        print(f"warning: {seg_path}: {dropped} frame(s) fall outside the series or name no segment; skipped",
              file=sys.stderr)
    lab = merge_masks([masks[s] for s in ids], ids)
    out = sitk.GetImageFromArray(lab)
    out.CopyInformation(image)
    return out, {s: names[s] for s in ids}, {names[s]: int(masks[s].sum()) for s in ids}


def place_frame(dest: np.ndarray, frame: np.ndarray, shift: Sequence[int]) -> None:
    """OR a (rows, cols) frame into ``dest`` (y, x) with its first pixel at column shift[0], row shift[1]."""
    di, dj = int(shift[0]), int(shift[1])
    ny, nx = dest.shape
    fr, fc = frame.shape
    r0, c0 = max(dj, 0), max(di, 0)
    r1, c1 = min(dj + fr, ny), min(di + fc, nx)
    if r1 > r0 and c1 > c0:
        dest[r0:r1, c0:c1] |= frame[r0 - dj:r1 - dj, c0 - di:c1 - di].astype(bool)
