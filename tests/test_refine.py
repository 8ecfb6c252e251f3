"""Refinement tiles, click-local updates and the budget's REFINE level (inference/refine.py, local_update.py)."""
import numpy as np
import pytest
import torch

from inference import budget as B
from inference.case_io import parse_case
from inference.local_update import LocalConfig, click_window, extent_changed
from inference.network import CHANNELS, new_model
from inference.predictor import (ADAPT_BY_DEFAULT, DEFAULT_ADAPT, DEFAULT_GRAPHCUT, DEFAULT_INTENSITY, DEFAULT_VOLUME_WEIGHT,
                                 ObjectQuery, Predictor)
from inference.prompts import ClassPrompts, encode, image_stats
from inference.refine import RefineConfig, band_points, boundary_band, paste_into, plan_tiles, refine
from inference.settings import env_options, predictor_options
from inference.window import Window
from test_predictor import FakeClock

PATCH = (16, 16, 16)


def sphere(shape, centre, radius) -> np.ndarray:
    zz, yy, xx = np.ogrid[tuple(slice(0, n) for n in shape)]
    return (zz - centre[0]) ** 2 + (yy - centre[1]) ** 2 + (xx - centre[2]) ** 2 <= radius ** 2


def volume(window, probs, shape) -> np.ndarray:
    """A window's probabilities pasted into a zero volume."""
    out = np.zeros(shape, np.float32)
    paste_into(out, (0, 0, 0), window, probs)
    return out


def test_tiles_cover_the_boundary():
    shape = (70, 90, 110)
    window = Window((5, 10, 15), (48, 48, 48), PATCH, shape)  # zoom 3
    probs = torch.from_numpy(sphere(PATCH, (7.5, 7.5, 7.5), 6).astype(np.float32))
    pts = band_points(window, boundary_band(probs))
    assert len(pts) > 100
    for max_tiles, native in ((1000, True), (30, False)):
        tiles = plan_tiles(pts, PATCH, shape, window.zoom, RefineConfig(max_tiles=max_tiles))
        assert 1 < len(tiles) <= max_tiles
        assert (tiles[0].zoom == 1.0) == native  # fewer tiles allowed: coarser ones, still finer than the window
        assert all(t.zoom * 1.5 <= window.zoom for t in tiles)
        lo = np.stack([t.start for t in tiles])
        hi = lo + np.stack([t.size for t in tiles])
        held = ((pts[:, None] >= lo[None]) & (pts[:, None] < hi[None])).all(-1).any(1)
        assert held.all()  # every boundary voxel lies in a tile
        assert (lo >= 0).all() and (hi <= np.asarray(shape)).all()  # moved inside the volume (it is large enough)
    assert plan_tiles(pts, PATCH, shape, 1.4, RefineConfig()) == []  # not 1.5x finer than the coarse window


class FakeNetwork(Predictor):
    """A Predictor whose 'network' is `respond(encoded input)`; records every window; with a fake clock every
    run costs 1 s of it."""

    def __init__(self, respond, clock=None, **kw):
        super().__init__(new_model("tiny"), "cpu", **kw)
        self.respond, self.clock, self.windows = respond, clock, []

    def predict_window(self, query, window, tta=1, adapt=True):
        self.windows.append(window)
        if self.clock is not None:
            self.clock.t += 1.0
        return self.respond(encode(window, query.image, query.stats, query.prompts, query.prev_mask,
                                   query.prev_label, query.prev_probs, query.prev_origin))


def pointwise(x):
    """Depends only on each voxel's image value: any window at zoom 1 gives the same probability there."""
    return torch.sigmoid(3 * x[CHANNELS["image"]])


def echo(x):
    """The previous mask OR the positive click balls (what a click should add)."""
    return torch.maximum(x[CHANNELS["prev_seg"]], (x[CHANNELS["click_pos"]] > 0).float())


def test_tiles_blend_to_the_single_window_result_at_zoom_1():
    img = (sphere((16, 16, 16), (8, 7, 9), 5) * 150 + np.random.default_rng(0).integers(0, 60, (16, 16, 16)))
    img = np.pad(img, 4).astype(np.uint8)  # volume (24, 24, 24)
    p = FakeNetwork(pointwise)
    query = ObjectQuery(img, image_stats(img), ClassPrompts(((4, 4, 4), (19, 19, 19)), np.zeros((0, 3)), np.zeros((0, 3))))
    window = Window((4, 4, 4), PATCH, PATCH, img.shape)  # zoom 1
    probs = p.predict_window(query, window)
    tile = lambda w, prev, origin: p.predict_window(query, w)  # noqa: E731
    cfg = RefineConfig(min_zoom=0.0, min_gain=1.0, max_tiles=64, overlap=0.5)
    out = refine(tile, window, probs, cfg)
    assert out is not None and out.tiles_run >= 2 and out.window.patch == out.window.size
    single, blended = volume(window, probs, img.shape), volume(out.window, out.probs, img.shape)
    inner = window.inside()
    assert np.abs(blended[inner] - single[inner]).max() < 1e-5


