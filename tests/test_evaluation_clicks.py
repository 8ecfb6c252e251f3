"""Known-answer tests of the organizer click rule (evaluation.clicks)."""

import numpy as np
import pytest
from scipy import ndimage

from evaluation import clicks
from evaluation.clicks import (add_click, error_component_at, new_click_state, seeded_choice, simulate_click,
                               simulate_clicks)


def cube(shape, lo, size):
    mask = np.zeros(shape, dtype=bool)
    mask[lo[0] : lo[0] + size[0], lo[1] : lo[1] + size[1], lo[2] : lo[2] + size[2]] = True
    return mask


# ---------------------------------------------------------------------------------------------
# an independent, literal replica of the organizer's procedure (scipy EDT, full volume), used
# as the oracle for randomised cases
# ---------------------------------------------------------------------------------------------
def organizer_click(pred, gt, threshold=60_000_000):
    import cc3d

    error = (pred.astype(np.uint8) != gt.astype(np.uint8)).astype(np.uint8)
    if error.sum() == 0:
        return None
    components = cc3d.connected_components(error, connectivity=26)
    sizes = np.bincount(components.flat)
    sizes[0] = 0
    component = components == np.argmax(sizes)
    coords = np.argwhere(component)
    lo, hi = coords.min(0), coords.max(0) + 1
    crop = hi - lo
    pad = np.maximum((crop * 0.25).astype(int), 1)
    padded = np.zeros(crop + 2 * pad, dtype=np.uint8)
    padded[pad[0] : pad[0] + crop[0], pad[1] : pad[1] + crop[1], pad[2] : pad[2] + crop[2]] = component[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
    pooled = padded.size > threshold
    if pooled:
        even = [(s + 1) // 2 * 2 for s in padded.shape]
        grown = np.zeros(even, dtype=np.uint8)
        grown[: padded.shape[0], : padded.shape[1], : padded.shape[2]] = padded
        padded = grown.reshape(even[0] // 2, 2, even[1] // 2, 2, even[2] // 2, 2).max(axis=(1, 3, 5))
    dist = ndimage.distance_transform_edt(padded)
    if pooled:
        dist = dist.repeat(2, 0).repeat(2, 1).repeat(2, 2)
    full = np.zeros(component.shape)
    full[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] = dist[pad[0] : pad[0] + crop[0], pad[1] : pad[1] + crop[1], pad[2] : pad[2] + crop[2]]
    full *= component
    if full.sum() == 0:
        full = component
    state = np.random.get_state()
    np.random.seed(42)
    candidates = np.argwhere(full == full.max())
    centre = tuple(int(v) for v in candidates[np.random.choice(len(candidates))])
    np.random.set_state(state)
    return centre, ("bg" if gt[centre] == 0 else "fg")


# ---------------------------------------------------------------------------------------------
def test_seeded_choice_matches_global_reseeding_and_leaves_rng_alone():
    state = np.random.get_state()
    np.random.seed(123)
    before = np.random.random()
    np.random.seed(123)
    for n in (1, 2, 3, 7, 8, 64, 1000):
        assert seeded_choice(n) == int(np.random.RandomState(42).choice(n))
    saved = np.random.get_state()
    np.random.seed(42)
    expected = np.random.choice(8)
    np.random.set_state(saved)
    assert seeded_choice(8) == expected == 6
    assert np.random.random() == before  # simulate_click's pick does not touch the global RNG
    np.random.set_state(state)


def test_no_error_gives_none():
    gt = cube((8, 8, 8), (2, 2, 2), (3, 3, 3))
    assert simulate_click(gt.copy(), gt) is None
    assert simulate_click(np.zeros((4, 4, 4), bool), np.zeros((4, 4, 4), bool)) is None


def test_missed_object_gets_fg_click_at_its_centre():
    gt = cube((17, 17, 17), (5, 5, 5), (7, 7, 7))
    assert simulate_click(np.zeros_like(gt), gt) == ((8, 8, 8), "fg")


def test_spurious_prediction_gets_bg_click():
    pred = cube((17, 17, 17), (5, 5, 5), (7, 7, 7))
    assert simulate_click(pred, np.zeros_like(pred)) == ((8, 8, 8), "bg")


def test_error_component_at_the_click():
    gt = cube((17, 17, 17), (1, 1, 1), (5, 5, 5))
    pred = cube((17, 17, 17), (10, 10, 10), (4, 4, 4))  # a false-positive blob apart from the missed object
    coord, kind = simulate_click(pred, gt)
    assert kind == "fg"  # the missed object is the larger error
    assert np.array_equal(error_component_at(pred, gt, coord), gt)
    assert np.array_equal(error_component_at(pred, gt, (11, 11, 11)), pred)
    assert not error_component_at(pred, gt, (0, 16, 0)).any()  # no error there


def test_ties_take_seed_42_choice_over_c_ordered_maxima():
    # a 2x2x2 error: all 8 voxels have EDT 1; choice(8) under seed 42 is 6 -> (1, 1, 0) in C order
    gt = cube((10, 10, 10), (3, 4, 5), (2, 2, 2))
    assert simulate_click(np.zeros_like(gt), gt) == ((4, 5, 5), "fg")
    # a 4-voxel line along x: choice(4) = 2 -> the third voxel
    line = np.zeros((5, 5, 8), bool)
    line[2, 3, 1:5] = True
    assert simulate_click(np.zeros_like(line), line) == ((2, 3, 3), "fg")
    # even cube 4^3: the 8 central voxels tie at EDT 2 -> index 6 -> (1, 1, 0) of the centre block
    gt = cube((12, 12, 12), (2, 2, 2), (4, 4, 4))
    assert simulate_click(np.zeros_like(gt), gt) == ((4, 4, 3), "fg")


def test_largest_component_wins_with_26_connectivity():
    shape = (20, 20, 20)
    small = cube(shape, (1, 1, 1), (3, 3, 3))  # 27 voxels
    big = cube(shape, (10, 10, 10), (5, 5, 5))  # 125 voxels
    assert simulate_click(np.zeros(shape, bool), small | big) == ((12, 12, 12), "fg")
    # two 3^3 cubes touching only at a corner form ONE 26-connected component of 54 voxels,
    # larger than a separate 40-voxel block (with 6-connectivity the block would win)
    a = cube(shape, (0, 0, 0), (3, 3, 3))
    b = cube(shape, (3, 3, 3), (3, 3, 3))
    block = cube(shape, (10, 10, 2), (2, 4, 5))
    # both cube centres tie at EDT 2; choice(2) = 0 -> the first in C order
    assert simulate_click(np.zeros(shape, bool), a | b | block) == ((1, 1, 1), "fg")


def test_equal_sized_components_go_to_the_first_in_c_order():
    shape = (12, 12, 12)
    first = cube(shape, (1, 6, 6), (3, 3, 3))
    second = cube(shape, (7, 1, 1), (3, 3, 3))
    assert simulate_click(np.zeros(shape, bool), first | second) == ((2, 7, 7), "fg")


def test_mixed_error_picks_component_and_kind():
    gt = cube((20, 20, 20), (2, 2, 2), (10, 10, 10))
    pred = gt.copy()
    pred[4:7, 4:7, 4:7] = False  # 27-voxel hole (fg)
    pred[14:19, 14:19, 14:19] = True  # 125-voxel spurious block (bg), the largest error
    assert simulate_click(pred, gt) == ((16, 16, 16), "bg")


def test_pooled_path_for_large_crops(monkeypatch):
    # 8^3 error cube: padded crop 12^3 = 1728 voxels; with the threshold lowered the organizer
    # max-pools 2x: the pooled EDT ties over the central 4^3 block (64 voxels), not 2^3
    gt = cube((16, 16, 16), (4, 4, 4), (8, 8, 8))
    pred = np.zeros_like(gt)
    assert simulate_click(pred, gt) == ((8, 8, 7), "fg")  # unpooled: 2^3 central tie, pick 6
    monkeypatch.setattr(clicks, "POOL_THRESHOLD_VOXELS", 1000)
    i = seeded_choice(64)
    expected = (4 + 2 + i // 16, 4 + 2 + (i // 4) % 4, 4 + 2 + i % 4)
    assert simulate_click(pred, gt) == (expected, "fg")
    assert simulate_click(pred, gt) == organizer_click(pred, gt, threshold=1000)


@pytest.mark.parametrize("threshold", [60_000_000, 150])
def test_matches_literal_organizer_replica_on_random_volumes(monkeypatch, threshold):
    monkeypatch.setattr(clicks, "POOL_THRESHOLD_VOXELS", threshold)
    rng = np.random.default_rng(0)
    for trial in range(25):
        shape = tuple(int(v) for v in rng.integers(6, 22, 3))
        gt = ndimage.gaussian_filter(rng.random(shape), 1.5) > 0.5
        pred = ndimage.gaussian_filter(rng.random(shape), 1.5) > 0.5
        if trial % 3 == 0:
            pred = gt.copy()
            pred[tuple(int(rng.integers(0, s)) for s in shape)] ^= True
        if trial % 5 == 0:
            pred[:] = False
        assert simulate_click(pred, gt) == organizer_click(pred, gt, threshold), trial


def test_multiclass_equals_per_class():
    rng = np.random.default_rng(1)
    gts = np.zeros((14, 20, 22), dtype=np.uint8)
    gts[2:8, 3:12, 4:15] = 1
    gts[6:12, 10:18, 12:20] = 2
    gts[0:2, 0:3, 0:3] = 3
    segs = np.roll(gts, (1, -1, 2), axis=(0, 1, 2))
    segs[segs == 3] = 0
    segs[rng.random(segs.shape) > 0.995] = 2
    labels = [1, 2, 3]
    expected = [simulate_click(segs == c, gts == c) for c in labels]
    assert simulate_clicks(segs, gts, labels) == expected
    assert expected == [organizer_click(segs == c, gts == c) for c in labels]
    perfect = simulate_clicks(gts, gts, labels)
    assert perfect == [None, None, None]


def test_first_click_without_box_is_fg_at_deepest_voxel():
    gts = np.zeros((9, 9, 9), dtype=np.uint8)
    gts[1:8, 1:8, 1:8] = 1
    result = simulate_clicks(np.zeros_like(gts), gts, [1])
    assert result == [((4, 4, 4), "fg")]


def test_add_click_stores_like_the_organizer(tmp_path):
    store, order = new_click_state(3)
    add_click(store, order, 0, ((1, 2, 3), "fg"))
    add_click(store, order, 1, None)
    add_click(store, order, 2, ((4, 5, 6), "bg"))
    add_click(store, order, 0, ((1, 2, 3), "fg"))  # the same click may repeat
    add_click(store, order, 1, ((0, 0, 1), "bg"))
    add_click(store, order, 2, None)
    assert store == [{"fg": [[1, 2, 3], [1, 2, 3]], "bg": []}, {"fg": [], "bg": [[0, 0, 1]]}, {"fg": [], "bg": [[4, 5, 6]]}]
    assert all(isinstance(v, np.int64) for v in store[0]["fg"][0])
    assert order == [["fg", "fg"], [None, "bg"], ["bg", None]]
    with pytest.raises(ValueError):
        add_click(store, order, 0, ((0, 0, 0), "up"))
    # saved as the organizer saves them: object arrays, clicks_order 2D (object with None)
    np.savez_compressed(tmp_path / "x.npz", clicks=store, clicks_order=order)
    with np.load(tmp_path / "x.npz", allow_pickle=True) as npz:
        assert npz["clicks_order"].shape == (3, 2) and npz["clicks_order"].dtype == object
        assert list(npz["clicks"])[2]["bg"] == [[4, 5, 6]]
    np.savez_compressed(tmp_path / "y.npz", clicks_order=[["fg"], ["bg"]])
    with np.load(tmp_path / "y.npz", allow_pickle=True) as npz:
        assert npz["clicks_order"].dtype.kind == "U"
