"""The training data engine: sources, synthesis, deformation, viewer prompts, mixture, precision."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from inference.network import CHANNELS, new_model
from inference.prompts import ClassPrompts, ImageStats, encode, no_voxels
from inference.window import Window
from training import viewer_prompts
from training.augment import SpatialOptions, seeded, spatial
from training.data import (PROMPT_KINDS, CaseStore, SampleOptions, list_cases, loosen_box, make_sample,
                           patch_prompts, prepare_case, render_sample, write_synthetic_cases)
from training.mixture import SOURCE_NAMES, Mixture, Sources
from training.pseudo import build as build_pseudo, supervoxels
from training.shapes import ensemble, procedural
from training.synth import paint

PATCH = (32, 32, 32)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    folder = tmp_path_factory.mktemp("engine")
    write_synthetic_cases(folder, n=2, shape=(40, 48, 48), n_classes=3, seed=3)
    return CaseStore(list_cases(folder))


def cube_case(shape=(40, 60, 60), lo=(10, 20, 15), size=(12, 14, 16), with_image=True):
    gts = np.zeros(shape, np.uint8)
    gts[lo[0]:lo[0] + size[0], lo[1]:lo[1] + size[1], lo[2]:lo[2] + size[2]] = 1
    gts[2:6, 2:8, 2:8] = 2
    img = (gts * 80 + 40).astype(np.uint8) if with_image else None
    return prepare_case("CT_cube.npz", img, gts)


def opts_for(kind: str, **kw) -> SampleOptions:
    p_no_box = 1.0 if kind == "nobox" else 0.0
    p_viewer = 1.0 if kind in ("box2d", "lasso", "scribble") else 0.0
    weights = tuple(float(kind == k) for k in ("box2d", "lasso", "scribble")) if p_viewer else (0.4, 0.3, 0.3)
    return SampleOptions(PATCH, p_no_box=p_no_box, p_viewer=p_viewer, viewer_weights=weights,
                         intensity_scale=0.0, intensity_shift=0.0, **kw)


# ---------------------------------------------------------------------- determinism
def test_generators_are_deterministic_from_their_seed():
    labels = procedural((40, 40, 40), np.random.default_rng(5))
    np.testing.assert_array_equal(labels, procedural((40, 40, 40), np.random.default_rng(5)))
    assert not np.array_equal(labels, procedural((40, 40, 40), np.random.default_rng(6)))
    masks = [np.ones((5, 6, 7), bool), np.ones((9, 3, 4), bool)]
    a = ensemble((30, 30, 30), masks, np.random.default_rng(1))
    np.testing.assert_array_equal(a, ensemble((30, 30, 30), masks, np.random.default_rng(1)))
    assert set(np.unique(a)) <= {0, 1, 2} and (a > 0).any()
    with seeded(11):
        img = paint(labels, 1)
    with seeded(11):
        again = paint(labels, 1)
    with seeded(12):
        other = paint(labels, 1)
    np.testing.assert_array_equal(img, again)
    assert img.shape == labels.shape and img.dtype == np.float32 and np.abs(img - other).max() > 0
    image = (labels * 40 + 30 + np.random.default_rng(0).normal(0, 3, labels.shape)).astype(np.float32)
    sv = supervoxels(image, np.ones(3), 20)
    np.testing.assert_array_equal(sv, supervoxels(image, np.ones(3), 20))
    assert sv.max() >= 5 and np.array_equal(np.unique(sv[sv > 0]), np.arange(1, sv.max() + 1))


def test_pseudo_cache_is_the_same_from_parallel_jobs(tmp_path):
    write_synthetic_cases(tmp_path / "cases", n=2, shape=(24, 32, 32), n_classes=2, seed=4)
    paths = list_cases(tmp_path / "cases")
    one = build_pseudo(paths, tmp_path / "one", scales=(10, 30), progress=False)
    two = build_pseudo(paths, tmp_path / "two", scales=(10, 30), progress=False, jobs=2)
    assert [p.name for p in one] == [p.name for p in two] and len(one) == 4
    for a, b in zip(one, two):
        with np.load(a) as x, np.load(b) as y:
            np.testing.assert_array_equal(x["gts"], y["gts"])
            np.testing.assert_array_equal(x["imgs"], y["imgs"])


@pytest.mark.parametrize("source", ["real", "synth", "ensemble", "procedural"])
def test_each_source_gives_reproducible_aligned_samples(store, source):
    sources = Sources(store, store, None, Mixture(**{n: float(n == source) for n in SOURCE_NAMES}),
                      canvas=(40, 40, 40))
    opts = SampleOptions(PATCH, p_no_box=0.3, p_viewer=0.3, p_spatial=0.5, p_appearance=0.5, flip=True)
    for index in range(4):
        s = make_sample(sources, opts, seed=2, index=index)
        again = make_sample(sources, opts, seed=2, index=index)
        for k in s:
            np.testing.assert_array_equal(s[k], again[k])
        assert SOURCE_NAMES[int(s["source"])] == source
        assert s["input"].shape == (8, *PATCH) and s["target"].any()
        kind = PROMPT_KINDS[int(s["kind"])]
        x, target = s["input"], s["target"]
        if kind == "nobox":  # the first click lies on the object
            c = np.unravel_index(np.argmax(x[CHANNELS["click_pos"]]), PATCH)
            assert target[c]
        elif kind == "box":  # the box covers the object's middle slice
            box = x[CHANNELS["box_pos"]] > 0
            zs = np.flatnonzero(target.any(axis=(1, 2)))
            assert box[zs[len(zs) // 2]][target[zs[len(zs) // 2]]].all()


# ---------------------------------------------------------------------- alignment
def test_prompts_follow_a_moved_object():
    """The same object at two places of the volume gives the same patch, prompts and target, and the
    window moves with it by exactly the shift."""
    from training.data import sample_window

    a, b = cube_case((64, 80, 80), lo=(16, 24, 20)), cube_case((64, 80, 80), lo=(26, 34, 40))
    for kind in ("box", "nobox", "box2d", "lasso", "scribble"):
        opts = opts_for(kind, shift_frac=0.0, zoom_aug_max=1.0, nobox_zoom_max=1.0)
        sa = render_sample(a, 1, False, opts, np.random.default_rng(4))
        sb = render_sample(b, 1, False, opts, np.random.default_rng(4))
        np.testing.assert_array_equal(sa["input"], sb["input"])
        np.testing.assert_array_equal(sa["target"], sb["target"])
    wa = sample_window((16, 24, 20), (27, 37, 35), PATCH, a.shape, 1.0, np.zeros(3))
    wb = sample_window((26, 34, 40), (37, 47, 55), PATCH, b.shape, 1.0, np.zeros(3))
    assert np.subtract(wb.start, wa.start).tolist() == [10, 10, 20]


def test_anisotropic_training_windows_are_the_inference_windows():
    """--window-anisotropy reaches the samples, and a long object's training window (no shift, no extra zoom) is
    the one inference places on its box: zoomed less across the object than along it."""
    from training.config import TrainConfig
    from training.data import sample_window

    assert SampleOptions.from_config(TrainConfig(window_anisotropy=1.5), PATCH).anisotropy == 1.5
    case = cube_case((120, 60, 60), lo=(5, 20, 20), size=(110, 8, 8))  # 110 voxels along z, 8 across
    lo, hi = (5, 20, 20), (114, 27, 27)
    iso = sample_window(lo, hi, PATCH, case.shape, 1.0, np.zeros(3))
    an = sample_window(lo, hi, PATCH, case.shape, 1.0, np.zeros(3), anisotropy=1.5)
    assert an == Window.around(lo, hi, PATCH, case.shape, anisotropy=1.5)
    assert an.size[0] == iso.size[0] and an.size[1] < iso.size[1]
    opts = opts_for("box", shift_frac=0.0, zoom_aug_max=1.0, anisotropy=1.5)
    sample = render_sample(case, 1, False, opts, np.random.default_rng(2))
    across = sample["target"].any(axis=(0, 1)).sum()  # the object's width in the patch, x
    iso_sample = render_sample(case, 1, False, opts_for("box", shift_frac=0.0, zoom_aug_max=1.0),
                               np.random.default_rng(2))
    assert across > iso_sample["target"].any(axis=(0, 1)).sum()


def test_a_loosened_box_holds_the_organizers_box_and_repeats_from_its_seed():
    """Loosened boxes (z, y, x, inclusive) contain the tight box, stay inside the patch, grow by at most the
    share asked for, and come out the same from the same seed; p_loose 0 leaves the box and the stream as they were."""
    target = np.zeros(PATCH, bool)
    target[20:40, 16:30, 24:50] = True
    scale, shape = np.ones(3), PATCH
    tight, _ = patch_prompts("box", target, scale, shape, None, np.random.default_rng(3))
    same, _ = patch_prompts("box", target, scale, shape, None, np.random.default_rng(3), 0.0, 0.25)
    assert same.box == tight.box
    grown = 0
    for seed in range(20):
        a, _ = patch_prompts("box", target, scale, shape, None, np.random.default_rng(seed), 1.0, 0.25)
        b, _ = patch_prompts("box", target, scale, shape, None, np.random.default_rng(seed), 1.0, 0.25)
        assert a.box == b.box
        (lo, hi), (tlo, thi) = a.box, patch_prompts("box", target, scale, shape, None, np.random.default_rng(seed))[0].box
        extent = np.subtract(thi, tlo) + 1
        assert (np.asarray(lo) <= tlo).all() and (np.asarray(hi) >= thi).all()
        assert (np.asarray(lo) >= 0).all() and (np.asarray(hi) <= np.asarray(PATCH) - 1).all()
        assert (np.subtract(tlo, lo) <= np.round(0.25 * extent)).all() and (np.subtract(hi, thi) <= np.round(0.25 * extent)).all()
        grown += int(a.box != tuple(map(tuple, (tlo, thi))))
    assert grown >= 15
    lo, hi = loosen_box((0, 5, 5), (63, 10, 10), PATCH, 0.5, np.random.default_rng(0))
    assert lo[0] == 0 and hi[0] == PATCH[0] - 1


def test_deformation_moves_image_labels_and_click_together():
    labels = np.zeros((40, 40, 40), np.int64)
    labels[12:28, 10:22, 14:30] = 3
    image = (labels * 50).astype(np.float32)
    point = np.zeros(labels.shape, np.float32)
    point[20, 16, 22] = 1.0
    for seed in range(3):
        with seeded(seed):
            img, lab, pts = spatial(image, labels, point, (32, 32, 32), SpatialOptions(rotation_deg=25, zoom=0.3))
        assert set(np.unique(lab)) <= {0, 3} and (lab == 3).any()
        inside = lab == 3
        assert img[inside].mean() > 100 and img[~inside].mean() < 50  # the image moved with the labels
        c = np.unravel_index(np.argmax(pts), pts.shape)
        assert inside[c]  # the click moved with the object


def test_viewer_prompts_lie_on_one_slice_of_the_object():
    target = np.zeros(PATCH, bool)
    target[8:24, 6:20, 10:28] = True
    rng = np.random.default_rng(0)
    for _ in range(10):
        lo, hi = viewer_prompts.box2d(target, rng, jitter_max=2)
        flat = [a for a in range(3) if lo[a] == hi[a]]
        assert len(flat) >= 1
        for v in (lasso := viewer_prompts.lasso(target, rng)), viewer_prompts.scribble(target, rng):
            assert any(len(np.unique(v[:, a])) == 1 for a in range(3))  # one slice
        scr = viewer_prompts.scribble(target, rng)
        assert ndimage.binary_dilation(target)[tuple(scr.T)].all()  # inside, give or take a pixel
        assert target[tuple(lasso.T)].mean() > 0.6


def test_encode_writes_lasso_and_scribbles_to_their_channels():
    w = Window.identity(PATCH)
    vox = np.array([[5, 6, 7], [5, 6, 8]])
    p = ClassPrompts(None, no_voxels(), no_voxels(), lasso_fg=vox, scribble_bg=vox + 3)
    x = encode(w, np.zeros(PATCH, np.float32), ImageStats(0.0, 1.0), p)
    assert x[CHANNELS["box_pos"]].sum() == 2 and x[CHANNELS["box_pos"]][5, 6, 7] == 1
    assert x[CHANNELS["scribble_neg"]][8, 9, 11] == 1 and x[CHANNELS["scribble_pos"]].sum() == 0
    # on a zoomed window the voxels land on the patch voxel that holds them
    big = Window((0, 0, 0), (64, 64, 64), PATCH, (64, 64, 64))
    x = encode(big, np.zeros((64, 64, 64), np.float32), ImageStats(0.0, 1.0),
               ClassPrompts(None, no_voxels(), no_voxels(), scribble_fg=np.array([[10, 20, 31]])))
    assert x[CHANNELS["scribble_pos"]][5, 10, 15] == 1


def test_window_nearest_crop_and_context():
    vol = np.arange(6 * 8 * 10).reshape(6, 8, 10)
    w = Window((-1, 2, 3), (4, 4, 4), (4, 4, 4), vol.shape)
    out = w.crop_nearest(vol, fill=-1)
    assert out[0].max() == -1 and out[1, 0, 0] == vol[0, 2, 3]
    g = Window((0, 0, 0), (16, 16, 16), (8, 8, 8), (32, 32, 32)).grown((12, 12, 12))
    assert g.size == (24, 24, 24) and g.start == (-4, -4, -4) and np.allclose(g.scale, 2.0)


# ---------------------------------------------------------------------- mixture and precision
def test_mixture_is_saved_in_the_checkpoints(tmp_path, store):
    from inference.network import load_model
    from training import config as C
    from training.train import load_training_checkpoint, train

    data = tmp_path / "data"
    write_synthetic_cases(data, n=2, shape=(20, 28, 28), n_classes=2, seed=9)
    cfg = C.TrainConfig(data=str(data), out=str(tmp_path / "run"), profile="tiny", steps=1, ckpt_every=1,
                        progress=False, labelmaps="", pseudo="", mix_real=0.6, mix_synth=0.3, mix_pseudo=0.0,
                        mix_ensemble=0.05, mix_procedural=0.05, num_workers=0, p_click=0.0)
    train(cfg)
    meta = load_model(tmp_path / "run" / "model.pt").meta
    assert meta["mixture"] == {"real": 0.6, "synth": 0.3, "pseudo": 0.0, "ensemble": 0.05, "procedural": 0.05}
    assert C.from_dict(load_training_checkpoint(tmp_path / "run" / "last.pt")["config"]).mix_synth == 0.3


def test_bf16_and_fp32_agree_on_a_tiny_network(monkeypatch):
    from inference import precision
    from inference.predictor import Predictor

    model = new_model("tiny", seed=0)
    x = torch.randn(8, 16, 16, 16)
    fp32 = Predictor(model, "cpu", precision="fp32").run_network(x)
    bf16 = Predictor(model, "cpu", precision="bf16").run_network(x)
    assert fp32.dtype == bf16.dtype == torch.float32
    assert float((fp32 - bf16).abs().max()) < 0.05
    monkeypatch.setenv("SEGFM_PRECISION", "fp32")
    assert precision.resolve("cpu") == "fp32"
    monkeypatch.setenv("SEGFM_PRECISION", "auto")
    assert precision.resolve("cpu") == ("bf16" if precision.cpu_has_native_bf16() else "fp32")
    monkeypatch.setenv("SEGFM_PRECISION", "half")
    with pytest.raises(ValueError, match="SEGFM_PRECISION"):
        precision.resolve("cpu")


def test_refine_tiles_sit_on_a_large_objects_surface_with_a_coarse_mask():
    big = cube_case((90, 90, 90), lo=(10, 10, 10), size=(70, 70, 70))
    opts = SampleOptions(PATCH, p_no_box=0.0, p_refine=1.0, intensity_scale=0.0, intensity_shift=0.0)
    for seed in range(4):
        s = render_sample(big, 1, False, opts, np.random.default_rng(seed))
        assert PROMPT_KINDS[int(s["kind"])] == "refine"
        target, prev = s["target"], s["input"][CHANNELS["prev_seg"]] > 0.5
        assert 0.05 < target.mean() < 0.95  # the tile straddles the surface at (near) native resolution
        assert 2 * (prev & target).sum() / (prev.sum() + target.sum()) > 0.8
        box = s["input"][CHANNELS["box_pos"]]
        assert bool(s["has_box"]) == bool(box.any())
    small = cube_case()
    s = render_sample(small, 1, False, opts, np.random.default_rng(0))
    assert PROMPT_KINDS[int(s["kind"])] == "box"  # too small to be refined at inference: an ordinary box sample


def test_a_box_outside_the_window_draws_nothing():
    from inference.prompts import fill_box

    w = Window((0, 0, 0), (16, 16, 16), (16, 16, 16), (64, 64, 64))
    ch = torch.zeros(16, 16, 16)
    fill_box(ch, w, (20, 2, 2), (30, 10, 10))
    assert not ch.any()
    fill_box(ch, w, (10, 2, 2), (30, 10, 10))
    assert ch[10:, 2:11, 2:11].all() and ch.sum() == 6 * 9 * 9