def test_tiles_see_the_coarse_probabilities_as_previous_mask():
    img = np.zeros((60, 60, 60), np.uint8)
    seen = []

    def tile(w, prev, origin):
        x = encode(w, img, image_stats(img), ClassPrompts(None, np.zeros((0, 3)), np.zeros((0, 3))),
                   prev_probs=prev, prev_origin=origin)
        seen.append(x[CHANNELS["prev_seg"]])
        return x[CHANNELS["prev_seg"]]  # echo the previous mask: the result is the coarse one again

    window = Window((6, 6, 6), (48, 48, 48), PATCH, img.shape)
    probs = torch.from_numpy(sphere(PATCH, (7.5, 7.5, 7.5), 5).astype(np.float32))
    out = refine(tile, window, probs, RefineConfig(max_tiles=1000))
    assert out is not None and out.tiles_run == len(seen) > 1
    assert all(float(s.max()) > 0.9 and float(s.min()) < 0.1 for s in seen)  # tiles sit on the boundary
    coarse, refined = volume(window, probs, img.shape), volume(out.window, out.probs, img.shape)
    assert np.abs(refined - coarse).max() < 1e-4


def test_refinement_stops_when_told_and_is_skipped_when_not_zoomed():
    window = Window((0, 0, 0), (48, 48, 48), PATCH, (48, 48, 48))
    probs = torch.from_numpy(sphere(PATCH, (7.5, 7.5, 7.5), 5).astype(np.float32))
    calls = []

    def tile(w, prev, origin):
        calls.append(w)
        return torch.zeros(PATCH)

    out = refine(tile, window, probs, RefineConfig(max_tiles=1000), keep_going=lambda: len(calls) < 3)
    assert out.tiles_run == 3 < out.tiles_planned
    assert refine(tile, Window((0, 0, 0), (20, 20, 20), PATCH, (48, 48, 48)), probs, RefineConfig()) is None
    assert refine(tile, window, probs, RefineConfig(max_tiles=1000, max_region_voxels=40**3)) is None  # memory


# ---------------------------------------------------------------------------------------- click-local update
def _click_case(shape=(40, 60, 60)):
    prev = np.zeros(shape, np.uint8)
    prev[10:30, 10:30, 5:25] = 1  # class 1, clicked at its edge
    prev[10:30, 35:55, 35:55] = 2  # class 2: no error at this step (no click)
    rng = np.random.default_rng(0)
    data = {"imgs": rng.integers(0, 255, shape, dtype=np.uint8), "spacing": np.ones(3), "prev_pred": prev,
            "clicks": [{"fg": [[20, 20, 26]], "bg": []}, {"fg": [], "bg": []}],
            "clicks_order": [["fg"], [None]]}
    return parse_case(data, "CT_click.npz")


def test_click_local_update_never_changes_voxels_outside_its_patch():
    case = _click_case()
    p = FakeNetwork(echo, click_update="local", max_zoom_outs=0)
    segs = p.predict_case(case)
    assert len(p.windows) == 1  # one native patch, no coarse pass (the extent did not change), class 2 kept
    patch = p.windows[0]
    assert patch.size == PATCH and patch.zoom == 1.0
    outside = np.ones(case.shape, bool)
    outside[patch.inside()] = False
    assert np.array_equal(segs[outside], case.prev_pred[outside])
    assert segs[20, 20, 26] == 1 and case.prev_pred[20, 20, 26] == 0  # the click's voxel was added


def test_local_update_runs_the_coarse_pass_when_the_extent_changes():
    case = _click_case()

    p = FakeNetwork(lambda x: torch.ones(x.shape[1:]), click_update="local", max_zoom_outs=0, refine=None)  # grows
    p.predict_case(case)
    assert len(p.windows) == 2 and p.windows[0].zoom == 1.0 and p.windows[1].size != PATCH
    both = FakeNetwork(echo, click_update="both", max_zoom_outs=0, refine=None)
    both.predict_case(case)
    assert len(both.windows) == 2  # 'both' always runs the coarse pass as well
    full = FakeNetwork(echo, click_update="full", max_zoom_outs=0, refine=None)
    full.predict_case(case)
    assert len(full.windows) == 1  # 'full': class 1's coarse pass only (class 2 had no error: kept)
    assert full.windows[0].size != PATCH or full.windows[0].zoom != 1.0


