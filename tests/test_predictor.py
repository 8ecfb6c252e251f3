"""The per-case loop: windows, zoom-out, budget levels and fallbacks (inference/predictor.py, budget.py)."""
import numpy as np
import pytest
import torch

from inference import budget as B
from inference.case_io import parse_case
from inference.network import new_model
from inference.predictor import (Predictor, anchored_slices, class_prompts, clicks_only, fallback_segs, prompt_extent,
                                 trained_anisotropy)
from inference.prompts import image_stats
from inference.settings import predictor_options


class ScriptedPredictor(Predictor):
    """A predictor whose 'network' returns a fixed response, to test the loop around it."""

    def __init__(self, response="box", **kw):
        super().__init__(new_model("tiny"), "cpu", **kw)
        self.response = response
        self.windows = []

    def predict_window(self, query, window, tta=1, adapt=True):
        self.windows.append(window)
        if self.response == "all":
            return torch.ones(window.patch)
        if self.response == "none":
            return torch.zeros(window.patch)
        # foreground exactly where the box channel is
        from inference.prompts import encode
        x = encode(window, query.image, query.stats, query.prompts)
        return x[2].clone()


def _case(k=3, shape=(20, 40, 40), prev=None, clicks=None, boxes=True):
    data = {"imgs": np.random.default_rng(0).integers(0, 255, shape, dtype=np.uint8), "spacing": np.ones(3)}
    if boxes:
        data["boxes"] = [{"z_min": 2 + c, "z_max": 8 + c, "z_mid": 5 + c, "z_mid_x_min": 5 + 8 * c,
                          "z_mid_y_min": 4, "z_mid_x_max": 10 + 8 * c, "z_mid_y_max": 12} for c in range(k)]
    if clicks is not None:
        data["clicks"] = clicks
    if prev is not None:
        data["prev_pred"] = prev
    return parse_case(data, "CT_test.npz")


def test_box_step_pastes_each_class_in_its_box():
    case = _case()
    segs = ScriptedPredictor(max_zoom_outs=0).predict_case(case)
    for c, b in enumerate(case.boxes):
        region = tuple(slice(lo, hi + 1) for lo, hi in zip(b.lo, b.hi))
        inside = segs[region]
        assert (inside == c + 1).mean() > 0.9
    assert segs.dtype == np.uint8 and segs.shape == case.shape


def test_zoom_out_when_the_mask_touches_the_window_border():
    case = _case(k=1, shape=(200, 200, 200))
    p = ScriptedPredictor("all", max_zoom_outs=2)
    p.predict_case(case)
    sizes = [w.size[0] for w in p.windows]
    assert len(sizes) == 3 and sizes[0] < sizes[1] < sizes[2]


def test_no_zoom_out_when_the_window_covers_the_volume():
    case = _case(k=1, shape=(10, 14, 14))
    p = ScriptedPredictor("all", max_zoom_outs=3)
    p.predict_case(case)
    assert len(p.windows) == 1  # every face of the window is outside the volume


def test_extent_without_box_uses_clicks_and_previous_mask():
    prev = np.zeros((20, 40, 40), np.uint8)
    prev[3:6, 10:20, 30:35] = 1
    case = _case(k=1, prev=prev, clicks=[{"fg": [[15, 2, 3]], "bg": []}], boxes=False)
    from scipy import ndimage
    lo, hi = prompt_extent(class_prompts(case, 0), ndimage.find_objects(prev)[0])
    assert lo.tolist() == [3, 2, 3] and hi.tolist() == [15, 19, 34]


def test_click_zoom_widens_only_the_windows_of_objects_prompted_by_clicks_alone():
    """A click-only object's first coarse window (no previous mask) is click_zoom times the zoom rule's, centred as
    before; a box's is not."""
    clicked = _case(k=1, shape=(200, 200, 200), clicks=[{"fg": [[100, 90, 80]], "bg": []}], boxes=False)
    boxed = _case(k=1, shape=(200, 200, 200))
    assert clicks_only(class_prompts(clicked, 0)) and not clicks_only(class_prompts(boxed, 0))
    sizes = {}
    for zoom in (1.0, 2.0):
        for name, case in (("click", clicked), ("box", boxed)):
            p = ScriptedPredictor("none", max_zoom_outs=0, click_zoom=zoom)
            p.predict_case(case)
            sizes[name, zoom] = p.windows[0]
    patch = np.asarray(sizes["click", 1.0].patch)
    assert np.array_equal(sizes["click", 1.0].size, patch)
    assert np.array_equal(sizes["click", 2.0].size, 2 * patch)
    centre = [s + (n - 1) / 2 for s, n in zip(sizes["click", 2.0].start, sizes["click", 2.0].size)]
    assert np.allclose(centre, [100, 90, 80], atol=1)
    assert sizes["box", 1.0] == sizes["box", 2.0]
    with pytest.raises(ValueError):
        ScriptedPredictor(click_zoom=0.5)


