"""training/: samples, click simulation, loss, steps, resume, warm start, config (tiny network, tiny patches)."""
from __future__ import annotations

import itertools
from dataclasses import asdict, fields, replace
from pathlib import Path

import numpy as np
import pytest
import torch

from evaluation.boxes import boxes_from_gt
from evaluation.clicks import simulate_click
from inference.network import CHANNELS, PROFILES, load_model, new_model
from training import config as C
from training.data import (PROMPT_KINDS, CaseStore, SampleOptions, StreamSampler, list_cases, make_sample,
                           modality_of, organizer_box, select_coreset, write_synthetic_cases)
from training.simulate import place_click, segmentation_loss, simulate_prompts, skeleton_recall, tubed_skeleton
from training.train import GROUPS, add_group_dice, group_means, lr_at, setup, train, train_step

from nninteractive_format import write_nninteractive_folder

PATCH = (16, 16, 16)


@pytest.fixture(scope="module")
def cases(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("cases")
    write_synthetic_cases(folder, n=3, shape=(20, 28, 28), n_classes=3, seed=1)
    return folder


def tiny_cfg(cases: Path, out: Path, **kw) -> C.TrainConfig:
    base = dict(data=str(cases), out=str(out), profile="tiny", steps=2, batch_size=2, ckpt_every=1000, log_every=1,
                progress=False, cache_dir="", threads=2, seed=3)
    base.update(kw)
    return C.TrainConfig(**base)


# ---------------------------------------------------------------------- data
def test_case_listing_modality_and_coreset(tmp_path):
    for rel in ["CT/AMOS/CT_AMOS_a.npz", "CT/AMOS/CT_AMOS_b.npz", "CT/X/CT_X_c.npz", "MR/Y/MR_Y_d.npz",
                "US/Z/US_Z_e.npz", "CT/.hidden/CT_h.npz"]:
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"")
    paths = list_cases(tmp_path)
    assert len(paths) == 5
    assert [modality_of(p, tmp_path) for p in paths] == ["CT", "CT", "CT", "MR", "US"]
    assert modality_of(Path("flat/MR_TotalSeg_x.npz")) == "MR"
    a = select_coreset(paths, 0.34, seed=5, root=tmp_path)
    assert a == select_coreset(paths, 0.34, seed=5, root=tmp_path)
    assert sorted(modality_of(p, tmp_path) for p in a) == ["CT", "MR", "US"]  # one of 3 CT, >= 1 of each


def test_sample_box_and_nobox(cases):
    store = CaseStore(list_cases(cases))
    for p_no_box, has_box in ((0.0, True), (1.0, False)):
        opts = SampleOptions(PATCH, p_no_box=p_no_box)
        s = make_sample(store, opts, seed=0, index=7)
        assert s["input"].shape == (8, *PATCH) and s["input"].dtype == np.float32
        assert s["target"].shape == PATCH and s["target"].dtype == bool and s["target"].any()
        assert bool(s["has_box"]) == has_box
        x = s["input"]
        assert (x[CHANNELS["box_pos"]].max() == 1.0) == has_box
        assert (x[CHANNELS["click_pos"]].max() > 0.99) == (not has_box)
        for ch in ("prev_seg", "box_neg", "click_neg", "scribble_pos", "scribble_neg"):
            assert not x[CHANNELS[ch]].any()
        if not has_box:  # the drawn first click sits at click0 (patch coordinates, z, y, x)
            c = np.round(s["click0"]).astype(int)
            assert x[CHANNELS["click_pos"]][tuple(c)] == pytest.approx(1.0)
    again = make_sample(store, SampleOptions(PATCH), seed=0, index=7)
    np.testing.assert_array_equal(again["input"], make_sample(store, SampleOptions(PATCH), seed=0, index=7)["input"])


