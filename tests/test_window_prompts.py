"""The crop window and prompt encoding (inference/window.py, inference/prompts.py)."""
import numpy as np
import torch
import torch.nn.functional as F

from inference.network import CHANNELS
from inference.prompts import ClassPrompts, ball, encode, image_stats
from inference.window import Window, zoom_factor, zoom_factors


def test_zoom_rule():
    assert zoom_factor(np.array([10, 10, 10]), np.array([64, 64, 64])) == 1.0
    assert np.isclose(zoom_factor(np.array([128, 20, 20]), np.array([64, 64, 64])), (128 + 64 / 3) / 64)


def test_window_sizing_and_centre():
    w = Window.around((10, 20, 30), (10 + 99, 20 + 9, 30 + 9), (32, 32, 32), (200, 200, 200))
    z = (100 + 32 / 3) / 32
    assert w.size == tuple([int(round(32 * z))] * 3)
    centre = np.asarray(w.start) + (np.asarray(w.size) - 1) / 2
    assert np.allclose(centre, [59.5, 24.5, 34.5], atol=0.5)


def test_anisotropic_windows_keep_an_elongated_objects_cross_section():
    patch, shape = (64, 64, 64), (400, 200, 200)
    long_thin = ((0, 90, 90), (299, 99, 99))  # 300 voxels along z, 10 across: the isotropic rule zooms all by 5
    iso = zoom_factor(np.array([300, 10, 10]), np.array(patch))
    assert np.allclose(zoom_factors(np.array([300, 10, 10]), np.array(patch)), iso)  # anisotropy 1: the rule
    z = zoom_factors(np.array([300, 10, 10]), np.array(patch), anisotropy=1.5)
    assert np.isclose(z[0], iso) and np.allclose(z[1:], iso / 1.5)  # capped at the ratio, not the own zoom 1
    assert np.allclose(zoom_factors(np.array([300, 10, 10]), np.array(patch), anisotropy=100.0), [iso, 1, 1])
    w = Window.around(*long_thin, patch, shape, anisotropy=1.5)
    assert w.size[0] == Window.around(*long_thin, patch, shape).size[0]
    assert w.size[1] == w.size[2] == round(64 * iso / 1.5)
    assert np.allclose(w.scale[0] / w.scale[1], 1.5, atol=0.01)
    cube = ((0, 0, 0), (199, 199, 199))  # a compact object: no axis differs
    assert Window.around(*cube, patch, shape, anisotropy=1.5) == Window.around(*cube, patch, shape)
    # the frame mapping holds per axis: a linear field goes into the patch and back unchanged
    zz, yy, xx = np.meshgrid(np.arange(400), np.arange(200), np.arange(200), indexing="ij")
    vol = (0.5 * zz + 0.25 * yy - 0.1 * xx).astype(np.float32)
    back = np.zeros_like(vol)
    for region, values in w.paste(w.crop(vol)):
        back[region] = values
    inner = tuple(slice(r.start + 8, r.stop - 8) for r in w.inside())
    assert np.allclose(back[inner], vol[inner], atol=1e-2)


def test_min_zoom_below_one_magnifies_small_objects_only():
    lo, hi, patch, shape = (10, 10, 10), (15, 25, 12), (64, 64, 64), (100, 100, 100)
    assert Window.around(lo, hi, patch, shape).size == (64, 64, 64)  # the rule: at least the patch
    w = Window.around(lo, hi, patch, shape, min_zoom=0.5)
    assert w.size == (37, 37, 37) and np.isclose(w.zoom, 37 / 64)  # (16 + 64 / 3) / 64 = 0.58: magnified
    assert Window.around(lo, hi, patch, shape, min_zoom=0.75).size == (48, 48, 48)  # held at min_zoom
    big = ((0, 0, 0), (99, 20, 20))  # a large object: the rule as before
    assert Window.around(*big, patch, shape, min_zoom=0.5).size == Window.around(*big, patch, shape).size
    # a magnified window still maps a linear field into the patch and back (paste downsamples)
    zz, yy, xx = np.meshgrid(np.arange(100), np.arange(100), np.arange(100), indexing="ij")
    vol = (0.5 * zz + 0.25 * yy - 0.1 * xx).astype(np.float32)
    back = np.zeros_like(vol)
    for region, values in w.paste(w.crop(vol)):
        back[region] = values
    inner = tuple(slice(r.start + 1, r.stop - 1) for r in w.inside())  # away from the edge (clamped there)
    assert np.allclose(back[inner], vol[inner], atol=1e-3)


def test_crop_matches_torch_interpolate_inside_the_volume():
    rng = np.random.default_rng(0)
    vol = rng.random((60, 50, 70)).astype(np.float32)
    w = Window((5, 3, 7), (40, 36, 48), (16, 12, 24), vol.shape)
    ref = F.interpolate(torch.from_numpy(vol[5:45, 3:39, 7:55])[None, None], size=(16, 12, 24),
                        mode="trilinear", align_corners=False)[0, 0]
    assert torch.allclose(w.crop(vol), ref, atol=1e-5)


def test_crop_pads_outside_and_reads_only_touched_voxels():
    vol = np.full((10, 10, 10), 7, np.uint8)
    w = Window((-10, 0, 0), (20, 10, 10), (20, 10, 10), vol.shape)
    out = w.crop(vol, fill=-1.0)
    assert torch.all(out[:10] == -1) and torch.all(out[10:] == 7)


