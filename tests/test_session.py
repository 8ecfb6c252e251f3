"""The interactive session (inference/session.py): the container's per-object path, prompts, undo, rollback."""
import numpy as np
import pytest

from evaluation.boxes import boxes_from_gt
from inference.fusion import ProductBackgroundFusion, single_object_mask
from inference.network import new_model
from inference.predictor import Predictor
from inference.prompts import encode
from evaluation.regions import bounding_box
from inference.session import InteractiveSession, SessionError, prepare_image

SHAPE = (24, 40, 48)


def _volume():
    """An image (z, y, x) with one bright ellipsoid and its mask."""
    zz, yy, xx = np.ogrid[:SHAPE[0], :SHAPE[1], :SHAPE[2]]
    gt = ((zz - 12) / 7.0) ** 2 + ((yy - 18) / 9.0) ** 2 + ((xx - 28) / 11.0) ** 2 <= 1
    img = np.random.default_rng(0).integers(40, 80, SHAPE).astype(np.uint8)
    img[gt] = 190
    return img, gt


@pytest.fixture(scope="module")
def tiny():
    return Predictor(new_model("tiny"), "cpu")


class BoxChannelPredictor(Predictor):
    """The 'network' answers the box+ channel, so a prompt's footprint becomes the mask (tests the plumbing)."""

    def __init__(self):
        super().__init__(new_model("tiny"), "cpu", max_zoom_outs=0)
        self.queries = []

    def predict_window(self, query, window, tta=1, adapt=True):
        self.queries.append(query)
        return encode(window, query.image, query.stats, query.prompts)[2].clone()


def _session(predictor, **kw):
    s = InteractiveSession(predictor, seconds_per_interaction=60, **kw)
    img, gt = _volume()
    s.set_image(img[None], spacing=(2.0, 1.0, 1.0))
    return s, img, gt


def test_3d_box_and_clicks_equal_the_container_for_one_object(tiny):
    """The session is the container's per-object path; the container alone also drops what lies outside the
    challenge box's slice range (a viewer's box is not an exact extent) and places a class's window on its
    positive prompts (a session keeps the mask outside the window, so its window must reach a background click)
    and pins its clicked voxels to the organizer's answer."""
    container = Predictor(tiny.model, "cpu", box_z_clip=False, anchored_extent=False, pin_clicks=False)
    s, img, gt = _session(tiny)
    b = boxes_from_gt(gt.astype(np.uint8))[0]
    data = {"imgs": img, "spacing": np.array([1.0, 1.0, 2.0]), "boxes": [b]}
    outside = np.ones(SHAPE, bool)
    outside[b["z_min"]: b["z_max"] + 1] = False
    segs = container.predict(data)
    s.add_box([[b["z_min"], b["z_max"] + 1], [b["z_mid_y_min"], b["z_mid_y_max"] + 1],
               [b["z_mid_x_min"], b["z_mid_x_max"] + 1]])
    assert np.array_equal(s.mask, segs == 1)
    assert np.array_equal(tiny.predict(data) == 1, (segs == 1) & ~outside)
    clicks, order = {"fg": [], "bg": []}, []
    for point, kind in (((12, 18, 28), "fg"), ((3, 5, 5), "bg")):
        clicks[kind].append(list(point))
        order.append(kind)
        segs = container.predict(dict(data, clicks=[clicks], clicks_order=[order], prev_pred=segs))
        s.add_point(point, kind == "fg")
        assert np.array_equal(s.mask, segs == 1)


def test_2d_box_is_one_slice_thick_in_the_image_axis_order():
    p = BoxChannelPredictor()
    s, _, _ = _session(p)
    update = s.add_box([[10, 11], [5.2, 20], [8, 30.4]])  # half-open (z, y, x), floats rounded
    assert p.queries[-1].prompts.box == ((10, 5, 8), (10, 19, 29))
    assert update.ran and update.region is not None
    # the footprint comes back through the window (zoom about 1.7 here): one slice thick, within a voxel of z = 10
    zs, ys, xs = np.nonzero(s.mask)
    assert len(set(zs)) == 1 and set(zs) <= {9, 10, 11}
    assert ys.min() >= 4 and ys.max() <= 20 and xs.min() >= 7 and xs.max() <= 30 and len(zs) > 0.8 * 15 * 22


def test_later_and_negative_boxes_become_voxels_of_the_box_channels():
    p = BoxChannelPredictor()
    s, _, _ = _session(p)
    s.add_box([[10, 11], [5, 10], [8, 12]])
    s.add_box([[12, 13], [20, 25], [30, 35]])
    s.add_box([[14, 15], [0, 2], [0, 3]], positive=False)
    prompts = p.queries[-1].prompts
    assert prompts.box == ((12, 20, 30), (12, 24, 34))  # the latest positive box
    assert len(prompts.lasso_fg) == 5 * 4 and set(prompts.lasso_fg[:, 0]) == {10}
    assert len(prompts.lasso_bg) == 2 * 3 and set(prompts.lasso_bg[:, 0]) == {14}


def test_lasso_and_scribble_crops_are_placed_at_their_bbox(tiny):
    s, _, _ = _session(tiny)
    crop = np.zeros((1, 3, 4), np.uint8)
    crop[0, 1, 2] = 1
    s.add_lasso(crop, True, run_prediction=False, bbox=[[7, 8], [2, 5], [10, 14]])
    s.add_scribble(np.pad(crop, ((3, 20), (0, 37), (0, 44))), False, run_prediction=False)
    v = s.prompts.class_prompts()
    assert v.lasso_fg.tolist() == [[7, 3, 12]] and v.scribble_bg.tolist() == [[3, 1, 2]]
    with pytest.raises(SessionError, match="bbox size"):
        s.add_lasso(crop, True, bbox=[[7, 8], [2, 6], [10, 14]])
    with pytest.raises(SessionError, match="image shape"):
        s.add_scribble(crop, True)
    assert len(s.prompts.class_prompts().lasso_fg) == 1  # refused calls change nothing