def test_first_click_and_box_match_evaluation(cases):
    store = CaseStore(list_cases(cases))
    case = store.get(1)
    for label in case.labels:
        full = np.asarray(case.gts) == label
        (coord, kind) = simulate_click(np.zeros_like(full), full)
        assert kind == "fg" and store.first_click(1, int(label)) == tuple(coord)
        lo, hi = organizer_box(case, int(label), seed=11)
        b = boxes_from_gt(full.astype(np.uint8), labels=[1], seed=11)[0]
        assert lo == (b["z_min"], b["z_mid_y_min"], b["z_mid_x_min"])
        assert hi == (b["z_max"], b["z_mid_y_max"], b["z_mid_x_max"])


def test_mmap_cache_for_big_volumes(cases, tmp_path):
    store = CaseStore(list_cases(cases), cache_dir=tmp_path / "npy", mmap_min_mb=0.0)
    case = store.get(0)
    assert isinstance(case.image, np.memmap) and isinstance(case.gts, np.memmap)
    with np.load(store.paths[0]) as z:
        np.testing.assert_array_equal(case.gts, z["gts"])
    s = make_sample(store, SampleOptions(PATCH), 0, 0)
    assert s["input"].shape == (8, *PATCH)


def test_stream_sampler_is_disjoint_across_ranks_and_resumable():
    take = lambda s, n: list(itertools.islice(iter(s), n))  # noqa: E731
    r0, r1 = take(StreamSampler(2, 0, 2), 6), take(StreamSampler(2, 1, 2), 6)
    assert not set(r0) & set(r1)
    assert take(StreamSampler(2, 0, 2, start=1), 4) == r0[2:6]


# ---------------------------------------------------------------------- simulation and loss
def test_place_click_agrees_with_evaluation():
    target = np.zeros(PATCH, bool)
    target[3:12, 4:13, 2:10] = True
    pred = target.copy()
    pred[3:12, 4:13, 2:6] = False  # under-segmentation: an fg click
    pred[0:2, 0:3, 0:3] = True      # small over-segmentation
    x = torch.zeros((8, *PATCH))
    kind = place_click(x, pred, target)
    (coord, ekind) = simulate_click(pred, target)
    assert kind == ekind == "fg"
    assert x[CHANNELS["click_pos"]][coord] == pytest.approx(1.0)
    assert not x[CHANNELS["click_neg"]].any()
    assert torch.equal(x[CHANNELS["prev_seg"]], torch.from_numpy(pred.astype(np.float32)))
    # over-segmentation dominates: a bg click
    pred2 = target.copy()
    pred2[:, :, 10:] = True
    x2 = torch.zeros((8, *PATCH))
    assert place_click(x2, pred2, target) == "bg"
    (coord2, _) = simulate_click(pred2, target)
    assert x2[CHANNELS["click_neg"]][coord2] == pytest.approx(1.0)
    assert place_click(torch.zeros((8, *PATCH)), target, target) is None


def test_simulate_prompts_rounds_and_skip():
    target = torch.zeros((2, *PATCH), dtype=torch.bool)
    target[:, 4:12, 4:12, 4:12] = True
    x = torch.zeros((2, 8, *PATCH))
    calls = []

    def predict(inp):
        calls.append(inp.clone())
        return torch.zeros(inp.shape[0], *PATCH)  # empty prediction: the first error is the whole target

    has_box = torch.tensor([True, False])
    out, st = simulate_prompts(predict, x, target, has_box, np.random.default_rng(0), p_click=0.0)
    assert out is x and not calls and st.stage1_passes == 0
    out, st = simulate_prompts(predict, x, target, has_box, np.random.default_rng(0), p_click=0.0,
                               nobox_always_click=True)
    assert st.stage1_passes == 1 and st.clicks_fg == 1
    assert not out[0, CHANNELS["click_pos"]].any() and out[1, CHANNELS["click_pos"]].any()
    calls.clear()
    out, st = simulate_prompts(predict, x, target, has_box, np.random.default_rng(0), p_click=1.0, rounds=2)
    assert st.stage1_passes == 2 and len(calls) == 2 and st.clicks_fg == 4
    (coord, _) = simulate_click(np.zeros(PATCH, bool), target[0].numpy())
    assert out[0, CHANNELS["click_pos"]][coord] == pytest.approx(1.0)
    assert not x.any()  # the input batch itself is untouched
    drawn = set()
    for seed in range(12):
        calls.clear()
        _, st = simulate_prompts(predict, x, target, has_box, np.random.default_rng(seed), p_click=1.0, rounds=1,
                                 max_rounds=3)
        drawn.add(st.stage1_passes)
        _, again = simulate_prompts(predict, x, target, has_box, np.random.default_rng(seed), p_click=1.0,
                                    rounds=1, max_rounds=3)
        assert again.stage1_passes == st.stage1_passes  # a pure function of the batch's generator
    assert drawn == {1, 2, 3}