def test_extent_change_test_looks_only_at_faces_inside_the_volume():
    w = click_window((7, 7, 7), PATCH, (16, 40, 40))  # z and the low y, x faces lie on the volume border
    assert w.start == (0, 0, 0)
    new = np.zeros(PATCH, bool)
    old = np.zeros(PATCH, bool)
    new[0, :8, :8] = True  # changed on border faces only: not a sign of a new extent
    assert not extent_changed(new, old, w, LocalConfig())
    new[:, 15] = True  # the high y face lies inside the volume
    assert extent_changed(new, old, w, LocalConfig())


# ---------------------------------------------------------------------------------------- budget
def test_budget_drops_refinement_first_under_a_slow_network():
    k = 4
    shape = (50, 50, 50 * k)
    data = {"imgs": np.zeros(shape, np.uint8), "spacing": np.ones(3),
            "boxes": [{"z_min": 5, "z_max": 44, "z_mid": 25, "z_mid_x_min": 50 * c + 5, "z_mid_y_min": 5,
                       "z_mid_x_max": 50 * c + 44, "z_mid_y_max": 44} for c in range(k)]}
    case = parse_case(data, "CT_slow.npz")
    clock = FakeClock()
    p = FakeNetwork(lambda x: x[CHANNELS["box_pos"]].clone(), clock, max_zoom_outs=0,
                    refine=RefineConfig(max_tiles=1000))  # answers the box; each run costs 1 s
    budget = B.Budget(k, start=0.0, per_class_run_s=6.0, safety=1.0, reserve_s=0.0, clock=clock,
                      first_run_estimate_s=1.0)
    levels = []
    begin = budget.begin_class
    budget.begin_class = lambda n: levels.append(begin(n)) or levels[-1]
    segs = p.predict_case(case, budget)
    assert levels[0] == B.REFINE and all(lv == B.FULL for lv in levels[1:])  # refinement went first
    coarse = [i for i, w in enumerate(p.windows) if w.zoom > 1.5]
    assert len(coarse) == k  # every class still got its network run
    tiles_first = coarse[1] - coarse[0] - 1
    assert 0 < tiles_first < 30  # class 1's tiles were cut short by the clock (it plans many more)
    assert clock.t <= 6.0 * k
    for c in range(k):
        assert (segs[25, 25, 50 * c + 8: 50 * c + 42] == c + 1).all()


def test_settings_names_and_environment():
    assert predictor_options("coarse+full") == {"refine": None, "click_update": "full", "local": LocalConfig(),
                                                "box_z_clip": True, "anchored_extent": True, "pin_clicks": True,
                                                "intensity": DEFAULT_INTENSITY, "graphcut": None,
                                                "adapt": DEFAULT_ADAPT if ADAPT_BY_DEFAULT else None}
    assert predictor_options("coarse+noanchor")["anchored_extent"] is False
    assert predictor_options("coarse+nopin")["pin_clicks"] is False
    opts = predictor_options("coarse+nozclip+tta=4")
    assert opts["box_z_clip"] is False and opts["tta"] == 4
    opts = predictor_options("refine+both+max_tiles=4+soft_prev=0+local.zoom=1.5")
    assert opts["refine"].max_tiles == 4 and opts["refine"].soft_prev is False and opts["click_update"] == "both"
    assert opts["local"].zoom == 1.5
    with pytest.raises(ValueError):
        predictor_options("coarse+max_tiles=4")
    with pytest.raises(ValueError):
        predictor_options("refine+bogus=1")
    assert env_options({"SEGFM_REFINE": "off", "SEGFM_CLICK_UPDATE": "full"}) == {
        "refine": None, "click_update": "full", "intensity": DEFAULT_INTENSITY, "graphcut": None,
        "adapt": DEFAULT_ADAPT if ADAPT_BY_DEFAULT else None, "volume_weight": DEFAULT_VOLUME_WEIGHT}
    assert env_options({"SEGFM_ADAPT": "on"})["adapt"] == DEFAULT_ADAPT
    assert env_options({}, adapt_by_default=False)["adapt"] is None  # the server's default
    assert predictor_options("coarse+full+noadapt")["adapt"] is None
    assert env_options({"SEGFM_VOLUME_WEIGHT": "0.5"})["volume_weight"] == 0.5
    assert predictor_options("coarse+full+volume_weight=0.25")["volume_weight"] == 0.25
    assert predictor_options("coarse+full+click_zoom=2")["click_zoom"] == 2.0
    for bad in ("-1", "much", "nan"):
        with pytest.raises(ValueError, match="SEGFM_VOLUME_WEIGHT"):
            env_options({"SEGFM_VOLUME_WEIGHT": bad})
    assert env_options({"SEGFM_INTENSITY": "off"})["intensity"] is None
    assert env_options({"SEGFM_GRAPHCUT": "on"})["graphcut"] == DEFAULT_GRAPHCUT
    with pytest.raises(ValueError, match="SEGFM_INTENSITY"):
        env_options({"SEGFM_INTENSITY": "maybe"})
    with pytest.raises(ValueError, match="SEGFM_CLICK_UPDATE"):
        env_options({"SEGFM_CLICK_UPDATE": "sometimes"})


