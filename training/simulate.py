"""Interaction simulation (the seed paper, section 2.3) and the loss.

Stage 1 (no gradient) predicts from the box (or the no-box first click) with empty click channels.
With probability p_click per batch the model's prediction is binarised (p > 0.5) into the previous-
segmentation channel and a click is placed on its largest error component with the evaluator's rule
(`evaluation.clicks.simulate_click`, the project's one implementation), drawn as the inference code
draws clicks (`inference.prompts.draw_ball`); this repeats for k rounds. Stage 2 (with gradient)
predicts from all prompts; the loss is dice_weight x (1 - soft Dice) + BCE on that prediction only (plus, with
--click-focus-weight, the BCE over the error components the clicks were placed in, and with --skeleton-weight,
1 - the soft recall of the target's skeleton).
All masks and coordinates are in the patch grid, (z, y, x).
"""
from __future__ import annotations

from concurrent.futures import Executor
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from skimage.morphology import skeletonize

from evaluation.clicks import Click, error_component_at, simulate_click
from inference.network import CHANNELS
from inference.prompts import draw_ball


def binary_logit(logits: torch.Tensor) -> torch.Tensor:
    """Foreground-vs-background logit (B, z, y, x) from the 2-class logits (B, 2, z, y, x)."""
    return logits[:, 1] - logits[:, 0]