def test_simulate_prompts_staged_copy_matches_in_place(monkeypatch):
    """On a GPU the clicks are placed on a CPU copy and the edited channels copied back once per round; the
    batch that comes out is the one that in-place editing gives (forced here on the CPU)."""
    import training.simulate as sim

    rng = np.random.default_rng(3)
    target = torch.from_numpy(rng.random((3, *PATCH)) > 0.7)
    x = torch.from_numpy(rng.random((3, 8, *PATCH)).astype(np.float32))

    def predict(inp):  # depends on the clicks and the previous mask, so every round sees the last one's edits
        return torch.sigmoid(inp[:, CHANNELS["click_pos"]] - inp[:, CHANNELS["click_neg"]] + inp[:, 0] - 0.5
                             + inp[:, CHANNELS["prev_seg"]])

    has_box = torch.tensor([True, False, True])
    ref, st_ref = simulate_prompts(predict, x, target, has_box, np.random.default_rng(1), p_click=1.0, rounds=3)
    monkeypatch.setattr(sim, "staging_copy", lambda t: t.clone())
    out, st = simulate_prompts(predict, x, target, has_box, np.random.default_rng(1), p_click=1.0, rounds=3)
    assert st == st_ref and st.clicks_fg + st.clicks_bg > 3
    assert torch.equal(out, ref)


def test_simulate_prompts_with_a_click_pool_places_the_same_clicks():
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(4)
    target = torch.from_numpy(rng.random((4, *PATCH)) > 0.6)
    x = torch.from_numpy(rng.random((4, 8, *PATCH)).astype(np.float32))

    def predict(inp):
        return torch.sigmoid(inp[:, CHANNELS["click_pos"]] - inp[:, CHANNELS["click_neg"]] + inp[:, 0] - 0.5)

    has_box = torch.ones(4, dtype=torch.bool)
    ref, st_ref = simulate_prompts(predict, x, target, has_box, np.random.default_rng(2), p_click=1.0, rounds=3)
    with ThreadPoolExecutor(3) as pool:
        out, st = simulate_prompts(predict, x, target, has_box, np.random.default_rng(2), p_click=1.0, rounds=3,
                                   pool=pool)
    assert st == st_ref and st.clicks_fg + st.clicks_bg == 12
    assert torch.equal(out, ref)


def test_click_focus_collects_the_clicked_components():
    target = torch.zeros((2, *PATCH), dtype=torch.bool)
    target[:, 2:7, 2:7, 2:7] = True
    spurious = torch.zeros(PATCH)
    spurious[10:15, 10:15, 9:15] = 1.0  # a false positive larger than the missed object: the first click is 'bg'
    x = torch.zeros((2, 8, *PATCH))

    def predict(inp):  # ignores the clicks: the same errors every round
        return spurious.expand(inp.shape[0], *PATCH).clone()

    has_box = torch.tensor([True, True])
    plain, st = simulate_prompts(predict, x, target, has_box, np.random.default_rng(0), p_click=1.0, rounds=1)
    assert st.focus is None and st.clicks_bg == 2
    out, st = simulate_prompts(predict, x, target, has_box, np.random.default_rng(0), p_click=1.0, rounds=1,
                               focus=True)
    assert torch.equal(out, plain) and st.clicks_bg == 2  # the prompts do not change
    assert st.focus.shape == (2, *PATCH) and np.array_equal(st.focus[0], spurious.numpy() > 0)
    assert np.array_equal(st.focus[1], st.focus[0])


