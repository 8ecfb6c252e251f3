"""Reading, validating and repairing cases (inference/case_io.py), row by row of docs/input-policy.md.

The fuzz corpus (test_fuzz.py) checks the outcome of every row through the real process; these tests
check what each repair does to the values, the refusals' messages, the memory limits and the writer.
"""
import os
import pickle
import tracemalloc

import numpy as np
import pytest

import inference.case_io as cio
from inference.case_io import CaseError, load_npz, parse_case, read_case, restricted_loads, write_segs
from fuzz_corpus import corpus, deflate_bomb, npy_bytes, with_member


def _box(z0, z1, y0, y1, x0, x1, z_mid=None):
    return {"z_min": np.int64(z0), "z_max": np.int64(z1), "z_mid": np.int64((z0 + z1) // 2 if z_mid is None else z_mid),
            "z_mid_x_min": np.int64(x0), "z_mid_y_min": np.int64(y0),
            "z_mid_x_max": np.int64(x1), "z_mid_y_max": np.int64(y1)}


def _save(path, **arrays):
    np.savez_compressed(path, **{k: (np.array(v, dtype=object) if isinstance(v, list) else v)
                                 for k, v in arrays.items()})
    return path


@pytest.fixture
def image():
    return np.random.default_rng(0).integers(0, 256, (6, 10, 12), dtype=np.uint8)


def _parse(image, **kv):
    data = {"imgs": image, "spacing": np.ones(3), "boxes": [_box(1, 4, 2, 6, 3, 9), _box(0, 5, 0, 9, 0, 11)]}
    data.update(kv)
    return parse_case({k: v for k, v in data.items() if v is not None}, "CT_x.npz")


# --------------------------------------------------------------------------- the contract as the organizer writes it
def test_box_step_case(tmp_path, image):
    p = _save(tmp_path / "CT_a.npz", imgs=image, spacing=np.array([0.8, 0.8, 2.5]),
              boxes=[_box(1, 4, 2, 6, 3, 9), _box(0, 5, 0, 9, 0, 11)])
    case = read_case(p)
    assert case.num_classes == 2 and case.shape == (6, 10, 12) and case.warnings == []
    assert case.spacing_xyz == (0.8, 0.8, 2.5)
    assert case.boxes[0].lo == (1, 2, 3) and case.boxes[0].hi == (4, 6, 9)
    assert case.prev_pred is None and all(len(c) == 0 for c in case.fg_clicks)


def test_click_step_with_none_in_order_and_no_boxes(tmp_path, image):
    clicks = [{"fg": [[np.int64(1), np.int64(2), np.int64(3)]], "bg": []},
              {"fg": [[2, 2, 2], [3, 3, 3]], "bg": [[0, 0, 0]]}]
    order = [["fg", None], ["fg", "bg"]]  # None: class 1 had no error at step 3
    prev = np.zeros(image.shape, np.uint8)
    p = _save(tmp_path / "MR_b.npz", imgs=image, spacing=np.array([1.0, 1.0, 3.0]), clicks=clicks,
              clicks_order=np.array(order, dtype=object), prev_pred=prev, gts=prev)
    case = read_case(p)
    assert case.boxes is None and case.num_classes == 2 and case.warnings == []  # gts: ignored silently
    assert case.fg_clicks[1].tolist() == [[2, 2, 2], [3, 3, 3]]
    assert case.clicks_order == [["fg", None], ["fg", "bg"]]
    assert case.last_click(1)[1] == "bg" and case.last_click(0)[0].tolist() == [1, 2, 3]


def test_load_npz_matches_numpy_and_leaves_unknown_members_unread(tmp_path, image):
    p = _save(tmp_path / "c.npz", imgs=image, spacing=np.ones(3), boxes=[_box(0, 1, 0, 1, 0, 1)], extra=np.arange(4))
    ours, ref = load_npz(p), np.load(p, allow_pickle=True)
    assert set(ours) == set(ref.files) and ours["extra"] is cio.UNREAD
    assert np.array_equal(ours["imgs"], ref["imgs"]) and ours["boxes"][0] == ref["boxes"][0]
    assert np.array_equal(load_npz(p, keys=("imgs", "extra"))["extra"], np.arange(4))


# --------------------------------------------------------------------------- answered, with the repair checked
def test_box_repairs(image):
    case = _parse(image, boxes=[_box(4, 1, 6, 2, 3, 9),                 # inverted on z and y
                                _box(-2, 8, 0, 12, -1, 11, z_mid=9),    # clipped, z_mid outside
                                _box(20, 30, 0, 1, 0, 1),               # outside
                                {**_box(1, 2, 1, 2, 1, 2), "z_min": np.nan},
                                {"z_min": 1.4, "z_max": 2.6, "z_mid": 2.0, "z_mid_x_min": 0, "z_mid_y_min": 0,
                                 "z_mid_x_max": 3, "z_mid_y_max": 3}])
    b = case.boxes
    assert (b[0].lo, b[0].hi) == ((1, 2, 3), (4, 6, 9))
    assert (b[1].lo, b[1].hi, b[1].z_mid) == ((0, 0, 0), (5, 9, 11), 5)
    assert b[2] is None and b[3] is None
    assert (b[4].lo[0], b[4].hi[0]) == (1, 3)
    text = " | ".join(case.warnings)
    for fragment in ("corners swapped", "clipped", "lies outside the image", "set to 5", "non-numeric", "rounded",
                     "class 3 has no usable prompt left: it is left empty"):
        assert fragment in text


def test_box_forms(image):
    one = np.empty((), dtype=object)
    one[()] = _box(1, 4, 2, 6, 3, 9)
    for boxes in (one, _box(1, 4, 2, 6, 3, 9), [{k: np.array([v]) for k, v in _box(1, 4, 2, 6, 3, 9).items()}]):
        case = _parse(image, boxes=boxes)
        assert case.num_classes == 1 and case.boxes[0].hi == (4, 6, 9) and case.warnings == []


def test_click_repairs(image):
    clicks = [{"fg": [[1, 2, 3], [-1, 2, 3], [6, 0, 0], [1, 2], [1, np.nan, 1], [1, 2, 3]], "bg": [2.4, 3.0, 4.6]},
              {"fg": [], "bg": None}, None]
    case = _parse(image, boxes=None, clicks=clicks)
    assert case.num_classes == 3
    assert case.fg_clicks[0].tolist() == [[1, 2, 3], [1, 2, 3]]  # outside and malformed dropped, duplicate kept
    assert case.bg_clicks[0].tolist() == [[2, 3, 5]]  # a flat click, rounded
    assert len(case.fg_clicks[1]) == len(case.bg_clicks[2]) == 0
    text = " | ".join(case.warnings)
    assert "2 click(s) outside the volume" in text and "not three finite numbers" in text and "flat" in text


def test_mismatched_boxes_and_clicks_use_the_longer_list(image):
    case = _parse(image, clicks=[{"fg": [[1, 1, 1]]}, {"fg": []}, {"fg": [[2, 2, 2]]}])
    assert case.num_classes == 3 and case.boxes[2] is None and case.fg_clicks[2].tolist() == [[2, 2, 2]]
    assert "'boxes' has 2 entries and 'clicks' 3" in case.warnings[0]


@pytest.mark.parametrize("order,expected", [
    (np.array([["fg", "bg"], ["bg", "fg"]]), [["fg", "bg"], ["bg", "fg"]]),
    (np.array([[b"fg"], [b"bg"]]), [["fg"], ["bg"]]),
    (np.zeros((2, 0)), [[], []]),
    ([["fg", None], ["None", "bg"]], [["fg", None], [None, "bg"]]),
])
def test_clicks_order_forms(image, order, expected):
    assert _parse(image, clicks_order=order).clicks_order == expected


def test_clicks_order_that_does_not_fit_is_ignored(image):
    case = _parse(image, clicks_order=[["fg"], ["bg"], ["fg"]])
    assert case.clicks_order == [[], []] and "ignored" in case.warnings[0]


def test_image_rescaled_thin_and_bool(image):
    ct = image.astype(np.int16) * 16 - 1024
    case = _parse(ct)
    assert case.image.dtype == np.float32 and case.image.min() == 0 and case.image.max() == 255
    assert np.allclose(case.image, (ct - ct.min()) * 255.0 / (ct.max() - ct.min()), atol=1e-3)
    kept = _parse(image.astype(np.uint16))
    assert kept.image.dtype == np.uint16 and kept.warnings == []  # inside [0, 255]: used as is
    thin = _parse(image[:1], boxes=[_box(0, 0, 0, 9, 0, 11)])
    assert thin.shape == (1, 10, 12) and "thin 3D volume" in thin.warnings[0]
    assert _parse(image > 128).image.dtype == np.uint8


def test_spacing_forms_and_defaults(image):
    tup = np.empty((), dtype=object)
    tup[()] = (0.8, 0.8, 2.5)
    for sp in ([0.8, 0.8, 2.5], tup, np.array([[0.8, 0.8, 2.5]]), np.array([0.8, 0.8, 2.5], dtype=object)):
        case = _parse(image, spacing=sp)
        assert case.spacing_xyz == (0.8, 0.8, 2.5) and case.warnings == []
    for sp in (None, [1.0, -1.0, 1.0], "x"):
        case = _parse(image, spacing=sp)
        assert case.spacing_xyz == (1.0, 1.0, 1.0) and "1 mm isotropic" in case.warnings[0]


def test_prev_pred_repairs(image):
    prev = np.zeros(image.shape, np.int16)
    prev[0, 0, :4] = [1, 2, 7, -3]
    case = _parse(image, prev_pred=prev)
    assert case.prev_pred.dtype == np.uint8 and case.prev_pred[0, 0, :4].tolist() == [1, 2, 0, 0]
    assert "2 voxel(s) with labels outside 0..2" in case.warnings[0]
    assert _parse(image, prev_pred=prev[:, :5]).prev_pred is None
    assert _parse(image, prev_pred=prev.astype(np.float32) + 0.5).prev_pred is None
    assert _parse(image, prev_pred=np.where(prev > 0, prev, 0).astype(np.float64)).prev_pred.dtype == np.uint8


def test_unknown_keys_warn_gts_does_not(image):
    assert "ignored unknown key(s) ['extra']" in _parse(image, extra=np.zeros(3)).warnings
    assert _parse(image, gts=np.zeros(image.shape)).warnings == []


def test_a_class_without_prompt_keeps_its_previous_mask(image):
    prev = np.zeros(image.shape, np.uint8)
    prev[1:3, 1:3, 1:3] = 1
    case = _parse(image, boxes=None, clicks=[{"fg": [[50, 0, 0]]}, {"fg": [[2, 2, 2]]}], prev_pred=prev)
    assert len(case.fg_clicks[0]) == 0 and "class 1 has no usable prompt left: it keeps its previous mask" in case.warnings


# --------------------------------------------------------------------------- refused, with the message checked
BAD = [
    ({"imgs": None}, "missing key 'imgs'"),
    ({"imgs": np.zeros((8, 8), np.uint8)}, "3D"),
    ({"imgs": np.zeros((0, 8, 8), np.uint8)}, "empty"),
    ({"imgs": np.full((4, 8, 8), np.nan)}, "NaN"),
    ({"imgs": np.zeros((4, 8, 8), complex)}, "dtype"),
    ({"imgs": np.zeros((4, 8, 8), "<U2")}, "dtype"),
    ({"boxes": [_box(0, 1, 0, 1, 0, 1)] * 256}, "at most 255"),
    ({"boxes": None}, "no class to segment"),
    ({"boxes": []}, "zero classes"),
    ({"boxes": [_box(10, 12, 0, 1, 0, 1)]}, "no class has a usable prompt"),
]


@pytest.mark.parametrize("override,message", BAD)
def test_refusals_name_the_file_and_problem(override, message):
    data = {"imgs": np.zeros((4, 8, 8), np.uint8), "spacing": np.ones(3), "boxes": [_box(0, 1, 0, 1, 0, 1)]}
    data.update(override)
    data = {k: v for k, v in data.items() if v is not None}
    with pytest.raises(CaseError) as err:
        parse_case(data, "CT_bad.npz")
    assert str(err.value).startswith("CT_bad.npz: ") and message in str(err.value)


def test_truncated_npz(tmp_path, image):
    p = _save(tmp_path / "t.npz", imgs=image, spacing=np.ones(3), boxes=[_box(0, 1, 0, 1, 0, 1)])
    raw = p.read_bytes()
    p.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CaseError, match="t.npz: not a readable npz"):
        read_case(p)


