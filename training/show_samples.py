"""`python -m training.show_samples`: a PNG of training samples of every source and prompt kind.

Each tile is the middle slice (through the target) of one sample's image channel with the target outlined
(red) and the prompt channels overlaid (box/lasso: yellow, clicks: cyan, scribble: magenta, coarse mask: blue).
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.show_samples", description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="data/train")
    ap.add_argument("--out", type=Path, default=Path("docs/training_samples.png"))
    ap.add_argument("--per-source", type=int, default=6, help="samples per source (one row each)")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    from inference.network import CHANNELS

    from . import config as C
    from .data import PROMPT_KINDS, SampleOptions, list_cases, make_sample
    from .mixture import SOURCE_NAMES
    from .train import build_sources

    torch.set_num_threads(1)
    cfg = C.TrainConfig(data=args.data, p_refine=0.1)
    opts = SampleOptions.from_config(cfg, (64, 64, 64))
    fig, axes = plt.subplots(len(SOURCE_NAMES), args.per_source, figsize=(2.2 * args.per_source, 2.3 * len(SOURCE_NAMES)))
    for r, name in enumerate(SOURCE_NAMES):
        one = C.TrainConfig(**{**asdict(cfg), **{f"mix_{m}": float(m == name) for m in SOURCE_NAMES}})
        try:
            sources = build_sources(one, list_cases(args.data), 1)
        except ValueError:
            continue
        for c in range(args.per_source):
            s = make_sample(sources, opts, args.seed, 1000 * r + c)
            x, t = s["input"], s["target"]
            z = int(np.argmax(t.sum(axis=(1, 2))))
            ax = axes[r, c]
            ax.imshow(x[CHANNELS["image"], z], cmap="gray")
            ax.contour(t[z], [0.5], colors="red", linewidths=0.8)
            for ch, col in (("box_pos", "yellow"), ("click_pos", "cyan"), ("scribble_pos", "magenta"),
                            ("prev_seg", "dodgerblue")):
                m = x[CHANNELS[ch]].max(axis=0) if ch != "prev_seg" else x[CHANNELS[ch], z]
                if m.max() > 0:
                    ax.contour(m, [0.5 * m.max()], colors=col, linewidths=0.6)
            ax.set_title(f"{name}: {PROMPT_KINDS[int(s['kind'])]}", fontsize=7)
            ax.axis("off")
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=80)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