def test_click_focus_loss_averages_bce_over_each_component():
    target = torch.zeros((2, *PATCH), dtype=torch.bool)
    target[:, :8] = True
    logits = torch.zeros((2, 2, *PATCH))
    logits[0, 1, 12:, :4, :4] = 3.0  # sample 0: a confident false positive, its clicked component
    focus = torch.zeros((2, *PATCH), dtype=torch.bool)
    focus[0, 12:, :4, :4] = True  # sample 1 clicked nothing: it adds 0
    base, parts0 = segmentation_loss(logits, target, 10.0)
    same, _ = segmentation_loss(logits, target, 10.0, focus, 0.0)
    assert same.item() == pytest.approx(base.item()) and "focus_bce" not in parts0
    loss, parts = segmentation_loss(logits, target, 10.0, focus, 2.0)
    per_voxel = float(torch.nn.functional.softplus(torch.tensor(3.0)))  # BCE of logit 3 against 0
    assert parts["focus_bce"] == pytest.approx(per_voxel / 2, rel=1e-5)
    assert loss.item() == pytest.approx(base.item() + 2.0 * per_voxel / 2, rel=1e-5)


def test_loss_weights_dice_ten_times():
    target = torch.zeros((1, *PATCH), dtype=torch.bool)
    target[:, :8] = True
    logits = torch.zeros((1, 2, *PATCH))
    loss, parts = segmentation_loss(logits, target, dice_weight=10.0)
    # p = 0.5 everywhere: soft Dice = (2 * 0.5 * n/2 + 1) / (n/2 + n/2 + 1) ~ 0.5, BCE = log 2
    n = np.prod(PATCH)
    sd = (0.5 * n + 1) / (n + 1)
    assert loss.item() == pytest.approx(10 * (1 - sd) + np.log(2), rel=1e-5)
    assert parts["bce"] == pytest.approx(np.log(2), rel=1e-5)


def test_lr_schedules():
    cfg = C.TrainConfig(steps=100, lr=1.0, warmup_steps=10, schedule="cosine")
    assert lr_at(0, cfg) == pytest.approx(0.1) and lr_at(10, cfg) == pytest.approx(1.0)
    assert lr_at(99, cfg) < 0.01
    assert lr_at(50, replace(cfg, schedule="constant")) == 1.0
    assert 0 < lr_at(55, replace(cfg, schedule="poly")) < 1.0
    assert lr_at(20, cfg, clock_step=99) == lr_at(99, cfg) and lr_at(60, cfg, clock_step=20) == lr_at(60, cfg)
    assert lr_at(5, cfg, clock_step=99) == pytest.approx(0.6)  # the warm-up counts real steps


# ---------------------------------------------------------------------- steps, checkpoints, resume
def test_step_changes_weights_and_loss_falls_on_fixed_batch(cases, tmp_path):
    cfg = tiny_cfg(cases, tmp_path / "run", p_click=0.0, lr=3e-3, intensity_scale=0.0, intensity_shift=0.0)
    tr = setup(cfg)
    batch = next(tr.batches)
    tr.batches = itertools.repeat(batch)
    before = {k: v.clone() for k, v in tr.net.state_dict().items()}
    losses = [train_step(tr)["loss"]]
    after = tr.net.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    for _ in range(5):
        losses.append(train_step(tr)["loss"])
    assert losses[-1] < losses[0]


class Killed(Exception):
    """Stands for a training process killed after a step."""


def kill_at(step: int):
    """An on_step callback that stops the run after `step`."""
    def on_step(tr, metrics):
        if tr.step == step:
            raise Killed
    return on_step