def test_window_anisotropy_comes_from_the_checkpoint_unless_set():
    """A model trained with --window-anisotropy places its windows that way; the setting overrides it."""
    data = {"imgs": np.zeros((200, 200, 200), np.uint8), "spacing": np.ones(3),
            "boxes": [{"z_min": 10, "z_max": 189, "z_mid": 100, "z_mid_x_min": 95, "z_mid_y_min": 95,
                       "z_mid_x_max": 99, "z_mid_y_max": 99}]}  # a long thin box along z
    case = parse_case(data, "CT_long.npz")

    def first_window(**kw):
        p = ScriptedPredictor("none", max_zoom_outs=0, **kw)
        p.predict_case(case)
        return p.windows[0], p

    iso, p = first_window()
    assert trained_anisotropy(p.model) == 1.0 and len(set(iso.size)) == 1
    p.model.meta["train_config"] = {"window_anisotropy": 2.0}
    p.windows = []
    p.predict_case(case)
    trained = p.windows[0]
    assert trained.size[0] == iso.size[0] and trained.size[1] == trained.size[2]
    assert abs(trained.size[1] - iso.size[1] / 2) <= 1  # half the zoom across the long axis
    assert first_window(window_anisotropy=2.0)[0] == trained
    assert predictor_options("coarse+full+aniso=1.5")["window_anisotropy"] == 1.5
    with pytest.raises(ValueError):
        ScriptedPredictor(window_anisotropy=0.5)


def test_anchored_extent_keeps_the_components_a_positive_prompt_touches():
    prev = np.zeros((20, 40, 40), np.uint8)
    prev[3:6, 10:20, 30:35] = 1   # touched by the foreground click
    prev[15:18, 30:38, 2:6] = 1   # a false positive far away
    prev[10:12, 2:4, 2:4] = 2     # another class
    case = _case(k=1, prev=prev, clicks=[{"fg": [[4, 21, 32]], "bg": [[16, 33, 3]]}], boxes=False)
    from scipy import ndimage
    prompts = class_prompts(case, 0)
    whole = ndimage.find_objects(prev)[0]
    assert anchored_slices(prev, 1, whole, prompts) == (slice(3, 6), slice(10, 20), slice(30, 35))  # reach 2
    far = class_prompts(_case(k=1, prev=prev, clicks=[{"fg": [[4, 25, 32]], "bg": []}], boxes=False), 0)
    assert anchored_slices(prev, 1, whole, far) is None
    boxed = class_prompts(_case(k=1, prev=prev), 0)  # the box (2..8, 4..12, 5..10) touches no component
    assert anchored_slices(prev, 1, whole, boxed) is None


def test_a_far_background_click_does_not_stretch_the_window_and_drops_the_false_positive():
    shape = (40, 120, 120)
    prev = np.zeros(shape, np.uint8)
    prev[18:22, 10:14, 10:14] = 1     # the object, clicked
    prev[18:22, 100:110, 100:110] = 1  # a false positive, clicked as background
    clicks = [{"fg": [[20, 12, 12]], "bg": [[20, 105, 105]]}]
    case = _case(k=1, shape=shape, prev=prev, clicks=clicks, boxes=False)
    case.clicks_order = [["fg", "bg"]]
    anchored, loose = ScriptedPredictor(max_zoom_outs=0), ScriptedPredictor(max_zoom_outs=0, anchored_extent=False)
    segs = anchored.predict_case(case)
    loose.predict_case(case)
    assert anchored.windows[0].zoom == 1.0 and loose.windows[0].zoom > 1.5
    assert not segs[18:22, 100:110, 100:110].any()


class FakeClock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_budget_levels_degrade_with_time():
    clock = FakeClock()
    b = B.Budget(4, start=0.0, per_class_run_s=10.0, safety=1.0, reserve_s=0.0, clock=clock)
    b.record_run(2.0)
    assert b.level(4) == B.REFINE  # 40 s left for 4 x 2 s x 3 runs (the prior for refined classes) x 1.25
    clock.t = 15.0
    assert b.level(4) == B.FULL  # 25 s: refinement is the first to go
    clock.t = 33.0
    assert b.level(3) == B.NO_ZOOM  # 7 s for 6 s of work
    clock.t = 37.0
    assert b.level(3) == B.REDUCED  # 3 s: half-resolution runs cost about 1/8
    clock.t = 39.9
    assert b.level(3) == B.FALLBACK