def test_paste_round_trip_of_a_linear_field():
    zz, yy, xx = np.meshgrid(np.arange(40), np.arange(50), np.arange(60), indexing="ij")
    vol = (0.5 * zz + 0.25 * yy - 0.1 * xx).astype(np.float32)
    w = Window((4, 6, 8), (30, 30, 30), (20, 20, 20), vol.shape)  # zoom 1.5
    patch = w.crop(vol)
    pieces = list(w.paste(patch, max_voxels=3000))  # several slabs
    assert len(pieces) > 1
    back = np.zeros_like(vol)
    for region, values in pieces:
        back[region] = values
    inner = (slice(6, 32), slice(8, 34), slice(10, 36))  # away from the window edge (clamped there)
    assert np.allclose(back[inner], vol[inner], atol=1e-3)


def test_identity_window_round_trip_is_exact():
    vol = np.random.default_rng(1).random((16, 16, 16)).astype(np.float32)
    w = Window((0, 0, 0), (16, 16, 16), (16, 16, 16), vol.shape)
    (region, values), = list(w.paste(w.crop(vol)))
    assert np.allclose(values, vol, atol=1e-6)


def test_paste_clips_to_the_volume():
    w = Window((-8, -8, 50), (32, 32, 32), (16, 16, 16), (20, 30, 60))
    (region, values), = list(w.paste(torch.ones(16, 16, 16)))
    assert region == (slice(0, 20), slice(0, 24), slice(50, 60)) and values.shape == (20, 24, 10)


def test_every_click_inside_the_window_survives():
    w = Window((0, 0, 0), (200, 150, 120), (32, 32, 32), (200, 150, 120))  # strong downsampling
    rng = np.random.default_rng(2)
    clicks = np.stack([rng.integers(0, n, 25) for n in (200, 150, 120)], 1)
    for kind in ("fg", "bg"):
        pr = ClassPrompts(None, clicks if kind == "fg" else np.zeros((0, 3), int),
                          clicks if kind == "bg" else np.zeros((0, 3), int))
        x = encode(w, np.zeros((200, 150, 120), np.uint8), image_stats(np.zeros((2, 2, 2))), pr)
        ch = x[CHANNELS["click_pos" if kind == "fg" else "click_neg"]]
        for p in np.round(w.to_patch(clicks)).astype(int):
            assert ch[tuple(p)] == 1.0  # the ball's centre is in the patch at full intensity
    assert np.abs(w.to_volume(w.to_patch(clicks)) - clicks).max() <= 0


def test_ball_profile():
    b = ball(4)
    assert b.shape == (9, 9, 9) and b[4, 4, 4] == 1.0 and b[0, 0, 0] == 0
    assert 0.2 < b[4, 4, 0] < 0.3  # rim about 0.24, as nnInteractive's soft ball


def test_encode_channels():
    img = np.zeros((20, 20, 20), np.uint8)
    img[5:15] = 200
    prev = np.zeros_like(img)
    prev[8:12, 8:12, 8:12] = 3
    w = Window((0, 0, 0), (20, 20, 20), (20, 20, 20), img.shape)
    pr = ClassPrompts(((2, 3, 4), (10, 11, 12)), np.array([[9, 9, 9]]), np.zeros((0, 3), int))
    x = encode(w, img, image_stats(img), pr, prev, 3)
    assert x.shape == (8, 20, 20, 20)
    assert torch.equal(x[CHANNELS["box_pos"]] > 0, torch.from_numpy(np.pad(np.ones((9, 9, 9), bool), ((2, 9), (3, 8), (4, 7)))))
    assert torch.equal(x[CHANNELS["prev_seg"]] > 0.5, torch.from_numpy(prev == 3))
    assert x[CHANNELS["click_pos"]][9, 9, 9] == 1 and x[CHANNELS["click_neg"]].sum() == 0
    for ch in ("box_neg", "scribble_pos", "scribble_neg"):
        assert x[CHANNELS[ch]].abs().sum() == 0
    # z-scored image: mean 0 over the nonzero bounding box
    assert abs(float(x[0][5:15].mean())) < 1.5


def test_box_channel_covers_whole_voxels_under_zoom():
    w = Window((0, 0, 0), (64, 64, 64), (16, 16, 16), (64, 64, 64))  # 4 voxels per patch voxel
    a, b = w.box_to_patch((8, 8, 8), (15, 15, 15))
    assert a.tolist() == [2, 2, 2] and b.tolist() == [4, 4, 4]
    a, b = w.box_to_patch((9, 9, 9), (9, 9, 9))  # a single voxel still marks one patch voxel
    assert (b - a).tolist() == [1, 1, 1]


def test_zoomed_window_is_capped():
    w = Window.around((5, 5, 5), (6, 6, 6), (16, 16, 16), (20, 40, 40))
    for _ in range(10):
        w = w.zoomed(1.5)
    assert max(w.size) <= 40 + 1


def test_paste_matches_torch_interpolate_and_native_windows_copy():
    vals = torch.rand(8, 6, 10)
    w = Window((-3, 2, 5), (20, 15, 23), (8, 6, 10), (14, 30, 40))  # scale 2.5, 2.5, 2.3; clipped at z = 0
    ref = F.interpolate(vals[None, None], size=w.size, mode="trilinear", align_corners=False)[0, 0]
    pieces = list(w.paste(vals, max_voxels=1000))
    assert len(pieces) > 1
    out = np.zeros(w.shape, np.float32)
    for region, v in pieces:
        out[region] = v
    assert np.allclose(out[0:14, 2:17, 5:28], ref[3:17].numpy(), atol=1e-5)
    native = Window.native((slice(2, 6), slice(0, 3), slice(1, 5)), (10, 10, 10))
    (region, v), = list(native.paste(vals[:4, :3, :4]))
    assert region == (slice(2, 6), slice(0, 3), slice(1, 5)) and np.array_equal(v, vals[:4, :3, :4].numpy())