def test_checkpoints_resume_exactly(cases, tmp_path):
    common = dict(steps=3, p_click=1.0, p_no_box=0.5, ckpt_every=2)
    full = train(tiny_cfg(cases, tmp_path / "a", **common))
    run_a = full.net.state_dict()
    losses_a = [float(r) for r in _csv(tmp_path / "a", "loss")]

    with pytest.raises(Killed):
        train(tiny_cfg(cases, tmp_path / "b", **common), on_step=kill_at(2))
    ck = torch.load(tmp_path / "b" / "last.pt", weights_only=True)
    assert ck["step"] == 2 and ck["config"]["steps"] == 3 and "optimizer" in ck and "rng" in ck
    resumed = train(tiny_cfg(cases, tmp_path / "b", resume=True), given={"resume"})
    assert resumed.step == 3
    for k, v in resumed.net.state_dict().items():
        assert torch.equal(v, run_a[k]), k
    losses_b = [float(r) for r in _csv(tmp_path / "b", "loss")]
    assert losses_b == losses_a  # rows of steps 1-2 kept, step 3 identical
    # the native export and the training checkpoint both load for inference
    for name in ("model.pt", "last.pt"):
        m = load_model(tmp_path / "b" / name)
        assert m.patch_size == PROFILES["tiny"].patch_size and m.meta["step"] == 3
    assert (tmp_path / "b" / "curves.png").is_file() and (tmp_path / "b" / "config.json").is_file()


def test_ema_is_the_moving_average_of_the_steps_and_resumes(cases, tmp_path):
    common = dict(steps=3, ckpt_every=2, ema=0.5, snapshot_every=2)
    weights = []
    full = train(tiny_cfg(cases, tmp_path / "a", **common),
                 on_step=lambda tr, m: weights.append({k: v.detach().clone() for k, v in tr.net.state_dict().items()}))
    expected = {k: v.clone() for k, v in weights[0].items()}  # the first update copies the weights
    for w in weights[1:]:
        expected = {k: 0.5 * expected[k] + 0.5 * w[k] for k in expected}
    ema = load_model(tmp_path / "a" / "model_ema.pt")
    assert ema.meta["ema"] == 0.5 and ema.meta["step"] == 3
    for k, v in ema.net.state_dict().items():
        torch.testing.assert_close(v, expected[k], rtol=1e-6, atol=1e-7)
    assert any(not torch.equal(v, full.net.state_dict()[k]) for k, v in ema.net.state_dict().items())
    assert (tmp_path / "a" / "snapshots_ema" / "model_000002.pt").is_file()

    with pytest.raises(Killed):
        train(tiny_cfg(cases, tmp_path / "b", **common), on_step=kill_at(2))
    train(tiny_cfg(cases, tmp_path / "b", resume=True), given={"resume"})
    resumed = load_model(tmp_path / "b" / "model_ema.pt").net.state_dict()
    for k, v in ema.net.state_dict().items():
        assert torch.equal(resumed[k], v), k


def test_time_limit_ends_the_run_on_time_with_the_decay_done(cases, tmp_path):
    seconds = itertools.count()  # a clock that reads one second later at every reading
    cfg = tiny_cfg(cases, tmp_path / "a", steps=1000, schedule="cosine", lr=1e-3, min_lr=0.0, ckpt_every=1000,
                   time_limit_min=0.25)
    tr = train(cfg, clock=lambda: float(next(seconds)))
    assert 2 <= tr.step < 20  # 15 s of this clock, a few readings per step
    assert load_model(tmp_path / "a" / "model.pt").meta["step"] == tr.step  # saved though no checkpoint was due
    assert torch.load(tmp_path / "a" / "last.pt", weights_only=True)["step"] == tr.step
    lrs = [float(v) for v in _csv(tmp_path / "a", "lr")]
    steps = [int(v) for v in _csv(tmp_path / "a", "step")]
    assert steps == list(range(1, tr.step + 1))  # every step logged, the last one too
    assert all(b <= a for a, b in zip(lrs, lrs[1:])) and lrs[-1] < 0.1 * lrs[0]  # the decay follows the clock