class SlowPredictor(ScriptedPredictor):
    def __init__(self, clock, **kw):
        super().__init__(**kw)
        self.clock = clock

    def predict_window(self, query, window, tta=1, adapt=True):
        self.clock.t += 5.0  # every network run costs 5 s
        return super().predict_window(query, window)


def test_budget_fallback_keeps_previous_prediction_for_the_remaining_classes():
    clock = FakeClock()
    prev = np.zeros((20, 40, 40), np.uint8)
    for c in range(4):
        prev[10, 20, 2 + 5 * c: 5 + 5 * c] = c + 1
    case = _case(k=4, prev=prev)
    p = SlowPredictor(clock, max_zoom_outs=0)
    budget = B.Budget(4, start=0.0, per_class_run_s=3.0, safety=1.0, reserve_s=0.0, clock=clock,
                      first_run_estimate_s=1.0)
    segs = p.predict_case(case, budget)
    assert clock.t <= 12.0 + 5.0  # never ran far past the 12 s budget
    ran = len(p.windows)
    assert 1 <= ran < 4
    for c in range(ran, 4):  # classes without a run kept their previous mask exactly
        assert np.array_equal(segs == c + 1, prev == c + 1)


def test_fallback_segs_at_the_box_step_fills_boxes():
    case = _case(k=2)
    segs = fallback_segs(case)
    b = case.boxes[1]
    assert (segs[b.lo[0]:b.hi[0] + 1, b.lo[1]:b.hi[1] + 1, b.lo[2]:b.hi[2] + 1] == 2).all()


def test_real_tiny_network_runs_on_reduced_patch():
    p = Predictor(new_model("tiny"), "cpu", max_zoom_outs=0)
    case = _case(k=2)
    stats = image_stats(case.image)
    full = p.predict_class(case, 0, stats, None, B.FULL)
    red = p.predict_class(case, 0, stats, None, B.REDUCED)
    assert full[1].shape == (16, 16, 16) and red[1].shape == (8, 8, 8)
    assert torch.all((red[1] >= 0) & (red[1] <= 1))


def test_tta_is_the_mean_over_mirrored_copies():
    torch.manual_seed(0)
    p2 = Predictor(new_model("tiny", seed=3), "cpu", tta=2)
    x = torch.randn(8, *p2.model.patch_size)
    plain = p2.run_network(x, 1)
    mirrored = torch.flip(p2.run_network(torch.flip(x, [3]), 1), [2])  # x axis of (8, z, y, x) / (z, y, x)
    assert not torch.allclose(plain, mirrored)  # a random network is not mirror-symmetric
    assert torch.allclose(p2.run_network(x, 2), (plain + mirrored) / 2, atol=1e-6)
    eight = p2.run_network(x, 8)
    assert eight.shape == plain.shape and float(eight.min()) >= 0 and float(eight.max()) <= 1


def test_tta_runs_through_a_case_and_rejects_unknown_levels():
    case = _case(k=2)
    segs = Predictor(new_model("tiny", seed=3), "cpu", tta=4, max_zoom_outs=0).predict_case(case)
    assert segs.shape == case.shape and segs.dtype == np.uint8
    with pytest.raises(ValueError, match="tta"):
        Predictor(new_model("tiny"), "cpu", tta=3)


def test_clip_z_keeps_only_the_slices_in_range():
    from inference.predictor import clip_z
    region = (slice(3, 9), slice(0, 4), slice(2, 5))
    values = np.arange(6 * 4 * 3, dtype=np.float32).reshape(6, 4, 3)
    (zs, ys, xs), part = clip_z(region, values, 5, 6)
    assert (zs.start, zs.stop) == (5, 7) and ys == region[1] and xs == region[2]
    np.testing.assert_array_equal(part, values[2:4])
    assert clip_z(region, values, 10, 12) is None
    np.testing.assert_array_equal(clip_z(region, values, 0, 100)[1], values)


def test_everything_predicted_outside_the_box_slices_is_dropped_but_fg_clicks_widen_the_range():
    p = ScriptedPredictor("all", max_zoom_outs=0)
    case = _case(k=1, shape=(30, 40, 40))  # box z 2..8
    seg = p.predict_case(case)
    zs = np.nonzero(seg.any(axis=(1, 2)))[0]
    assert zs.min() == 2 and zs.max() == 8
    assert ScriptedPredictor("all", max_zoom_outs=0, box_z_clip=False).predict_case(case).any(axis=(1, 2)).sum() > 7
    clicked = _case(k=1, shape=(30, 40, 40), clicks=[{"fg": [[11, 8, 8]], "bg": []}])
    zs = np.nonzero(p.predict_case(clicked).any(axis=(1, 2)))[0]
    assert zs.min() == 2 and zs.max() == 11


