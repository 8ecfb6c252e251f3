"""Image-specific fine-tuning at a click step: a copy of the network learns this object from its own clicks.

BIFSeg's idea (Wang et al., IEEE TMI 2018: fine-tune the CNN on each test image, supervised by the user's
interactions) in this project's terms, for one window (patch grid, arrays (z, y, x)):

1. The network has predicted `probs0` from the full input `x` (every click drawn in its channels).
2. A copy of the network takes `steps` AdamW steps. Each step leaves a random part (`drop`, at least one) of the
   object's clicks out of the input's click channels and asks the copy for the left-out clicks' answer under
   their balls (foreground click 1, background click 0): the image and the other prompts must now explain what
   the user said there. Voxels where `probs0` was confident (>= `confident` or <= 1 - `confident`) keep that
   answer (binary cross-entropy against it, weight `anchor`), so what the network already knew does not drift.
3. The adapted copy predicts from the full input again; the copy is thrown away (nothing persists between
   objects, steps or cases).

The box step (no clicks) is left alone, and with `box_only` (default) so is every object without a box. Costs
`steps` forward + backward passes per window; the prediction after it is a single pass (no test-time mirroring).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable, ContextManager

import numpy as np
import torch
import torch.nn.functional as F

from .network import CHANNELS
from .prompts import CLICK_RADIUS, draw_ball


@dataclass(frozen=True)
class AdaptConfig:
    """Settings of the per-window fine-tuning (`+adapt`, `+adapt.<field>=value`)."""

    steps: int = 12            # AdamW steps per window
    lr: float = 3e-4
    drop: float = 0.5          # share of the clicks left out of the input per step (at least one)
    confident: float = 0.9     # anchor voxels: probs0 at least this sure either way
    anchor: float = 0.3        # weight of the anchor term against the left-out clicks' term
    box_only: bool = True      # adapt only objects that have a box (without one it lost on the training volumes)
    mix: float = 1.0           # the answer: mix x adapted copy's probabilities + (1 - mix) x the network's own
    min_voxels: int = 0        # adapt only when the network's mask (probs0 > 0.5) holds this many patch voxels
    ball: float = 0.5          # a left-out click supervises the voxels where its ball is >= this
    seed: int = 0


def click_points(x: torch.Tensor) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Patch coordinates (z, y, x) of the click balls' centres drawn in x's click channels (pos, neg)."""
    out = []
    for name in ("click_pos", "click_neg"):
        ch = x[CHANNELS[name]]
        out.append([p for p in torch.nonzero(ch >= 0.999).numpy()])
    return out[0], out[1]


def redraw_clicks(x: torch.Tensor, pos: list[np.ndarray], neg: list[np.ndarray]) -> torch.Tensor:
    """A copy of x whose click channels hold only the given clicks (patch coordinates, z, y, x)."""
    y = x.clone()
    for pts, name in ((pos, "click_pos"), (neg, "click_neg")):
        ch = y[CHANNELS[name]]
        ch.zero_()
        for p in pts:
            draw_ball(ch, p)
    return y


def ball_mask(shape, points: list[np.ndarray], level: float) -> torch.Tensor:
    """Voxels (bool, patch shape) where any of the points' click balls is >= level."""
    ch = torch.zeros(shape)
    for p in points:
        draw_ball(ch, p, CLICK_RADIUS)
    return ch >= level