def test_training_dice_is_logged_per_source_and_prompt_kind(cases, tmp_path):
    totals: dict[str, float] = {}
    add_group_dice(totals, np.array([0.2, 0.6]), {"source": torch.tensor([0, 2]), "kind": torch.tensor([1, 1])})
    add_group_dice(totals, np.array([1.0, 0.4]), {"source": torch.tensor([0, 0]), "kind": torch.tensor([0, 1])})
    means = group_means(totals)
    assert means == pytest.approx({"dice_real": 1.6 / 3, "dice_pseudo": 0.6, "dice_nobox": 0.4, "dice_box": 1.0})

    train(tiny_cfg(cases, tmp_path / "a", steps=2, log_every=2, p_no_box=0.5))  # real images only
    dice = float(_csv(tmp_path / "a", "dice")[0])
    assert float(_csv(tmp_path / "a", "dice_real")[0]) == pytest.approx(dice, abs=1e-5)
    assert _csv(tmp_path / "a", "dice_synth") == []  # a source without samples leaves its column blank
    kinds = [float(v) for k in GROUPS if k.removeprefix("dice_") in PROMPT_KINDS for v in _csv(tmp_path / "a", k)]
    assert kinds and all(0.0 <= v <= 1.0 for v in kinds)
    step_s = float(_csv(tmp_path / "a", "s_per_step")[0])  # where a step's time goes: loader and click simulation
    parts = [float(_csv(tmp_path / "a", k)[0]) for k in ("wait_s", "sim_s")]
    assert all(0.0 <= v for v in parts) and sum(parts) <= step_s
    assert _csv(tmp_path / "a", "focus_bce") == []  # the click-focus term is off by default


def test_click_focus_weight_is_trained_and_logged(cases, tmp_path):
    train(tiny_cfg(cases, tmp_path / "f", steps=2, log_every=2, p_click=1.0, click_focus_weight=1.0))
    focus = [float(v) for v in _csv(tmp_path / "f", "focus_bce")]
    assert len(focus) == 1 and focus[0] > 0.0  # an untrained network leaves errors: clicks and their components
    with pytest.raises(ValueError, match="click-focus-weight"):
        C.TrainConfig(click_focus_weight=-1.0).validate()


def test_tubed_skeleton_follows_a_thin_tube_inside_it():
    mask = np.zeros((24, 24, 24), bool)
    mask[4:20, 10:13, 10:13] = True  # a 3-voxel-thick rod along z
    mask[4:20, 2:8, 14:22] = True    # a thicker block beside it
    skel = tubed_skeleton(mask)
    assert skel.dtype == bool and not (skel & ~mask).any()  # inside the target only
    rod = skel[:, 10:13, 10:13]
    assert rod[6:18].any(axis=(1, 2)).all()  # the rod's middle is covered slice by slice
    assert skel.sum() < 0.5 * mask.sum()  # a thin core, not the whole object
    assert np.array_equal(tubed_skeleton(mask), skel) and not tubed_skeleton(np.zeros_like(mask)).any()
    rod = np.zeros((16, 16, 16), bool)
    rod[4:12, 7:9, 7:9] = True  # Lee's thinning erases a 2 x 2 rod: it counts whole
    assert np.array_equal(tubed_skeleton(rod), rod)