def test_clicked_voxels_keep_the_organizers_answer():
    """A foreground click is inside the object and a background click outside it: the network's answer at those
    voxels is overruled (a tiny lesion the network drops keeps its clicked voxel), unless +nopin."""
    clicks = [{"fg": [[5, 8, 7]], "bg": [[6, 10, 9]]}, {"fg": [[9, 30, 35]], "bg": []}]  # class 2's: off its box
    case = _case(k=2, clicks=clicks)
    case.clicks_order = [["fg", "bg"], ["fg"]]
    empty = ScriptedPredictor("none", max_zoom_outs=0).predict_case(case)
    assert empty[5, 8, 7] == 1 and empty[9, 30, 35] == 2 and np.count_nonzero(empty) == 2
    full = ScriptedPredictor("all", max_zoom_outs=0).predict_case(case)
    assert full[6, 10, 9] != 1 and full[5, 8, 7] == 1
    unpinned = ScriptedPredictor("all", max_zoom_outs=0, pin_clicks=False).predict_case(case)
    assert unpinned[6, 10, 9] in (1, 2)
    assert not ScriptedPredictor("none", max_zoom_outs=0, pin_clicks=False).predict_case(case).any()


def test_pin_points_only_touches_the_points_inside_the_region():
    from inference.predictor import pin_points
    region = (slice(2, 4), slice(0, 3), slice(1, 3))
    values = np.full((2, 3, 2), 0.5, np.float32)
    out = pin_points(region, values, np.array([[3, 2, 1], [9, 9, 9]]), 1.0)
    assert out[1, 2, 0] == 1.0 and np.count_nonzero(out != 0.5) == 1 and (values == 0.5).all()
    assert pin_points(region, values, np.zeros((0, 3)), 1.0) is values


def test_cpu_threads_honours_omp_num_threads():
    from inference.predictor import cpu_threads
    assert cpu_threads({"OMP_NUM_THREADS": "1"}) == 1
    assert cpu_threads({"OMP_NUM_THREADS": "junk"}) >= 1 and cpu_threads({}) >= 1


def _silent(model):
    """A model whose network says background everywhere (its last layer: zero weights, background bias)."""
    last = model.net.decoder.seg_layers[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.copy_(torch.tensor([10.0, -10.0]))
    return model


def test_modality_routes_replace_the_model_for_their_cases(tmp_path):
    from inference.network import case_modality, load_model, route_paths, save_checkpoint
    from inference.predictor import load_predictor

    save_checkpoint(new_model("tiny", seed=1), tmp_path / "w.pt")
    save_checkpoint(_silent(new_model("tiny", seed=2)), tmp_path / "w.CT.pt")
    save_checkpoint(new_model("tiny", seed=3), tmp_path / "w.CT.old.pt")  # not a route: two dots
    save_checkpoint(new_model("tiny", seed=4), tmp_path / "other.MR.pt")  # another checkpoint's route
    assert case_modality("CT_AbdTumor_0001.npz") == "CT" and case_modality("case.npz") == ""
    assert route_paths(tmp_path / "w.pt") == {"CT": tmp_path / "w.CT.pt"}
    p = load_predictor(tmp_path / "w.pt", "cpu", max_zoom_outs=0, intensity=None)
    assert set(p.model.routes) == {"CT"} and p.model.for_case("MR_x.npz") is p.model
    data = {"imgs": np.random.default_rng(0).integers(0, 255, (20, 40, 40), dtype=np.uint8), "spacing": np.ones(3),
            "boxes": [{"z_min": 2, "z_max": 12, "z_mid": 7, "z_mid_x_min": 5, "z_mid_y_min": 4, "z_mid_x_max": 30,
                       "z_mid_y_max": 30}]}
    routed = p.predict(data, "CT_case.npz")
    plain = p.predict(data, "MR_case.npz")
    assert plain.any() and not routed.any()  # the CT route says background everywhere
    assert p.model.source.endswith("w.pt")  # the default is back after the routed case
    assert not load_model(tmp_path / "w.pt").routes  # training and averaging load no routes
    assert not load_predictor(tmp_path / "w.pt", "cpu", routes=False).model.routes  # the server's load
