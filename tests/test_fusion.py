"""Product-background fusion against a brute-force argmax (inference/fusion.py)."""
import numpy as np

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
