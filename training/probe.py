"""`python -m training.probe`: does a model segment what the image shows, or mostly fill the prompt?

For each training source it draws box-prompted training samples (the organizer's box, no clicks, no
augmentation; training data only, never the held-out cases) and reports the mean Dice of

- `model`: the checkpoint's prediction from the sample as trained (image + box);
- `no image`: the same input with the image channel set to 0 (the volume's mean after z-scoring), so what
  the box alone makes the network predict;
- `box fill`: the box itself taken as the segmentation (no network).

`image gain` = model - no image is what the network reads from the image; `over box` = model - box fill is
what it adds to painting the prompt. A network that has learned to segment has a large image gain; one that
has mostly learned the prompt's shape scores close to `no image`. Samples are a pure function of --seed, so
checkpoints are compared on the same samples. All arrays are (z, y, x) patches of the model's patch size.

`--fit-steps N` adds an optimisation check: a copy of each model is trained on one fixed batch of real samples
(AdamW, the training loss, the clip of `TrainConfig.grad_clip`) and the Dice printed every 10 steps, so a
learning rate, precision or loss change can be judged by how fast the network fits what it sees.
`--fit-deep-supervision` fits with nnU-Net's deep supervision (every decoder resolution but the coarsest scored
against the average-pooled target, weights 1/2^i normalised); the Dice printed is the full-resolution output's.
"""
from __future__ import annotations

import argparse
import copy
import csv
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from evaluation.metrics import dice

PROBE_OVERRIDES = dict(p_no_box=0.0, p_loose_box=0.0, p_viewer=0.0, p_refine=0.0, flip=False, p_spatial=0.0, p_appearance=0.0,
                       intensity_scale=0.0, intensity_shift=0.0, shift_frac=0.0)
COLUMNS = ("model", "no image", "box fill")


def probe_scores(predict, inputs: np.ndarray, targets: np.ndarray, image_channel: int,
                 box_channel: int) -> np.ndarray:
    """(N, 3) Dice per sample of `COLUMNS` for inputs (N, C, z, y, x) and bool targets (N, z, y, x);
    `predict` maps an input batch (torch) to bool foreground masks (numpy, (N, z, y, x))."""
    x = torch.from_numpy(inputs)
    with_image = predict(x)
    blind = x.clone()
    blind[:, image_channel] = 0.0
    without_image = predict(blind)
    box = inputs[:, box_channel] > 0.5
    return np.array([[dice(a[i], targets[i]) for a in (with_image, without_image, box)]
                     for i in range(len(inputs))])