def soft_dice(prob: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """Soft Dice per sample (B,) of probabilities and a {0,1} target, both (B, z, y, x)."""
    dims = tuple(range(1, prob.ndim))
    inter = (prob * target).sum(dims)
    return (2 * inter + eps) / (prob.sum(dims) + target.sum(dims) + eps)


@torch.no_grad()
def hard_dice(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Dice per sample (B,) of the thresholded prediction (logits (B, 2, z, y, x), target (B, z, y, x)); 1 where
    both are empty."""
    pred = (binary_logit(logits.float()) > 0).float()
    t = target.float()
    hard = soft_dice(pred, t, eps=1e-6)
    empty = (t.flatten(1).sum(1) == 0) & (pred.flatten(1).sum(1) == 0)
    return torch.where(empty, torch.ones_like(hard), hard)


def tubed_skeleton(mask: np.ndarray) -> np.ndarray:
    """Skeleton Recall's target (Kirchhoff et al., ECCV 2024) for one binary mask (z, y, x): its skeleton
    (scikit-image, Lee's 3D thinning) dilated by one voxel (6-neighbourhood) and kept inside the mask. A
    component that the thinning erases (it can, for even widths: a 2 x 2 rod) counts whole."""
    mask = np.asarray(mask, bool)
    if not mask.any():
        return np.zeros_like(mask)
    skel = skeletonize(mask) > 0
    comps, n = ndimage.label(mask, ndimage.generate_binary_structure(3, 3))
    kept = np.zeros(n + 1, bool)
    kept[np.unique(comps[skel])] = True
    tube = ndimage.binary_dilation(skel, ndimage.generate_binary_structure(3, 1)) & mask
    return tube | ~kept[comps] & mask


def skeleton_recall(prob: torch.Tensor, skeleton: torch.Tensor) -> torch.Tensor:
    """Soft recall of each sample's skeleton, sum(p * S) / sum(S), over the samples with one (a 0-d tensor; 1
    when no sample has a skeleton); prob and skeleton (B, z, y, x)."""
    s = skeleton.float()
    dims = tuple(range(1, s.ndim))
    n = s.sum(dims)
    has = n > 0
    if not bool(has.any()):
        return prob.new_ones(())
    return ((prob * s).sum(dims)[has] / n[has]).mean()


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor, dice_weight: float = 10.0,
                      focus: torch.Tensor | None = None, focus_weight: float = 0.0,
                      skeleton: torch.Tensor | None = None, skeleton_weight: float = 0.0
                      ) -> tuple[torch.Tensor, dict[str, float]]:
    """dice_weight x (1 - mean per-sample soft Dice) + BCE on the binary logit (the hard Dice: `hard_dice`).

    With a `focus` mask (B, z, y, x; the error components the simulated clicks were placed in) and focus_weight > 0,
    focus_weight x (BCE averaged over each sample's focus voxels, 0 for a sample without any, mean over the batch)
    is added: whatever the size of the component, a click that is not answered costs about as much.
    With `skeleton` (B, z, y, x; `tubed_skeleton` of each target) and skeleton_weight > 0, skeleton_weight x
    (1 - `skeleton_recall`) is added (Skeleton Recall): a thin structure missed along its length costs as much as
    a thick one, where the soft Dice barely notices it."""
    z = binary_logit(logits.float())
    t = target.float()
    sd = soft_dice(torch.sigmoid(z), t)
    parts: dict[str, float] = {}
    if focus is not None and focus_weight > 0:
        bce_map = F.binary_cross_entropy_with_logits(z, t, reduction="none")
        bce = bce_map.mean()
        f = focus.float()
        dims = tuple(range(1, f.ndim))
        focus_bce = ((bce_map * f).sum(dims) / f.sum(dims).clamp(min=1.0)).mean()
        loss = dice_weight * (1.0 - sd.mean()) + bce + focus_weight * focus_bce
        parts["focus_bce"] = float(focus_bce.detach())
    else:
        bce = F.binary_cross_entropy_with_logits(z, t)
        loss = dice_weight * (1.0 - sd.mean()) + bce
    if skeleton is not None and skeleton_weight > 0:
        recall = skeleton_recall(torch.sigmoid(z), skeleton)
        loss = loss + skeleton_weight * (1.0 - recall)
        parts["skel_recall"] = float(recall.detach())
    return loss, {"loss": float(loss.detach()), "bce": float(bce.detach()), "soft_dice": float(sd.mean().detach()),
                  **parts}


EDITED_CHANNELS = (CHANNELS["prev_seg"], CHANNELS["click_pos"], CHANNELS["click_neg"])  # what place_click writes


def staging_copy(x: torch.Tensor) -> torch.Tensor:
    """Where clicks are placed: x itself on the CPU, else a CPU copy of it."""
    return x.cpu()


def place_click(x: torch.Tensor, pred: np.ndarray, target: np.ndarray) -> str | None:
    """Put the binarised prediction in prev_seg and draw the evaluator's click into x (8, z, y, x; CPU) in place.

    Returns 'fg', 'bg', or None when the prediction has no error (then only prev_seg changes).
    """
    return apply_click(x, pred, simulate_click(pred, target))


def apply_click(x: torch.Tensor, pred: np.ndarray, click: Click | None) -> str | None:
    """`place_click` with the click (`simulate_click(pred, target)`) already computed; x is on the CPU (a GPU
    batch is edited through `staging_copy` in `simulate_prompts`)."""
    x[CHANNELS["prev_seg"]] = torch.from_numpy(pred.astype(np.float32))
    if click is None:
        return None
    coord, kind = click
    draw_ball(x[CHANNELS["click_pos"] if kind == "fg" else CHANNELS["click_neg"]], coord)
    return kind


@dataclass
class SimulationStats:
    """What the simulation did for one batch."""

    stage1_passes: int = 0
    clicks_fg: int = 0
    clicks_bg: int = 0
    no_error: int = 0
    focus: np.ndarray | None = None  # with focus=True: (B, z, y, x) bool, the error components the clicks went to


def simulate_prompts(predict: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, target: torch.Tensor,
                     has_box: torch.Tensor, rng: np.random.Generator, p_click: float = 0.5, rounds: int = 1,
                     nobox_always_click: bool = False, max_rounds: int = 0,
                     pool: Executor | None = None, focus: bool = False) -> tuple[torch.Tensor, SimulationStats]:
    """The stage-2 input for a batch: x (B, 8, z, y, x) with k rounds of simulated clicks added, or x itself.

    `predict` maps an input batch to foreground probabilities (B, z, y, x) without gradient. A batch
    clicks with probability p_click (all its samples); with `nobox_always_click`, no-box samples click
    in every batch. Batches that do not click skip stage 1 entirely. k = `rounds`, or, with `max_rounds` >
    `rounds`, drawn uniformly from rounds..max_rounds for each clicking batch (the organizer clicks up to 5
    times: the later clicks then meet a previous mask and several clicks, as at inference). With a thread
    `pool` the samples' clicks are computed in parallel (the same clicks, placed in the same order).
    """
    stats = SimulationStats()
    batch_clicks = bool(rng.random() < p_click)
    chosen = torch.ones(len(x), dtype=torch.bool) if batch_clicks else torch.zeros(len(x), dtype=torch.bool)
    if nobox_always_click:
        chosen |= ~has_box.bool().cpu()
    if not bool(chosen.any()):
        return x, stats
    if max_rounds > rounds:
        rounds = int(rng.integers(rounds, max_rounds + 1))
    x = x.clone()
    idx = np.flatnonzero(chosen.numpy())
    tgts = list(target.bool().cpu().numpy()[idx])
    # clicks are placed on a CPU copy of the batch and the edited channels go back in one copy per round: on a
    # GPU, editing each sample's channels in place cost 3 small transfers and a synchronisation per sample
    host = staging_copy(x)
    for _ in range(rounds):
        probs = predict(x)
        stats.stage1_passes += 1
        pred = (probs > 0.5).cpu().numpy()
        preds = [pred[i] for i in idx]
        clicks = list(pool.map(simulate_click, preds, tgts) if pool is not None else map(simulate_click, preds, tgts))
        for k, (i, click) in enumerate(zip(idx, clicks)):
            if focus and click is not None:
                if stats.focus is None:
                    stats.focus = np.zeros(pred.shape, dtype=bool)
                stats.focus[i] |= error_component_at(pred[i], tgts[k], click[0])
            kind = apply_click(host[i], pred[i], click)
            if kind == "fg":
                stats.clicks_fg += 1
            elif kind == "bg":
                stats.clicks_bg += 1
            else:
                stats.no_error += 1
        if host is not x:
            for ch in EDITED_CHANNELS:
                x[:, ch].copy_(host[:, ch])
    return x, stats


def make_predict(net: torch.nn.Module, autocast: Callable[[], object] | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """A no-gradient stage-1 predictor: foreground probabilities (B, z, y, x) of a network."""
    ctx = autocast or nullcontext

    def predict(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), ctx():
            logits = net(x)
        return torch.sigmoid(binary_logit(logits.float()))
    return predict