def test_points_outside_the_image_are_refused_and_zero_boxes_too(tiny):
    s, _, _ = _session(tiny)
    s.add_point((23.4, -0.4, 47.5), True, run_prediction=False)  # inside the voxels' extent: rounded, clipped
    assert s.prompts.fg == [(23, 0, 47)]
    for bad in ((24.0, 1, 1), (1, -0.6, 1), (1, 1, float("nan")), (1, 2)):
        with pytest.raises(SessionError):
            s.add_point(bad, True)
    with pytest.raises(SessionError, match="size zero"):
        s.add_box([[5, 5], [0, 10], [0, 10]])
    with pytest.raises(SessionError, match="size zero"):
        s.add_box([[30, 40], [0, 10], [0, 10]])  # entirely outside after clipping
    with pytest.raises(SessionError, match="no image"):
        InteractiveSession(tiny).add_point((0, 0, 0), True)


def test_queued_prompts_predict_later_and_undo_restores_prompts_and_mask(tiny):
    s, _, _ = _session(tiny, undo_depth=2)
    assert s.predict().ran is False  # nothing queued
    assert s.add_box([[6, 18], [10, 28], [16, 40]], run_prediction=False).ran is False
    assert not s.mask.any() and s.pending
    first = s.predict()
    assert first.ran and s.mask.any() and not s.pending
    after_box = s.mask.copy()
    click = s.add_point((12, 18, 28), False)
    changed = bounding_box(s.mask != after_box)
    undone = s.undo()
    assert undone.ran and np.array_equal(s.mask, after_box) and s.prompts.bg == []
    assert undone.region == changed  # the tight box of what changed back, inside the click's window
    assert changed is None or all(r.start >= w.start and r.stop <= w.stop for r, w in zip(changed, click.region))
    assert s.undo().ran and not s.mask.any() and s.pending  # back to the queued box
    assert s.undo().ran is False  # depth 2
    s.reset()
    assert not s.mask.any() and s.prompts.box is None and s.undo().ran is False


def test_undo_depth_zero_disables_undo(tiny):
    s, _, _ = _session(tiny, undo_depth=0)
    s.add_point((12, 18, 28), True)
    mask = s.mask.copy()
    assert s.undo().ran is False and np.array_equal(s.mask, mask)


def test_initial_segmentation_becomes_the_mask_and_forgets_prompts(tiny):
    s, _, gt = _session(tiny)
    s.add_point((12, 18, 28), True, run_prediction=False)
    update = s.set_initial_segmentation(gt.astype(np.uint8) * 7)
    assert update.ran is False and np.array_equal(s.mask, gt) and s.prompts.fg == []
    assert s.set_initial_segmentation(gt, run_prediction=True).ran  # refined from the previous mask alone
    with pytest.raises(SessionError):
        s.set_initial_segmentation(gt[:-1])


def test_a_failing_prediction_leaves_the_session_unchanged(tiny):
    s, _, _ = _session(tiny)
    s.add_point((12, 18, 28), True)
    mask, prompts = s.mask.copy(), s.prompts.copy()

    def boom(*a, **k):
        raise RuntimeError("out of memory")
    s.predictor = type("Broken", (), {"predict_object": staticmethod(boom)})()
    with pytest.raises(RuntimeError):
        s.add_point((3, 3, 3), False)
    assert np.array_equal(s.mask, mask) and s.prompts.bg == prompts.bg and s.prompts.fg == prompts.fg


def test_intensity_preparation():
    u8 = np.arange(256, dtype=np.uint8).reshape(4, 8, 8)
    assert prepare_image(u8) is u8
    hu = np.array([-1000, 40 - 200, 40, 240, 3000], np.int16).reshape(1, 1, 5)
    assert prepare_image(hu).ravel().tolist() == [0, 0, 128, 255, 255]  # soft-tissue window W400 L40
    mr = np.linspace(0, 1, 1000, dtype=np.float32).reshape(10, 10, 10)
    out = prepare_image(mr)
    assert out.dtype == np.uint8 and out.min() == 0 and out.max() == 255
    assert prepare_image(hu, "raw") is hu
    with pytest.raises(SessionError):
        prepare_image(np.array([[[np.nan]]], np.float32))
    with pytest.raises(SessionError):
        prepare_image(u8, "bogus")


def test_single_object_mask_is_the_fusion_rule_for_one_class():
    rng = np.random.default_rng(1)
    probs = rng.random((6, 7, 8), dtype=np.float32)
    probs[np.abs(probs - 0.5) < 1e-4] = 0.3
    fusion = ProductBackgroundFusion(probs.shape)
    fusion.add(1, tuple(slice(0, n) for n in probs.shape), probs)
    assert np.array_equal(fusion.labels(), single_object_mask(probs))


def test_set_image_validates_and_resets(tiny):
    s, img, _ = _session(tiny)
    s.add_point((12, 18, 28), True)
    for bad in (np.zeros((2, 4, 4, 4)), np.zeros((4, 4)), np.zeros((0, 4, 4)), np.zeros((4, 4, 4), complex)):
        with pytest.raises(SessionError):
            s.set_image(bad)
    with pytest.raises(SessionError, match="spacing"):
        s.set_image(img, spacing=(1, 0, 1))
    s.set_image(img[:4, :4, :4])
    assert s.shape == (4, 4, 4) and not s.mask.any() and s.prompts.fg == []