def test_garbage_npy_header_is_named(tmp_path):
    p = tmp_path / "g.npz"
    with_member("box", "imgs", npy_bytes(b"{'descr': '|u1', 'shape': (6, 20, ", b"\0" * 100))(p)
    with pytest.raises(CaseError, match=r"g.npz: member 'imgs' has an unreadable npy header \(TokenError"):
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
    obj = [{"fg": [[np.int64(1), np.int32(2), 3]], "bg": [], "t": (1.5, "s", None, True, b"by"),
            "s": {1, 2}, "f": frozenset([3]), "c": 1 + 2j, "b": bytearray(b"x")}, np.arange(3)]
    for protocol in range(6):
        back = restricted_loads(pickle.dumps(obj, protocol=protocol))
        assert back[0]["fg"][0][0] == 1 and back[0]["t"] == (1.5, "s", None, True, b"by") and back[0]["s"] == {1, 2}
        assert np.array_equal(back[1], np.arange(3))


def test_pickled_members_are_bounded(tmp_path, image, monkeypatch):
    p = _save(tmp_path / "p.npz", imgs=image, spacing=np.ones(3), boxes=[_box(0, 1, 0, 1, 0, c) for c in range(50)])
    monkeypatch.setattr(cio, "MAX_PICKLE_BYTES", 1000)
    with pytest.raises(CaseError, match="rejected pickled content.*pickled member 'boxes' is"):
        read_case(p)
    with pytest.raises(pickle.UnpicklingError, match="nested deeper"):
        deep: list = []
        for _ in range(40):
            deep = [deep]
        restricted_loads(pickle.dumps(deep))


