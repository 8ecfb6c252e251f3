"""Per-window fine-tuning at click steps (inference/adapt.py)."""
import contextlib

import numpy as np
import torch

from inference.adapt import AdaptConfig, adapt_and_predict, click_points, redraw_clicks
from inference.network import CHANNELS, new_model
from inference.predictor import Predictor
from inference.prompts import draw_ball
from inference.settings import predictor_options


def _input(pos=((8, 8, 8),), neg=((3, 3, 12),)) -> torch.Tensor:
    x = torch.zeros(8, 16, 16, 16)
    x[CHANNELS["image"]] = torch.from_numpy(np.random.default_rng(0).normal(size=(16, 16, 16)).astype(np.float32))
    for p in pos:
        draw_ball(x[CHANNELS["click_pos"]], p)
    for p in neg:
        draw_ball(x[CHANNELS["click_neg"]], p)
    return x


def _probs(model, x):
    with torch.no_grad():
        logits = model.net(x[None])
    return torch.sigmoid(logits[0, 1] - logits[0, 0])


def test_click_points_are_read_back_and_redrawn():
    x = _input(pos=((8, 8, 8), (2, 13, 4)))
    pos, neg = click_points(x)
    assert sorted(map(tuple, pos)) == [(2, 13, 4), (8, 8, 8)] and [tuple(p) for p in neg] == [(3, 3, 12)]
    y = redraw_clicks(x, [pos[0]], [])
    assert float(y[CHANNELS["click_neg"]].sum()) == 0.0
    assert len(click_points(y)[0]) == 1
    assert torch.equal(y[CHANNELS["image"]], x[CHANNELS["image"]])  # only the click channels change


def test_adaptation_learns_the_clicks_and_leaves_the_model_alone():
    model = new_model("tiny", seed=1)
    before = {k: v.clone() for k, v in model.net.state_dict().items()}
    x = _input()
    p0 = _probs(model, x)
    cfg = AdaptConfig(steps=60, lr=3e-3, anchor=0.0, box_only=False)
    p = adapt_and_predict(model.net, x, p0, cfg, contextlib.nullcontext, torch.device("cpu"))
    assert p is not None and p.shape == (16, 16, 16)
    assert float(p0[8, 8, 8]) < 0.5 < 0.9 < float(p[8, 8, 8])  # the foreground click, left out, is learnt
    assert float(p[3, 3, 12]) < 0.1 < float(p0[3, 3, 12])  # and the background one
    assert all(torch.equal(v, model.net.state_dict()[k]) for k, v in before.items())  # a copy was tuned


def test_no_clicks_or_no_box_no_adaptation():
    model = new_model("tiny", seed=2)
    x = _input(pos=(), neg=())
    x[CHANNELS["box_pos"], 2:14, 2:14, 2:14] = 1.0
    assert adapt_and_predict(model.net, x, _probs(model, x), AdaptConfig(), contextlib.nullcontext,
                             torch.device("cpu")) is None
    x = _input()  # clicks but no box
    assert adapt_and_predict(model.net, x, _probs(model, x), AdaptConfig(steps=1), contextlib.nullcontext,
                             torch.device("cpu")) is None
    assert adapt_and_predict(model.net, x, _probs(model, x), AdaptConfig(steps=1, box_only=False),
                             contextlib.nullcontext, torch.device("cpu")) is not None
    small = torch.zeros(16, 16, 16)
    small[7:9, 7:9, 7:9] = 1.0  # an 8-voxel mask: under min_voxels, left alone
    assert adapt_and_predict(model.net, x, small, AdaptConfig(steps=1, box_only=False, min_voxels=9),
                             contextlib.nullcontext, torch.device("cpu")) is None
    assert adapt_and_predict(model.net, x, small, AdaptConfig(steps=1, box_only=False, min_voxels=8),
                             contextlib.nullcontext, torch.device("cpu")) is not None


def test_setting_turns_it_on():
    opts = predictor_options("coarse+full+adapt+adapt.steps=3")
    assert opts["adapt"] == AdaptConfig(steps=3)
    assert predictor_options("coarse+full+adapt+adapt.box_only=0")["adapt"].box_only is False
    assert predictor_options("coarse+full")["adapt"] is None
    p = Predictor(new_model("tiny"), "cpu", **opts)
    assert p.adapt.steps == 3


def test_only_full_and_refine_levels_adapt(monkeypatch):
    import inference.predictor as P
    from inference import budget as B
    from inference.case_io import parse_case
    from inference.predictor import ObjectQuery, class_prompts
    from inference.prompts import image_stats

    calls = []

    def fake(net, x, probs0, cfg, autocast, device):
        calls.append(cfg.steps)
        return None  # "nothing learnt": the network's own probabilities stand

    monkeypatch.setattr(P, "adapt_and_predict", fake)
    rng = np.random.default_rng(0)
    case = parse_case({"imgs": rng.integers(0, 255, (20, 30, 30), dtype=np.uint8), "spacing": np.ones(3),
                       "clicks": [{"fg": [[10, 15, 15]], "bg": []}], "clicks_order": [["fg"]]}, "CT_a.npz")
    p = Predictor(new_model("tiny"), "cpu", adapt=AdaptConfig(steps=2), max_zoom_outs=0)
    query = ObjectQuery(case.image, image_stats(case.image), class_prompts(case, 0))
    for level, expected in ((B.NO_ZOOM, 0), (B.REDUCED, 0), (B.FULL, 1)):
        calls.clear()
        assert p.predict_update(query, level) is not None
        assert len(calls) == expected, B.LEVEL_NAMES[level]


def test_the_adapt_switch_reaches_the_container_worker(monkeypatch):
    """--adapt (or $SEGFM_ADAPT) is passed on to the supervised worker; without either the default holds."""
    from inference.__main__ import parse_args, worker_command

    monkeypatch.delenv("SEGFM_ADAPT", raising=False)
    plain = parse_args(["--input-dir", "in", "--output-dir", "out"])
    assert plain.adapt is None and "--adapt" not in worker_command(plain, 3, 0)
    given = parse_args(["--input-dir", "in", "--output-dir", "out", "--adapt", "on"])
    cmd = worker_command(given, 3, 0)
    assert cmd[cmd.index("--adapt") + 1] == "on"
    monkeypatch.setenv("SEGFM_ADAPT", "on")
    assert parse_args(["--input-dir", "in", "--output-dir", "out"]).adapt == "on"