def adapt_and_predict(net: torch.nn.Module, x: torch.Tensor, probs0: torch.Tensor, cfg: AdaptConfig,
                      autocast: Callable[[], ContextManager], device: torch.device) -> torch.Tensor | None:
    """Foreground probabilities (patch, z, y, x) of a fine-tuned copy of `net` for input x (8, z, y, x),
    or None when x holds no click (nothing to learn from), with `box_only` no box, or the mask is under
    `min_voxels`."""
    pos, neg = click_points(x)
    clicks = [(p, 1.0) for p in pos] + [(p, 0.0) for p in neg]
    if not clicks or cfg.steps <= 0 or (cfg.box_only and not bool(x[CHANNELS["box_pos"]].any())):
        return None
    if cfg.min_voxels > 0 and int((probs0 > 0.5).sum()) < cfg.min_voxels:
        return None  # a small object: what it looks like is what its similar-looking neighbours look like
    rng = np.random.default_rng(cfg.seed)
    work = copy.deepcopy(net).to(device)
    work.eval()  # instance norms: the same in both modes; nothing else may change
    opt = torch.optim.AdamW(work.parameters(), lr=cfg.lr, weight_decay=0.0)
    p0 = probs0.detach().clone().float().to(device)
    sure = (p0 >= cfg.confident) | (p0 <= 1.0 - cfg.confident)
    anchor_target = (p0 >= 0.5).float()
    shape = tuple(x.shape[1:])
    balls = [ball_mask(shape, [p], cfg.ball).to(device) for p, _ in clicks]  # each click's supervised voxels
    with torch.enable_grad():
        for _ in range(cfg.steps):
            left_out = rng.random(len(clicks)) < cfg.drop
            if not left_out.any():
                left_out[rng.integers(len(clicks))] = True
            kept_pos = [p for (p, v), o in zip(clicks, left_out) if not o and v == 1.0]
            kept_neg = [p for (p, v), o in zip(clicks, left_out) if not o and v == 0.0]
            inp = redraw_clicks(x, kept_pos, kept_neg).to(device)[None]
            target = torch.zeros(shape, device=device)
            weight = torch.zeros(shape, device=device)
            for (_, v), m, o in zip(clicks, balls, left_out):
                if o:
                    target[m] = v
                    weight[m] = 1.0
            n_click = float(weight.sum().clamp(min=1.0))
            with autocast():
                logits = work(inp).float()
            d = logits[0, 1] - logits[0, 0]
            loss_click = (F.binary_cross_entropy_with_logits(d, target, reduction="none") * weight).sum() / n_click
            loss_anchor = F.binary_cross_entropy_with_logits(d[sure], anchor_target[sure]) if sure.any() else d.sum() * 0
            loss = loss_click + cfg.anchor * loss_anchor
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    with torch.inference_mode(), autocast():
        logits = work(x.to(device)[None]).float()
    adapted = torch.sigmoid(logits[0, 1] - logits[0, 0]).cpu()
    return adapted if cfg.mix >= 1.0 else cfg.mix * adapted + (1.0 - cfg.mix) * probs0.detach().float().cpu()


def main(argv: list[str] | None = None) -> None:
    """`python -m inference.adapt`: seconds of one adapted window against one network run (a synthetic patch)."""
    import argparse
    import time

    from .predictor import load_predictor

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--checkpoint", default=None, help="checkpoint (default: $SEGFM_WEIGHTS or weights/default.pt)")
    ap.add_argument("--steps", type=int, default=AdaptConfig.steps, help="fine-tuning steps per window")
    ap.add_argument("--repeats", type=int, default=3, help="timed repeats (the median is printed)")
    args = ap.parse_args(argv)
    pred = load_predictor(args.checkpoint, routes=False)
    patch = pred.model.patch_size
    x = torch.zeros((8, *patch))
    x[CHANNELS["image"]] = torch.from_numpy(np.random.default_rng(0).normal(size=patch).astype(np.float32))
    lo, hi = [p // 6 for p in patch], [5 * p // 6 for p in patch]
    x[CHANNELS["box_pos"], lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = 1.0
    draw_ball(x[CHANNELS["click_pos"]], [p // 2 for p in patch])
    draw_ball(x[CHANNELS["click_neg"]], [p // 4 for p in patch])
    cfg = AdaptConfig(steps=args.steps)
    runs, adapts = [], []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        p0 = pred.run_network(x)
        runs.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        adapt_and_predict(pred.model.net, x, p0, cfg, pred._autocast, pred.device)
        adapts.append(time.perf_counter() - t0)
    print(f"patch {patch}, {pred.precision}, {torch.get_num_threads()} threads: network run "
          f"{np.median(runs):.3f} s, adapted window ({args.steps} steps) {np.median(adapts):.2f} s")


if __name__ == "__main__":
    main()