def test_skeleton_recall_term():
    target = torch.zeros((2, *PATCH), dtype=torch.bool)
    target[0, 4:12, 7:9, 7:9] = True  # sample 1 has no object: it does not count
    skel = torch.from_numpy(np.stack([tubed_skeleton(t) for t in target.numpy()]))
    assert skel[0].any() and not skel[1].any()
    right = torch.where(target[:, None], 1.0, -1.0) * torch.tensor([-8.0, 8.0]).view(1, 2, 1, 1, 1)
    assert skeleton_recall(torch.sigmoid(right[:, 1] - right[:, 0]), skel).item() == pytest.approx(1.0, abs=1e-6)
    base, parts0 = segmentation_loss(right, target, 10.0)
    same, parts = segmentation_loss(right, target, 10.0, skeleton=skel, skeleton_weight=5.0)
    assert same.item() == pytest.approx(base.item(), abs=1e-5) and parts["skel_recall"] == pytest.approx(1.0, abs=1e-6)
    assert "skel_recall" not in parts0
    missed = torch.zeros((2, 2, *PATCH), requires_grad=True)  # p = 0.5 everywhere: recall 0.5
    loss, parts = segmentation_loss(missed, target, 10.0, skeleton=skel, skeleton_weight=5.0)
    assert parts["skel_recall"] == pytest.approx(0.5)
    loss.backward()
    assert missed.grad[0, 1][skel[0]].lt(0).all()  # the term pushes the skeleton's voxels up
    with pytest.raises(ValueError, match="skeleton-weight"):
        C.TrainConfig(skeleton_weight=-1.0).validate()


def test_skeleton_weight_is_trained_and_logged(cases, tmp_path):
    train(tiny_cfg(cases, tmp_path / "s", steps=2, log_every=2, skeleton_weight=2.0))
    recall = [float(v) for v in _csv(tmp_path / "s", "skel_recall")]
    assert len(recall) == 1 and 0.0 < recall[0] <= 1.0


def _csv(folder: Path, col: str) -> list[str]:
    import csv
    with open(folder / "log.csv", newline="") as fh:
        return [r[col] for r in csv.DictReader(fh) if r[col]]


def test_warm_start_from_nninteractive_folder(cases, tmp_path):
    src = new_model("tiny", seed=123)
    folder = write_nninteractive_folder(tmp_path / "nnInteractive_v1.0", src.net.state_dict(),
                                        PROFILES["tiny"].arch, patch_size=(16, 16, 16))
    tr = setup(tiny_cfg(cases, tmp_path / "warm", init=str(folder), profile="lite"))
    assert tr.model.meta["origin"] == "nnInteractive v1.0 folder"
    got = tr.net.state_dict()
    for k, v in src.net.state_dict().items():
        assert torch.equal(got[k], v), k
    assert tr.patch == (16, 16, 16)
    train_step(tr)  # the 8-channel layout trains as is


def test_grad_checkpoint_flips_and_accumulation_step(cases, tmp_path):
    cfg = tiny_cfg(cases, tmp_path / "gc", grad_checkpoint=True, flip=True, accum=2, p_click=1.0,
                   schedule="cosine", warmup_steps=1, click_threads=2)
    tr = setup(cfg)
    assert tr.click_pool is not None  # --click-threads 2: the clicks of a batch are computed in 2 threads
    before = {k: v.clone() for k, v in tr.net.state_dict().items()}
    m = train_step(tr)
    assert np.isfinite(m["loss"]) and m["clicked"] == 1.0 and tr.step == 1
    assert any(not torch.equal(before[k], v) for k, v in tr.net.state_dict().items())


# ---------------------------------------------------------------------- command line
def test_cli_documents_every_option(capsys):
    with pytest.raises(SystemExit):
        C.build_parser().parse_args(["--help"])
    text = capsys.readouterr().out
    for f in fields(C.TrainConfig):
        assert "--" + f.name.replace("_", "-") in text, f.name
    cfg, given = C.config_from_args(["--profile", "tiny", "--no-channels-last", "--steps", "5"])
    assert cfg.profile == "tiny" and cfg.channels_last is False and cfg.steps == 5
    assert given == {"profile", "channels_last", "steps"}
    assert C.from_dict(asdict(cfg)) == cfg


