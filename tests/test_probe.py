"""training/probe.py: what a model reads from the image against what the box alone gives (tiny network)."""
from __future__ import annotations

import csv

import numpy as np
import torch

from inference.network import CHANNELS, new_model, save_checkpoint
from training.data import write_synthetic_cases
from training.probe import COLUMNS, deep_supervision_loss, fit_fixed_batch, main, probe_scores

IMG, BOX = CHANNELS["image"], CHANNELS["box_pos"]


def boxed_blobs(n: int = 4, size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Inputs (n, 8, z, y, x) with a bright ball as the target in the image and its bounding box in the box channel."""
    g = np.indices((size,) * 3) - (size - 1) / 2
    inputs = np.zeros((n, 8, size, size, size), np.float32)
    targets = np.zeros((n, size, size, size), bool)
    for i in range(n):
        t = (g ** 2).sum(0) <= (3 + i) ** 2
        targets[i] = t
        inputs[i, IMG] = np.where(t, 2.0, -0.5)
        lo, hi = [np.argwhere(t).min(0), np.argwhere(t).max(0) + 1]
        inputs[i, BOX, lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = 1.0
    return inputs, targets


def test_a_box_painter_gains_nothing_from_the_image_and_a_reader_does():
    inputs, targets = boxed_blobs()

    def paints_the_box(x):
        return x[:, BOX].numpy() > 0.5

    def reads_the_image(x):
        return (x[:, IMG] > 0.5).numpy()

    painter = probe_scores(paints_the_box, inputs, targets, IMG, BOX)
    assert painter.shape == (4, len(COLUMNS))
    assert np.allclose(painter[:, 0], painter[:, 2]) and np.allclose(painter[:, 0], painter[:, 1])
    assert 0.5 < painter[:, 2].mean() < 0.85  # a ball fills about half its box: Dice 2 x 0.52 / 1.52 = 0.69
    reader = probe_scores(reads_the_image, inputs, targets, IMG, BOX)
    assert np.allclose(reader[:, 0], 1.0) and np.allclose(reader[:, 1], 0.0)  # blind without the image
    assert np.allclose(reader[:, 2], painter[:, 2])


def test_probe_cli_on_synthetic_cases(tmp_path, capsys):
    cases = tmp_path / "cases"
    write_synthetic_cases(cases, n=2, shape=(20, 28, 28), n_classes=3, seed=1)
    ckpt = tmp_path / "tiny.pt"
    save_checkpoint(new_model("tiny", seed=0), ckpt)
    out = tmp_path / "probe.csv"
    threads = torch.get_num_threads()
    try:
        code = main([str(ckpt), "--data", str(cases), "--labelmaps", "", "--pseudo", "", "--sources", "real",
                     "procedural", "--samples", "3", "--threads", "1", "--csv", str(out)])
    finally:
        torch.set_num_threads(threads)  # main sets the process's threads
    assert code == 0
    rows = list(csv.DictReader(open(out)))
    assert [r["source"] for r in rows] == ["real", "procedural"]
    for r in rows:
        vals = {c: float(r[c]) for c in COLUMNS}
        assert all(0.0 <= v <= 1.0 for v in vals.values())
        assert abs(float(r["image gain"]) - (vals["model"] - vals["no image"])) < 2e-3
    assert "| checkpoint | source |" in capsys.readouterr().out


def test_fitting_a_fixed_batch_raises_its_dice():
    inputs, targets = boxed_blobs(n=2)
    torch.manual_seed(0)
    net = new_model("tiny", seed=0).net
    log = fit_fixed_batch(net, inputs, targets, steps=40, lr=1e-2, amp="none", every=10)
    assert [s for s, _, _ in log] == [0, 10, 20, 30, 39]
    assert log[-1][1] > log[0][1] + 0.2 and log[-1][1] > 0.8
    assert all(n > 0 for _, _, n in log)


def test_deep_supervision_loss_scores_every_output_but_the_coarsest():
    target = torch.zeros(1, 16, 16, 16)
    target[0, 4:12, 4:12, 4:12] = 1
    # logits that are right at full and half resolution: the weighted mean of two near-zero Dice terms
    right = [torch.stack([-20 * (2 * t - 1), 20 * (2 * t - 1)], 1)
             for t in (target, torch.nn.functional.avg_pool3d(target[:, None], 2)[:, 0].round())]
    coarse_wrong = torch.zeros(1, 2, 4, 4, 4)
    assert float(deep_supervision_loss([*right, coarse_wrong], target)) < 0.05  # the coarsest output counts 0
    wrong_half = torch.stack([torch.zeros(1, 8, 8, 8), torch.full((1, 8, 8, 8), -20.0)], 1)  # half res empty
    loss = float(deep_supervision_loss([right[0], wrong_half, coarse_wrong], target))
    assert 10 * (1 / 3) * 0.8 < loss < 10 * (1 / 3) * 1.2 + 1  # weight 1/3 of (10 (1 - Dice) + BCE) at half res


def test_fitting_with_deep_supervision_raises_the_full_resolution_dice():
    inputs, targets = boxed_blobs(n=2)
    net = new_model("tiny", seed=0).net
    log = fit_fixed_batch(net, inputs, targets, steps=40, lr=1e-2, amp="none", every=10, deep_supervision=True)
    assert log[-1][1] > log[0][1] + 0.2 and log[-1][1] > 0.8
    assert isinstance(net(torch.from_numpy(inputs)), torch.Tensor)  # afterwards one output again, as inference expects
