"""Product-background fusion against a brute-force argmax (inference/fusion.py)."""
import numpy as np
import pytest

from inference.fusion import ProductBackgroundFusion


def test_incremental_fusion_matches_brute_force():
    rng = np.random.default_rng(0)
    shape, k = (12, 14, 16), 7
    full = np.zeros((k, *shape), np.float32)
    fusion = ProductBackgroundFusion(shape)
    for c in range(k):
        lo = rng.integers(0, 8, 3)
        hi = np.minimum(lo + rng.integers(3, 8, 3), shape)
        region = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
        p = rng.random([s.stop - s.start for s in region]).astype(np.float32)
        full[c][region] = p
        fusion.add(c + 1, region, p)
    p_bg = np.prod(1 - full, axis=0)
    stack = np.concatenate([p_bg[None], full])
    ref = np.argmax(stack, axis=0)
    got = fusion.labels(slab=5)
    top2 = np.sort(stack, axis=0)[-2:]
    clear = (top2[1] - top2[0]) > 1e-5  # leave out numerical near-ties
    assert clear.mean() > 0.99
    assert np.array_equal(got[clear], ref[clear])


def test_ties_go_to_background_then_earlier_class():
    f = ProductBackgroundFusion((1, 1, 3))
    r = (slice(0, 1), slice(0, 1), slice(0, 3))
    f.add(1, r, np.array([[[0.5, 0.9, 0.6]]], np.float32))
    f.add(2, r, np.array([[[0.0, 0.9, 0.0]]], np.float32))
    # voxel 0: p_bg = 0.5 == p_1 -> background; voxel 1: classes tie -> class 1; voxel 2: class 1
    assert f.labels().tolist() == [[[0, 1, 1]]]


def test_memory_is_three_arrays_whatever_the_class_count():
    f = ProductBackgroundFusion((4, 4, 4))
    before = f.log_bg.nbytes + f.best.nbytes + f.label.nbytes
    for c in range(1, 200):
        f.add(c, (slice(0, 2),) * 3, np.full((2, 2, 2), 0.01 * (c % 50), np.float32))
    assert f.log_bg.nbytes + f.best.nbytes + f.label.nbytes == before


def _fuse(shape, classes, volume_weight):
    """Labels of classes [(id, probs)] added in order over the whole volume, each with its volume p > 0.5."""
    fusion = ProductBackgroundFusion(shape, volume_weight=volume_weight)
    whole = tuple(slice(0, n) for n in shape)
    for class_id, probs in classes:
        fusion.set_volume(class_id, float((probs > 0.5).sum()))
        fusion.add(class_id, whole, probs)
    return fusion.labels()


def test_volume_weight_lets_a_nested_structure_win_whatever_the_order():
    """A large class that fills its box with high probability covers a small sure class inside it under the
    max rule; with volume_weight 1 the small one wins there, in either order, and the foreground is the same."""
    shape = (8, 8, 8)
    big = np.zeros(shape, np.float32)
    big[1:7, 1:7, 1:7] = 0.95  # 216 voxels
    small = np.zeros(shape, np.float32)
    small[3:5, 3:5, 3:5] = 0.9  # 8 voxels, inside the big one
    small[0, 0, 0] = 0.3  # unsure, outside every claim: background
    for order in (((1, big), (2, small)), ((2, small), (1, big))):
        plain, weighted = _fuse(shape, order, 0.0), _fuse(shape, order, 1.0)
        assert (plain[3:5, 3:5, 3:5] == 1).all()
        assert (weighted[3:5, 3:5, 3:5] == 2).all()
        assert ((weighted > 0) == (plain > 0)).all()
        assert (weighted[(big > 0.5) & (small < 0.5)] == 1).all()
        assert weighted[0, 0, 0] == 0


def test_volume_weight_keeps_a_large_class_where_a_small_one_only_leaks_into_it():
    """A small class's unsure leak (p 0.6) into a large sure neighbour (p 0.99) stays the neighbour's."""
    shape = (8, 8, 8)
    large = np.zeros(shape, np.float32)
    large[:, :, :6] = 0.99  # 384 voxels
    small = np.zeros(shape, np.float32)
    small[2:6, 2:6, 6:8] = 0.95  # 32 voxels of its own
    small[2:6, 2:6, 5] = 0.6  # and a leak into the neighbour
    labels = _fuse(shape, ((1, large), (2, small)), 1.0)
    assert (labels[2:6, 2:6, 5] == 1).all()
    assert (labels[2:6, 2:6, 6:8] == 2).all()
    with pytest.raises(ValueError):
        ProductBackgroundFusion(shape, volume_weight=-1.0)