def test_sample_workers_end_with_a_killed_training_process(tmp_path):
    """A SIGKILLed training process leaves no sample worker behind, even one busy inside a slow (here: hung)
    sample, where torch's own parent check never runs (training.data.die_with_parent)."""
    import os
    import subprocess
    import sys
    import time
    script = tmp_path / "run.py"
    script.write_text(
        "import os, signal, sys, time, torch\n"
        "from training.data import die_with_parent\n"
        "class Endless(torch.utils.data.IterableDataset):\n"
        "    def __iter__(self):\n"
        "        yield torch.zeros(4)\n"
        "        yield torch.zeros(4)\n"
        "        time.sleep(600)\n"  # a sample that takes for ever
        "loader = torch.utils.data.DataLoader(Endless(), batch_size=2, num_workers=1, prefetch_factor=4,\n"
        "    persistent_workers=True, worker_init_fn=die_with_parent, multiprocessing_context='fork')\n"
        "it = iter(loader); next(it)\n"
        "print(' '.join(str(w.pid) for w in it._workers), flush=True)\n"
        "time.sleep(1.0)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n")
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    res = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=120)
    pids = [int(p) for p in res.stdout.split()]
    assert pids, res.stderr

    def alive(pid: int) -> bool:
        try:
            with open(f"/proc/{pid}/stat") as fh:
                return fh.read().split(")")[-1].split()[0] != "Z"
        except FileNotFoundError:
            return False
    deadline = time.time() + 10
    while any(alive(p) for p in pids) and time.time() < deadline:
        time.sleep(0.1)
    assert not any(alive(p) for p in pids)


def test_curve_rows_round_trip(tmp_path):
    """training.curve keeps the rows of an earlier curve.csv with their types (steps scored once)."""
    from training.curve import read_rows, write_rows
    rows = [{"step": 500, "hours": 0.25, "mode": "box", "case": "a.npz", "classes": 4, "DSC_1": 0.5,
             "DSC_Final": 0.6, "DSC_AUC": 2.0, "NSD_Final": 0.4, "boxfill_DSC_Final": 0.3}]
    write_rows(rows, tmp_path / "curve.csv")
    assert read_rows(tmp_path / "curve.csv") == rows
    assert read_rows(tmp_path / "missing.csv") == []


def test_worker_batches_are_the_same_through_pipes_and_shared_memory(cases):
    """make_loader: numpy through the pipes, torch tensors in shared memory and no workers give equal batches;
    shared memory is chosen only where /dev/shm holds twice what the workers keep in flight."""
    from training.data import PromptDataset, loader_uses_shm, make_loader
    dataset = PromptDataset(CaseStore(list_cases(cases)), SampleOptions(patch=PATCH), seed=4)

    def first(n: int, **kw) -> list[dict[str, torch.Tensor]]:
        it = make_loader(dataset, StreamSampler(3), 3, **kw)
        return [next(it) for _ in range(n)]
    ref = first(2, num_workers=0)
    for shared in (False, True):
        got = first(2, num_workers=1, shared=shared)
        for a, b in zip(ref, got):
            assert set(a) == set(b)
            for k in a:  # exactly equal (click0 is NaN where the first prompt is not a click)
                torch.testing.assert_close(b[k], a[k], rtol=0, atol=0, equal_nan=True)
    assert loader_uses_shm(225 << 20, 15, 4, free_bytes=64 << 30)
    assert not loader_uses_shm(225 << 20, 15, 4, free_bytes=64 << 20)  # a container's default /dev/shm
    assert not loader_uses_shm(1, 0, 4, free_bytes=64 << 30)  # no workers: nothing crosses processes


def test_trace_steps_writes_where_the_time_goes(cases, tmp_path):
    """--trace-steps: after 20 untimed steps, torch.profiler over the next N writes profile.txt with the stages."""
    import time
    t0 = time.perf_counter()
    train(tiny_cfg(cases, tmp_path / "t", steps=23, trace_steps=2, log_every=23, p_click=1.0))
    text = (tmp_path / "t" / "profile.txt").read_text()
    assert "over 2 training steps" in text
    for stage in ("loader", "simulate_prompts", "forward_backward", "optimizer"):
        assert stage in text, stage
    assert time.perf_counter() - t0 < 60
