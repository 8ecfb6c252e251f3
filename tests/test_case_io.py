"""Contract parsing, validation and restricted unpickling (inference/case_io.py)."""
import os
import pickle

import numpy as np
import pytest

from inference.case_io import CaseError, load_npz, parse_case, read_case, restricted_loads, write_segs


def _box(z0, z1, y0, y1, x0, x1):
    return {"z_min": np.int64(z0), "z_max": np.int64(z1), "z_mid": np.int64((z0 + z1) // 2),
            "z_mid_x_min": np.int64(x0), "z_mid_y_min": np.int64(y0),
            "z_mid_x_max": np.int64(x1), "z_mid_y_max": np.int64(y1)}


def _save(path, **arrays):
    np.savez_compressed(path, **{k: (np.array(v, dtype=object) if isinstance(v, list) else v)
                                 for k, v in arrays.items()})
    return path


@pytest.fixture
def image():
    return np.random.default_rng(0).integers(0, 256, (6, 10, 12), dtype=np.uint8)


def test_box_step_case(tmp_path, image):
    p = _save(tmp_path / "CT_a.npz", imgs=image, spacing=np.array([0.8, 0.8, 2.5]),
              boxes=[_box(1, 4, 2, 6, 3, 9), _box(0, 5, 0, 9, 0, 11)])
    case = read_case(p)
    assert case.num_classes == 2 and case.shape == (6, 10, 12)
    assert case.spacing_xyz == (0.8, 0.8, 2.5)
    assert case.boxes[0].lo == (1, 2, 3) and case.boxes[0].hi == (4, 6, 9)
    assert case.prev_pred is None and all(len(c) == 0 for c in case.fg_clicks)


def test_click_step_with_none_in_order_and_no_boxes(tmp_path, image):
    clicks = [{"fg": [[np.int64(1), np.int64(2), np.int64(3)]], "bg": []},
              {"fg": [[2, 2, 2], [3, 3, 3]], "bg": [[0, 0, 0]]}]
    order = [["fg", None], ["fg", "bg"]]  # None: class 1 had no error at step 3
    prev = np.zeros(image.shape, np.uint8)
    p = _save(tmp_path / "MR_b.npz", imgs=image, spacing=np.array([1.0, 1.0, 3.0]), clicks=clicks,
              clicks_order=np.array(order, dtype=object), prev_pred=prev)
    case = read_case(p)
    assert case.boxes is None and case.num_classes == 2
    assert case.fg_clicks[1].tolist() == [[2, 2, 2], [3, 3, 3]]
    assert case.clicks_order == [["fg", None], ["fg", "bg"]]
    assert case.last_click(1)[1] == "bg" and case.last_click(0)[0].tolist() == [1, 2, 3]


def test_clicks_order_as_unicode_array(tmp_path, image):
    order = np.array([["fg", "bg"]])  # np.savez turns a None-free list into '<U2'
    case = parse_case({"imgs": image, "spacing": np.ones(3), "clicks": [{"fg": [[1, 1, 1]], "bg": [[2, 2, 2]]}],
                       "clicks_order": order}, "x.npz")
    assert case.clicks_order == [["fg", "bg"]]


BAD = [
    ({"imgs": None}, "missing key 'imgs'"),
    ({"spacing": None}, "missing key 'spacing'"),
    ({"imgs": np.zeros((1, 8, 8), np.uint8)}, "2D image"),
    ({"imgs": np.zeros((0, 8, 8), np.uint8)}, "empty"),
    ({"imgs": np.zeros((8, 8), np.uint8)}, "3D"),
    ({"imgs": np.full((4, 8, 8), np.nan)}, "NaN"),
    ({"imgs": np.zeros((4, 8, 8), complex)}, "dtype"),
    ({"spacing": np.array([1.0, -1.0, 1.0])}, "spacing"),
    ({"boxes": [_box(3, 1, 0, 1, 0, 1)]}, "inverted"),
    ({"boxes": [_box(0, 1, 0, 1, 0, 99)]}, "outside the image"),
    ({"boxes": [{"z_min": 0}]}, "lacks"),
    ({"boxes": None, "clicks": [{"fg": [[0, 0, 50]], "bg": []}]}, "outside the volume"),
    ({"prev_pred": np.zeros((4, 8, 9), np.uint8)}, "prev_pred"),
    ({"boxes": [_box(0, 1, 0, 1, 0, 1)] * 256}, "at most 255"),
    ({"boxes": None}, "no class"),
    ({"clicks": [{"fg": [], "bg": []}] * 2}, "'clicks' has 2 entries"),
]


@pytest.mark.parametrize("override,message", BAD)
def test_bad_inputs_name_the_file_and_problem(override, message):
    data = {"imgs": np.zeros((4, 8, 8), np.uint8), "spacing": np.ones(3), "boxes": [_box(0, 1, 0, 1, 0, 1)]}
    data.update(override)
    data = {k: v for k, v in data.items() if v is not None}
    with pytest.raises(CaseError) as err:
        parse_case(data, "CT_bad.npz")
    assert "CT_bad.npz" in str(err.value) and message in str(err.value)


def test_truncated_npz(tmp_path, image):
    p = _save(tmp_path / "t.npz", imgs=image, spacing=np.ones(3), boxes=[_box(0, 1, 0, 1, 0, 1)])
    raw = p.read_bytes()
    p.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CaseError, match="t.npz"):
        read_case(p)


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_restricted_unpickler_rejects_code(tmp_path, image):
    p = tmp_path / "evil.npz"
    np.savez(p, imgs=image, spacing=np.ones(3), boxes=np.array([_Evil()], dtype=object))
    with pytest.raises(CaseError, match="forbidden pickled object"):
        read_case(p)
    with pytest.raises(pickle.UnpicklingError):
        restricted_loads(pickle.dumps(_Evil()))


def test_restricted_unpickler_accepts_numpy_scalars_and_containers():
    obj = [{"fg": [[np.int64(1), np.int32(2), 3]], "bg": [], "t": (1.5, "s", None, True)}, np.arange(3)]
    for protocol in (2, 3, 4, 5):
        back = restricted_loads(pickle.dumps(obj, protocol=protocol))
        assert back[0]["fg"][0][0] == 1 and back[0]["t"] == (1.5, "s", None, True)
        assert np.array_equal(back[1], np.arange(3))


def test_load_npz_matches_numpy(tmp_path, image):
    p = _save(tmp_path / "c.npz", imgs=image, spacing=np.ones(3), boxes=[_box(0, 1, 0, 1, 0, 1)])
    ours, ref = load_npz(p), np.load(p, allow_pickle=True)
    assert set(ours) == set(ref.files)
    assert np.array_equal(ours["imgs"], ref["imgs"]) and ours["boxes"][0] == ref["boxes"][0]


def test_write_segs_is_atomic_and_uint8(tmp_path):
    out = tmp_path / "o" / "case.npz"
    write_segs(out, np.ones((2, 3, 4), np.int64))
    segs = np.load(out)["segs"]
    assert segs.dtype == np.uint8 and segs.shape == (2, 3, 4)
    assert [p.name for p in out.parent.iterdir()] == ["case.npz"]