# --------------------------------------------------------------------------- memory safety
def test_declared_sizes_are_checked_against_the_memory_limit(tmp_path, image):
    p = _save(tmp_path / "m.npz", imgs=image, spacing=np.ones(3), boxes=[_box(0, 1, 0, 1, 0, 1)])
    need = image.size * (cio.WORK_BYTES_PER_VOXEL + 1)
    assert read_case(p, memory_limit=need + 10_000).num_classes == 1
    with pytest.raises(CaseError, match=r"too large: 'imgs' declares \(6, 10, 12\) uint8: segmenting it needs about"):
        read_case(p, memory_limit=need - 1)
    assert 0 < cio.available_memory() < 1 << 50


def test_deflate_bombs_are_refused_without_inflating(tmp_path):
    for kind, message in (("declared", "too large: member 'imgs' declares 34,359,738,368 bytes"),
                          ("hidden", "refused unread"), ("lying", "Bad CRC-32")):
        p = tmp_path / f"{kind}.npz"
        deflate_bomb(kind)(p)
        tracemalloc.start()
        with pytest.raises(CaseError, match=message):
            read_case(p, memory_limit=8 << 30)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak < 32 << 20, f"{kind}: {peak:,} bytes allocated"


def test_the_fuzz_corpus_through_read_case(tmp_path):
    """Every corpus case's outcome, read in this process (test_fuzz.py runs them through the real process)."""
    markers = tmp_path / "markers"
    markers.mkdir()
    problems = []
    for c in corpus(markers):
        path = c.write(tmp_path)
        try:
            case = read_case(path)
        except CaseError as err:
            if c.expect != "refuse" or not str(err).startswith(c.name + ": ") or c.message not in str(err):
                problems.append(f"{c.name}: refused ({err})")
            continue
        text = " | ".join(case.warnings)
        if c.expect != "answer" or case.shape != tuple(c.shape) or case.num_classes != c.classes \
                or bool(case.warnings) != c.warns or c.message not in text:
            problems.append(f"{c.name}: answered {case.shape} k={case.num_classes} warnings {case.warnings}")
    assert not problems, "\n".join(problems)
    assert list(markers.iterdir()) == []


# --------------------------------------------------------------------------- output
def test_write_segs_is_atomic_and_uint8(tmp_path):
    out = tmp_path / "o" / "case.npz"
    write_segs(out, np.ones((2, 3, 4), np.int64))
    segs = np.load(out)["segs"]
    assert segs.dtype == np.uint8 and segs.shape == (2, 3, 4)
    assert [p.name for p in out.parent.iterdir()] == ["case.npz"]


def test_write_segs_with_a_name_of_250_bytes(tmp_path):
    out = tmp_path / ("L" * 246 + ".npz")
    write_segs(out, np.zeros((2, 2, 2), np.uint8))
    assert [p.name for p in tmp_path.iterdir()] == [out.name]
    assert len(cio.temp_name()) < 40