def draw_samples(cfg, source: str, n: int, seed: int, patch: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """n box-prompted samples of one source (inputs (n, C, z, y, x) float32, targets (n, z, y, x) bool)."""
    from . import config as C
    from .data import SampleOptions, list_cases, make_sample
    from .mixture import SOURCE_NAMES
    from .train import build_sources

    one = C.TrainConfig(**{**asdict(cfg), **PROBE_OVERRIDES, **{f"mix_{m}": float(m == source) for m in SOURCE_NAMES}})
    sources = build_sources(one, list_cases(one.data), 1)
    opts = SampleOptions.from_config(one, patch)
    samples = [make_sample(sources, opts, seed, i) for i in range(n)]
    return np.stack([s["input"] for s in samples]), np.stack([s["target"] for s in samples]).astype(bool)


def network_predictor(model, batch: int = 4):
    """Thresholded foreground of a LoadedModel's network, run in batches on the CPU."""
    from .simulate import binary_logit

    net = model.net.eval()

    def predict(x: torch.Tensor) -> np.ndarray:
        out = []
        with torch.no_grad():
            for i in range(0, len(x), batch):
                out.append((binary_logit(net(x[i:i + batch]).float()) > 0).numpy())
        return np.concatenate(out)
    return predict


def deep_supervision_loss(outputs: Sequence[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
    """The training loss summed over the decoder's outputs (full resolution first; each (B, 2, z, y, x)) with
    nnU-Net's weights 1/2^i, the coarsest output weighted 0, normalised to 1; the target (B, z, y, x) is
    average-pooled to each output's grid (a soft target keeps objects smaller than one coarse voxel)."""
    from .simulate import segmentation_loss

    weights = [0.5 ** i for i in range(len(outputs) - 1)] + [0.0]
    total = sum(weights)
    t = target.float()[:, None]
    loss = outputs[0].new_zeros(())
    for out, w in zip(outputs, weights):
        if w > 0:
            factor = [a // b for a, b in zip(t.shape[2:], out.shape[2:])]
            pooled = torch.nn.functional.avg_pool3d(t, factor) if max(factor) > 1 else t
            loss = loss + w / total * segmentation_loss(out, pooled[:, 0])[0]
    return loss


def fit_fixed_batch(net: torch.nn.Module, inputs: np.ndarray, targets: np.ndarray, steps: int, lr: float,
                    amp: str = "bf16", grad_clip: float = 12.0, weight_decay: float = 0.01,
                    every: int = 10, deep_supervision: bool = False) -> list[tuple[int, float, float]]:
    """Train `net` (in place) on one fixed batch for `steps` AdamW steps with the training loss (or
    `deep_supervision_loss`); returns (step, hard Dice of that step's full-resolution output, gradient norm
    before clipping) every `every` steps and at the end. `amp` is `--amp` of training (bf16 or none here, on the CPU)."""
    from .simulate import hard_dice, segmentation_loss
    from .train import autocast_factory

    x, t = torch.from_numpy(inputs), torch.from_numpy(targets)
    net.train()
    if deep_supervision:  # the lower heads train too (a training run's `freeze_unused_heads` may have frozen them)
        for p in net.decoder.seg_layers.parameters():
            p.requires_grad_(True)
        net.decoder.deep_supervision = True
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
    ctx, _ = autocast_factory(torch.device("cpu"), amp)
    out = []
    for step in range(steps):
        with ctx():
            outputs = net(x)
        if deep_supervision:
            loss, logits = deep_supervision_loss(outputs, t), outputs[0]
        else:
            logits = outputs
            loss, _ = segmentation_loss(logits, t)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        norm = float(torch.nn.utils.clip_grad_norm_(net.parameters(), grad_clip if grad_clip > 0 else float("inf")))
        opt.step()
        if step % every == 0 or step == steps - 1:
            out.append((step, float(hard_dice(logits.detach(), t).mean()), norm))
    net.decoder.deep_supervision = False  # the network's forward returns one output again
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.probe", description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoints", nargs="+", help="model checkpoints to probe on the same samples")
    ap.add_argument("--data", default="data/train", help="training cases (default: data/train)")
    ap.add_argument("--labelmaps", default="data/labelmaps")
    ap.add_argument("--pseudo", default=".cache/pseudo")
    ap.add_argument("--sources", nargs="+", default=None, help="training sources to probe (default: all present)")
    ap.add_argument("--samples", type=int, default=32, help="samples per source (default 32)")
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--csv", type=Path, default=None, help="also write the table here")
    ap.add_argument("--fit-steps", type=int, default=0,
                    help="also train a copy of each model on one fixed batch of real samples for this many steps")
    ap.add_argument("--fit-samples", type=int, default=6, help="samples in the fixed batch (default 6)")
    ap.add_argument("--fit-lr", type=float, default=1e-3, help="AdamW learning rate of the fit (default 1e-3)")
    ap.add_argument("--fit-amp", choices=("bf16", "none"), default="bf16", help="autocast of the fit (default bf16)")
    ap.add_argument("--fit-deep-supervision", action="store_true",
                    help="fit with deep supervision (every decoder resolution but the coarsest; the Dice stays the "
                         "full-resolution output's)")
    args = ap.parse_args(argv)

    from inference.network import CHANNELS, load_model

    from . import config as C
    from .mixture import SOURCE_NAMES

    torch.set_num_threads(args.threads)
    cfg = C.TrainConfig(data=args.data, labelmaps=args.labelmaps, pseudo=args.pseudo)
    models = [load_model(p) for p in args.checkpoints]
    patch = tuple(models[0].patch_size)
    if any(tuple(m.patch_size) != patch for m in models):
        print("error: the checkpoints have different patch sizes; probe them one by one", file=sys.stderr)
        return 2
    rows = []
    for source in args.sources or SOURCE_NAMES:
        try:
            inputs, targets = draw_samples(cfg, source, args.samples, args.seed, patch)
        except (ValueError, RuntimeError) as err:  # a source without data
            print(f"[probe] {source}: skipped ({err})", file=sys.stderr)
            continue
        for path, model in zip(args.checkpoints, models):
            s = probe_scores(network_predictor(model), inputs, targets, CHANNELS["image"], CHANNELS["box_pos"]).mean(0)
            rows.append({"checkpoint": path, "source": source, "samples": len(inputs),
                         **{c: round(float(v), 4) for c, v in zip(COLUMNS, s)},
                         "image gain": round(float(s[0] - s[1]), 4), "over box": round(float(s[0] - s[2]), 4)})
            print(f"[probe] {path} {source}: " + ", ".join(f"{k} {rows[-1][k]:.3f}" for k in
                                                           (*COLUMNS, "image gain", "over box")), file=sys.stderr)
    if args.fit_steps > 0:
        inputs, targets = draw_samples(cfg, "real", args.fit_samples, args.seed + 1, patch)
        for path, model in zip(args.checkpoints, models):
            for step, d, norm in fit_fixed_batch(copy.deepcopy(model.net), inputs, targets, args.fit_steps,
                                                 args.fit_lr, args.fit_amp, cfg.grad_clip, cfg.weight_decay,
                                                 deep_supervision=args.fit_deep_supervision):
                ds = ", deep supervision" if args.fit_deep_supervision else ""
                print(f"[probe] fit {path} ({args.fit_amp}{ds}, lr {args.fit_lr:g}): step {step} Dice {d:.3f} "
                      f"gradient norm {norm:.2f}", file=sys.stderr)
    keys = ["checkpoint", "source", "samples", *COLUMNS, "image gain", "over box"]
    print("| " + " | ".join(keys) + " |\n|" + "---|" * len(keys))
    for r in rows:
        print("| " + " | ".join(f"{r[k]:.3f}" if isinstance(r[k], float) else str(r[k]) for k in keys) + " |")
    if args.csv:
        args.csv.parent.mkdir(parents=True, exist_ok=True)
        with open(args.csv, "w", newline="") as f:
            w = csv.DictWriter(f, keys)
            w.writeheader()
            w.writerows(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