def test_predict_update_returns_only_the_patch_and_an_interaction_budget():
    case = _click_case()
    p = FakeNetwork(echo, click_update="local", max_zoom_outs=0)
    query = ObjectQuery(case.image, image_stats(case.image), ClassPrompts(None, case.fg_clicks[0], case.bg_clicks[0]),
                        case.prev_pred, 1, (slice(10, 30), slice(10, 30), slice(5, 25)), case.fg_clicks[0][-1])
    budget = B.Budget.for_interaction(10.0, run_estimate_s=0.5)
    update = p.predict_update(query, budget.begin_class(1), budget)
    assert update.keeps_outside and update.window.size == PATCH and update.runs == 1
    window, probs = p.predict_object(query)  # the same update merged into the whole object
    patch = update.window.inside()
    assert window.patch == window.size  # native: the previous bbox and the patch together
    assert window.inside() == tuple(slice(min(a.start, b.start), max(a.stop, b.stop))
                                    for a, b in zip(patch, query.prev_slices))
    assert B.Budget.for_interaction(0.05, 0.5).level(1) == B.FALLBACK  # too little time for any run


def test_a_class_without_error_keeps_its_mask_and_costs_no_run():
    """clicks_order None: the organizer found no error in that class, so its previous mask is the answer."""
    case = _click_case()
    p = FakeNetwork(lambda x: torch.ones(x.shape[1:]), click_update="full", max_zoom_outs=0, refine=None)
    segs = p.predict_case(case)
    assert len(p.windows) == 1  # class 1 only
    assert np.array_equal(segs == 2, case.prev_pred == 2)


def test_volume_weight_reaches_the_fusion_of_a_case():
    """Two box-filling classes, the second's box inside the first's and a little less sure (0.9 against 0.95):
    the max rule gives the overlap to the first class; with a volume weight the nested class keeps its box
    (predict_case -> fusion)."""
    shape = (24, 32, 32)
    data = {"imgs": np.random.default_rng(0).integers(0, 255, shape, dtype=np.uint8), "spacing": np.ones(3),
            "boxes": [{"z_min": 2, "z_max": 21, "z_mid": 12, "z_mid_x_min": 2, "z_mid_y_min": 2, "z_mid_x_max": 29,
                       "z_mid_y_max": 29},
                      {"z_min": 10, "z_max": 14, "z_mid": 12, "z_mid_x_min": 12, "z_mid_y_min": 12, "z_mid_x_max": 17,
                       "z_mid_y_max": 17}]}
    def fill(x):
        box = (x[CHANNELS["box_pos"]] > 0).float()
        return box * (0.95 if box.mean() > 0.1 else 0.9)

    inner = (slice(10, 15), slice(12, 18), slice(12, 18))
    plain = FakeNetwork(fill, intensity=None, max_zoom_outs=0, volume_weight=0.0).predict_case(parse_case(data, "CT_nested.npz"))
    weighted = FakeNetwork(fill, intensity=None, max_zoom_outs=0, volume_weight=0.5).predict_case(
        parse_case(data, "CT_nested.npz"))
    assert (plain[inner] == 1).all() and (weighted[inner] == 2).all()
    assert ((plain > 0) == (weighted > 0)).all() and (weighted == 1).sum() > 1000


def test_the_volume_weight_reaches_the_container_worker(monkeypatch):
    """--volume-weight is passed on to the supervised worker; without it the worker reads $SEGFM_VOLUME_WEIGHT."""
    from inference.__main__ import parse_args, volume_weight_text, worker_command

    given = parse_args(["--input-dir", "in", "--output-dir", "out", "--volume-weight", "0.5"])
    assert worker_command(given, 3, 0)[-2:] == ["--volume-weight", "0.5"]
    plain = parse_args(["--input-dir", "in", "--output-dir", "out"])
    assert "--volume-weight" not in worker_command(plain, 3, 0)
    monkeypatch.setenv("SEGFM_VOLUME_WEIGHT", "0.25")
    assert env_options({"SEGFM_VOLUME_WEIGHT": volume_weight_text(plain.volume_weight)})["volume_weight"] == 0.25
