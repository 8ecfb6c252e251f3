"""Tests for the data sources (training.sources, training.dicom_rt, training.prepare_data) on synthetic files.

No test reads the real data: every DICOM series, RTSTRUCT, SEG and label map is written here.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import pack_bits
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from training import convert as cv  # noqa: E402
from training import dicom_rt  # noqa: E402
from training import prepare_data as pdata  # noqa: E402
from training import sources as src  # noqa: E402

# Series geometry: (x, y, z) spacing and origin in mm, identity orientation; arrays (z, y, x).
NX, NY, NZ = 16, 12, 4
SPACING = (1.5, 1.0, 2.5)
ORIGIN = (-10.0, 20.0, 100.0)
MR_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
SEG_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
RT_STORAGE = "1.2.840.10008.5.1.4.1.1.481.3"


def _file_ds(sop_class: str) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
    return ds


def write_series(folder: Path) -> tuple[np.ndarray, list[str]]:
    """A small MR series written with pydicom; returns the pixel array (z, y, x) and the SOP instance UIDs."""
    folder.mkdir(parents=True)
    study, series = generate_uid(), generate_uid()
    arr = (np.arange(NZ * NY * NX).reshape(NZ, NY, NX) % 251).astype(np.uint16)
    uids = []
    for k in range(NZ):
        ds = _file_ds(MR_STORAGE)
        ds.Modality, ds.StudyInstanceUID, ds.SeriesInstanceUID = "MR", study, series
        ds.PatientID, ds.InstanceNumber = "SYNTH", k + 1
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [ORIGIN[0], ORIGIN[1], ORIGIN[2] + k * SPACING[2]]
        ds.PixelSpacing = [SPACING[1], SPACING[0]]  # DICOM: (between rows = y, between columns = x)
        ds.SliceThickness = SPACING[2]
        ds.Rows, ds.Columns = NY, NX
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.PixelData = arr[k].tobytes()
        ds.save_as(folder / f"{k:03d}.dcm", enforce_file_format=True)
        uids.append(ds.SOPInstanceUID)
    return arr, uids


def _square(i0: float, i1: float, j0: float, j1: float, k: int) -> list[float]:
    """Closed polygon (patient mm, flattened x, y, z) of the index rectangle [i0, i1] x [j0, j1] on slice k."""
    pts = [(i0, j0), (i1, j0), (i1, j1), (i0, j1)]
    return [v for i, j in pts for v in (ORIGIN[0] + i * SPACING[0], ORIGIN[1] + j * SPACING[1],
                                         ORIGIN[2] + k * SPACING[2])]


def write_rtstruct(path: Path, rois: dict[str, list[list[float]]]) -> None:
    ds = _file_ds(RT_STORAGE)
    ds.Modality = "RTSTRUCT"
    ds.StructureSetROISequence, ds.ROIContourSequence = [], []
    for n, (name, contours) in enumerate(rois.items(), start=1):
        roi = Dataset()
        roi.ROINumber, roi.ROIName = n, name
        ds.StructureSetROISequence.append(roi)
        rc = Dataset()
        rc.ReferencedROINumber = n
        rc.ContourSequence = []
        for data in contours:
            c = Dataset()
            c.ContourGeometricType, c.NumberOfContourPoints, c.ContourData = "CLOSED_PLANAR", len(data) // 3, data
            rc.ContourSequence.append(c)
        ds.ROIContourSequence.append(rc)
    ds.save_as(path, enforce_file_format=True)


# ------------------------------------------------------------------------------------ RTSTRUCT
def test_rtstruct_even_odd_hole_and_big_first(tmp_path: Path) -> None:
    _, _ = write_series(tmp_path / "series")
    image = cv.read_image(tmp_path / "series")  # SimpleITK reads the pydicom series
    assert image.GetSize() == (NX, NY, NZ)
    rt = tmp_path / "rt.dcm"
    # "Big": on slice 1 an outer ring 2..13 x 1..10 with a hole 5..9 x 4..7 (nested contour); on slice 2 a square.
    # "Small" (listed first, painted last because it is smaller) overlaps Big on slice 1 at 11..13 x 8..10.
    write_rtstruct(rt, {
        "Small": [_square(10.5, 13.5, 7.5, 10.5, 1)],
        "Big": [_square(1.5, 13.5, 0.5, 10.5, 1), _square(4.5, 9.5, 3.5, 7.5, 1), _square(2.5, 6.5, 2.5, 6.5, 2)],
    })
    labels, names, counts = dicom_rt.rtstruct_labels(rt, image)
    lab = sitk.GetArrayFromImage(labels)  # (z, y, x)
    assert names == {1: "Small", 2: "Big"}
    expect = np.zeros((NZ, NY, NX), np.uint8)
    expect[1, 1:11, 2:14] = 2
    expect[1, 4:8, 5:10] = 0      # the hole stays empty (even-odd)
    expect[1, 8:11, 11:14] = 1    # the smaller ROI keeps the shared voxels
    expect[2, 3:7, 3:7] = 2
    np.testing.assert_array_equal(lab, expect)
    assert counts == {"Small": 9, "Big": 12 * 10 - 5 * 4 + 16}
    assert labels.GetSpacing() == pytest.approx(SPACING) and labels.GetOrigin() == pytest.approx(ORIGIN)


def test_rtstruct_contour_off_plane_is_refused(tmp_path: Path) -> None:
    image = src.image_from_array(np.zeros((NZ, NY, NX), np.int16), SPACING)
    image.SetOrigin(ORIGIN)
    bad = np.asarray(_square(1.5, 5.5, 1.5, 5.5, 1), dtype=float).reshape(-1, 3)
    bad[0, 2] += 0.5 * SPACING[2]  # half a slice off its plane
    with pytest.raises(cv.ConversionError, match="slice plane"):
        dicom_rt.rasterise_contours([bad], image, "ROI x")


# ------------------------------------------------------------------------------------ SEG
def write_seg(path: Path, frames: np.ndarray, positions: list[tuple[float, float, float]], segments: list[int],
              names: dict[int, str]) -> None:
    """A BINARY DICOM SEG (1 bit, packed) with one plane position and segment number per frame."""
    ds = _file_ds(SEG_STORAGE)
    ds.Modality, ds.SegmentationType = "SEG", "BINARY"
    ds.Rows, ds.Columns, ds.NumberOfFrames = frames.shape[1], frames.shape[2], len(frames)
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 1, 1, 0, 0
    ds.PixelData = pack_bits(frames.astype(np.uint8))
    ds.SegmentSequence = []
    for n, name in names.items():
        s = Dataset()
        s.SegmentNumber, s.SegmentLabel = n, name
        ds.SegmentSequence.append(s)
    shared = Dataset()
    po, pm = Dataset(), Dataset()
    po.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    pm.PixelSpacing, pm.SliceThickness = [SPACING[1], SPACING[0]], SPACING[2]
    shared.PlaneOrientationSequence, shared.PixelMeasuresSequence = [po], [pm]
    ds.SharedFunctionalGroupsSequence = [shared]
    ds.PerFrameFunctionalGroupsSequence = []
    for pos, seg in zip(positions, segments):
        fg, pp, si = Dataset(), Dataset(), Dataset()
        pp.ImagePositionPatient = list(pos)
        si.ReferencedSegmentNumber = seg
        fg.PlanePositionSequence, fg.SegmentIdentificationSequence = [pp], [si]
        ds.PerFrameFunctionalGroupsSequence.append(fg)
    ds.save_as(path, enforce_file_format=True)


def test_seg_frames_map_to_slices_by_position(tmp_path: Path) -> None:
    image = src.image_from_array(np.zeros((NZ, NY, NX), np.int16), SPACING)
    image.SetOrigin(ORIGIN)
    frames = np.zeros((3, NY, NX), bool)
    frames[0, 2:5, 3:6] = True   # segment 1 on slice 3 (listed first: frames are not in slice order)
    frames[1, 0:2, 0:4] = True   # segment 1 on slice 0, frame shifted by (+2 columns, +1 row)
    frames[2, 6:9, 8:12] = True  # segment 2 on slice 1
    pos = [(ORIGIN[0], ORIGIN[1], ORIGIN[2] + 3 * SPACING[2]),
           (ORIGIN[0] + 2 * SPACING[0], ORIGIN[1] + 1 * SPACING[1], ORIGIN[2]),
           (ORIGIN[0], ORIGIN[1], ORIGIN[2] + 1 * SPACING[2])]
    seg = tmp_path / "seg.dcm"
    write_seg(seg, frames, pos, [1, 1, 2], {1: "Breast", 2: "Other"})
    labels, names, counts = dicom_rt.seg_labels(seg, image)
    lab = sitk.GetArrayFromImage(labels)
    expect = np.zeros((NZ, NY, NX), np.uint8)
    expect[3, 2:5, 3:6] = 1
    expect[0, 1:3, 2:6] = 1
    expect[1, 6:9, 8:12] = 2
    np.testing.assert_array_equal(lab, expect)
    assert names == {1: "Breast", 2: "Other"} and counts == {"Breast": 17, "Other": 12}


def test_frames_to_slices_oblique_grid() -> None:
    image = sitk.Image(8, 8, 5, sitk.sitkUInt8)
    c, s = np.cos(0.3), np.sin(0.3)
    direction = np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])  # columns = axis directions
    image.SetDirection(direction.ravel().tolist())
    image.SetSpacing((0.7, 0.7, 2.0))
    image.SetOrigin((5.0, -3.0, 40.0))
    idx = [(0, 0, 4), (3, 1, 0), (1, 2, 2)]
    pts = np.array([image.TransformIndexToPhysicalPoint(i) for i in idx])
    k, shift = dicom_rt.frames_to_slices(pts, image)
    assert k.tolist() == [4, 0, 2] and shift.tolist() == [[0, 0], [3, 1], [1, 2]]
    with pytest.raises(cv.ConversionError):
        dicom_rt.frames_to_slices(pts + direction[:, 2] * 1.0, image)  # half a slice off


# ------------------------------------------------------------------------------------ label helpers
def test_lesion_instances_26_connectivity() -> None:
    m = np.zeros((6, 6, 6), np.uint8)
    m[0, 0, 0] = m[1, 1, 1] = 1  # corner neighbours: one lesion under 26-connectivity
    m[4:6, 4:6, 4:6] = 1         # a second lesion
    m[0, 5, 5] = 1               # a third, single voxel
    lab, names = src.lesion_instances(m)
    assert lab.max() == 3 and names == {1: "lesion_1", 2: "lesion_2", 3: "lesion_3"}
    assert lab[0, 0, 0] == lab[1, 1, 1] != 0
    assert len({lab[0, 0, 0], lab[4, 4, 4], lab[0, 5, 5]}) == 3 and (lab > 0).sum() == m.sum()


def test_merge_onto_reference_grid_smaller_on_top(tmp_path: Path) -> None:
    ref = src.image_from_array(np.zeros((6, 10, 10), np.int16), (1.5, 1.5, 1.5))
    ref.SetOrigin((-20.0, 5.0, 3.0))
    big = np.zeros((6, 10, 10), np.uint8)
    big[1:5, 2:8, 2:8] = 1
    bp, sp = tmp_path / "big.nii.gz", tmp_path / "small.nii.gz"
    sitk.WriteImage(src.labels_like(big, ref), str(bp))
    crop = sitk.GetImageFromArray(np.ones((2, 3, 3), np.uint8))  # a crop with an offset origin (3, 4, 2 voxels)
    crop.SetSpacing((1.5, 1.5, 1.5))
    crop.SetOrigin(ref.TransformIndexToPhysicalPoint((3, 4, 2)))
    sitk.WriteImage(crop, str(sp))
    ref_path = tmp_path / "ref.nii.gz"
    sitk.WriteImage(ref, str(ref_path))
    loaded = src.merged_onto(ref_path, [("big", bp), ("small", sp)])()
    lab = sitk.GetArrayFromImage(loaded.labels)
    assert loaded.names == {1: "big", 2: "small"}
    assert (lab == 2).sum() == 18 and np.all(lab[2:4, 4:7, 3:6] == 2)
    assert (lab == 1).sum() == big.sum() - 18
    assert loaded.notes["voxels_per_structure_before_merge"] == {"big": int(big.sum()), "small": 18}


def test_tissue_map_threshold() -> None:
    gm = np.array([0.9, 0.3, 0.2, 0.5])
    wm = np.array([0.1, 0.6, 0.3, 0.4])
    assert src.tissue_map([gm, wm]).tolist() == [1, 2, 0, 1]


def test_shrink_labelmap_crops_then_coarsens() -> None:
    arr = np.zeros((10, 40, 40), np.uint8)
    arr[2:8, 10:30, 12:32] = 3
    img = src.image_from_array(arr, (1.0, 1.0, 2.5))
    same, done = cv.shrink_labelmap(img, 10 * 40 * 40)
    assert same is img and done == {}
    cropped, done = cv.shrink_labelmap(img, 10 * 30 * 30, margin_voxels=2)
    assert cropped.GetSize() == (24, 24, 10) and "inplane_factor" not in done
    np.testing.assert_array_equal(sitk.GetArrayFromImage(cropped)[2:8, 2:22, 2:22], 3)
    small, done = cv.shrink_labelmap(img, 1000, margin_voxels=2)
    assert np.prod(small.GetSize()) <= 1000 and done["inplane_factor"] > 1 and small.GetSpacing()[2] == 2.5


# ------------------------------------------------------------------------------------ outputs
def _job(split: str, name: str, load, inputs: tuple[Path, ...]) -> src.Job:
    return src.Job(split, name, inputs, load, "synthetic source", "CC0 test licence", "written by the test")


def test_labelmap_only_output_and_sidecar(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    arr = np.zeros((4, 30, 30), np.int32)
    arr[1:3, 5:10, 5:10] = 502
    arr[1:3, 12:20, 5:10] = 7
    lp = tmp_path / "lab.nii.gz"
    sitk.WriteImage(src.image_from_array(arr, (0.9, 0.9, 2.5)), str(lp))
    monkeypatch.setattr(pdata, "MAX_LABELMAP_VOXELS", 2000)
    job = _job("labelmaps", "MR_Synth_case1", src.file_pair_labels(lp, {7: "cerebellum", 502: "extra"}), (lp,))
    npz = pdata.run_job(job, tmp_path / "labelmaps")
    with np.load(npz) as d:
        assert sorted(d.files) == ["gts", "spacing"]
        gts = d["gts"]
        assert gts.dtype == np.uint8 and gts.ndim == 3 and set(np.unique(gts)) == {0, 1, 2}
        assert np.prod(gts.shape) <= 2000  # cropped to the labels (+ margin) to fit
    side = json.loads(cv.sidecar_path(npz).read_text())
    assert side["labels"] == {"1": "cerebellum", "2": "extra"} and side["original_ids"] == {"1": 7, "2": 502}
    assert side["license"] == "CC0 test licence" and side["labels_by"] == "written by the test"
    assert side["role"] == src.ROLES["labelmaps"] and "no image" in side["role"]
    assert side["modality"] == "MR" and "reduced_to_fit_voxels" in side
    info = pdata.describe(npz)
    assert info["n_labels"] == 2 and info["keys"] == ["gts", "spacing"] and info["license"] == "CC0 test licence"
    # re-run: up to date, file untouched
    mtime = npz.stat().st_mtime_ns
    pdata.run_job(job, tmp_path / "labelmaps")
    assert npz.stat().st_mtime_ns == mtime


def test_train_and_image_only_outputs_record_role(tmp_path: Path) -> None:
    img = src.image_from_array(np.linspace(-100, 200, 4 * 5 * 6).reshape(4, 5, 6), (1.0, 1.0, 1.0))
    ip = tmp_path / "img.nii.gz"
    sitk.WriteImage(img, str(ip))
    lab = np.zeros((4, 5, 6), np.uint8)
    lab[1, 1:3, 1:3] = 4
    lpath = tmp_path / "lab.nii.gz"
    sitk.WriteImage(src.labels_like(lab, img), str(lpath))
    held = pdata.run_job(_job("heldout", "CT_Synth_held", src.file_pair(ip, lpath, {4: "x"}), (ip, lpath)),
                         tmp_path / "heldout")
    only = src.Job("images", "CT_Synth_head", (ip,), src.file_pair(ip, None), "s", "L", "no labels", window="brain")
    imgs = pdata.run_job(only, tmp_path / "images")
    with np.load(held) as d:
        assert sorted(d.files) == ["gts", "imgs", "spacing"]
    with np.load(imgs) as d:
        assert sorted(d.files) == ["imgs", "spacing"]
        np.testing.assert_array_equal(d["imgs"], cv.window_ct(sitk.GetArrayFromImage(img), 80, 40))
    side = json.loads(cv.sidecar_path(held).read_text())
    assert side["role"].startswith("held-out") and "never train" in side["role"] and side["license"] == "CC0 test licence"
    assert json.loads(cv.sidecar_path(imgs).read_text())["window"] == "brain"


def test_missing_shared_sources_are_skipped_with_one_line_each(tmp_path: Path) -> None:
    jobs, skipped = pdata.collect_jobs({}, tmp_path)
    assert jobs == [] and len(skipped) == len(src.SHARED_SOURCES)
    assert all("not found" in s or "no " in s for s in skipped)
    jobs, skipped = pdata.collect_jobs({}, None)
    assert jobs == [] and len(skipped) == 1 and "EXTRA_DATA" in skipped[0]


def test_open_ms_source_splits_lesions_and_holds_out_patient19(tmp_path: Path) -> None:
    for patient in ("patient07", "patient19"):
        d = tmp_path / src.OPEN_MS_DIR / patient
        d.mkdir(parents=True)
        mask = np.zeros((8, 8, 8), np.uint8)
        mask[1:3, 1:3, 1:3] = 1
        mask[5:7, 5:7, 5:7] = 1
        ref = src.image_from_array(np.random.default_rng(0).normal(size=(8, 8, 8)), (1.0, 1.0, 1.0))
        sitk.WriteImage(src.labels_like(mask, ref), str(d / src.OPEN_MS_MASK))
        for c in ("FLAIR", "T1", "T1POST", "T2"):
            sitk.WriteImage(ref, str(d / src.OPEN_MS_IMAGE.format(c=c)))
    jobs, skipped = pdata.collect_jobs({}, tmp_path)
    assert sorted((j.split, j.name) for j in jobs) == [
        ("heldout", "MR_OpenMS_patient19"), ("train", "MR_OpenMS_patient07-FLAIR"), ("train", "MR_OpenMS_patient07-T1"),
        ("train", "MR_OpenMS_patient07-T1POST"), ("train", "MR_OpenMS_patient07-T2")]
    assert len(skipped) == len(src.SHARED_SOURCES) - 1
    npz = pdata.run_job(next(j for j in jobs if j.split == "heldout"), tmp_path / "out" / "heldout")
    with np.load(npz) as d:
        assert d["gts"].max() == 2
    side = json.loads(cv.sidecar_path(npz).read_text())
    assert side["lesion_components"] == 2 and side["labels"] == {"1": "lesion_1", "2": "lesion_2"}


def test_held_out_inputs_cannot_feed_training(tmp_path: Path) -> None:
    p = tmp_path / "a.nii.gz"
    p.write_bytes(b"x")
    load = src.file_pair(p, None)
    with pytest.raises(cv.ConversionError, match="held-out"):
        src.check_no_overlap([_job("heldout", "CT_A_a", load, (p,)), _job("train", "CT_A_b", load, (p,))])


def test_reserved_members_never_requested() -> None:
    members = [m for pkg in pdata.PACKAGES for m in pkg.members]
    assert not any("example_ct_dicom" in m or "example_seg_dicom" in m for m in members)
    deb = next(p for p in pdata.PACKAGES if p.kind == "deb")
    assert sorted(Path(m).name for m in deb.members) == ["inia19-NeuroMaps.nii.gz", "inia19-t1-brain.nii.gz"]


def test_tcia_per_organ_masks_are_merged_like_the_shared_maps(tmp_path: Path) -> None:
    case = tmp_path / "tcia-ct-scan-dataset/nrrds/test/oncologist/caseA"
    case.mkdir(parents=True)
    ref = src.image_from_array(np.zeros((5, 8, 8), np.uint8), (1.0, 1.0, 2.5))
    canal = np.zeros((5, 8, 8), np.uint8)
    canal[:, 2:6, 2:6] = 1
    cord = np.zeros((5, 8, 8), np.uint8)
    cord[:, 3:5, 3:5] = 1
    sitk.WriteImage(src.labels_like(canal, ref), str(case / "Spinal_Canal.nrrd"))  # '_' spelling of the source
    sitk.WriteImage(src.labels_like(cord, ref), str(case / "Spinal-Cord.nrrd"))
    job, = src.tcia_jobs(tmp_path)
    loaded = job.load()
    lab = sitk.GetArrayFromImage(loaded.labels)
    assert loaded.names == {18: "Spinal-Canal", 19: "Spinal-Cord"}  # the fixed organ ids
    assert set(np.unique(lab)) == {0, 18, 19} and np.all(lab[cord > 0] == 19)
    assert (lab == 18).sum() == canal.sum() - cord.sum()
