"""Snap a window's mask to the image's edges with a contrast-sensitive graph cut (Boykov-Jolly, PyMaxflow).

The network, and the intensity step after it, decide each voxel on its own; neither asks whether the mask's
surface runs along an edge of the image. This step does, inside one window (patch grid, arrays (z, y, x)): the
energy of a mask M is

    sum over voxels of -log p (inside M) or -log(1 - p) (outside M)
  + weight * sum over 6-neighbour pairs cut by M's surface of exp(-beta * (I_a - I_b)^2),

with beta = 1 / (2 * mean (I_a - I_b)^2) over the window (GrabCut's choice, times `beta_scale`), so a surface
is cheap where the intensity jumps and dear where it is flat. The minimum-energy mask (one max-flow) replaces the
0.5 surface of p: a voxel the cut keeps on the same side keeps its probability, one it moves gets 0.5 + `margin`
(now inside) or 0.5 - `margin` (now outside), so the probabilities still fuse with the other classes and the
change stays small. A cut whose mask agrees with the 0.5 mask less than `min_agreement` (Dice) is dropped: a
strong smoothness would erase a small object. Voxels outside the volume keep their probabilities. Options:
click centres as hard seeds (`seeds`), and a zoomed-out window cut once on the volume's own grid (`native`,
`native_cut`). Off by default (`SEGFM_GRAPHCUT=on`, setting `+cut`); measurements in docs/graphcut.md.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .refine import paste_into
from .window import Window, region_voxels

SEED_LEVEL = 0.95  # a click channel at or above this is a click's centre voxel (prompts.ball: 1 there, 0.8 next to it)


@dataclass(frozen=True)
class GraphCutConfig:
    """The smoothness weight and the edge contrast (see the module docstring)."""

    weight: float = 2.0  # pairwise weight against the unaries (-log p in nats)
    beta_scale: float = 1.0  # multiplies GrabCut's beta = 1 / (2 <dI^2>)
    margin: float = 0.05  # a moved voxel's probability: 0.5 +- margin
    min_agreement: float = 0.8  # the cut is dropped when its Dice with the 0.5 mask is lower (it erased a small object)
    seeds: bool = False  # click centres as hard constraints (Boykov-Jolly seeds): + clicks inside, - clicks outside
    native: bool = False  # zoomed-out windows: cut once at the volume's own resolution after the coarse pass
    max_voxels: int = 2 ** 22  # larger windows are left as they are (time and memory)


def require_maxflow():
    """PyMaxflow (requirements.txt), imported only when the step is on, so the default path never needs it."""
    try:
        import maxflow
    except ImportError as exc:  # pragma: no cover - the image and `make install` have it
        raise ImportError("the graph-cut step needs PyMaxflow (pip install PyMaxflow==1.3.2, requirements.txt)") from exc
    return maxflow


def _neighbour_weights(image: np.ndarray, cfg: GraphCutConfig) -> list[np.ndarray]:
    """exp(-beta dI^2) * weight between each voxel and its + neighbour along z, y and x (0 past the last)."""
    diffs = []
    for axis in range(3):
        d = np.zeros_like(image)
        sl_a = [slice(None)] * 3
        sl_b = [slice(None)] * 3
        sl_a[axis] = slice(0, -1)
        sl_b[axis] = slice(1, None)
        d[tuple(sl_a)] = image[tuple(sl_b)] - image[tuple(sl_a)]
        diffs.append((d, tuple(sl_a)))
    sq = np.concatenate([(d[s] ** 2).ravel() for d, s in diffs])
    mean = float(sq.mean()) if sq.size else 0.0
    beta = cfg.beta_scale / (2 * mean) if mean > 1e-12 else 0.0
    out = []
    for d, s in diffs:
        w = np.zeros_like(image)
        w[s] = cfg.weight * np.exp(-beta * d[s] ** 2)
        out.append(w)
    return out


def cut_mask(probs: np.ndarray, image: np.ndarray, cfg: GraphCutConfig, inside: np.ndarray | None = None,
             outside: np.ndarray | None = None) -> np.ndarray:
    """The minimum-energy foreground mask (bool, z, y, x) for probabilities and image of the same shape; voxels
    of `inside` / `outside` (bool, same shape) are held on their side."""
    p = np.clip(probs.astype(np.float64), 1e-4, 1 - 1e-4)
    g = require_maxflow().Graph[float]()
    ids = g.add_grid_nodes(p.shape)
    img = image.astype(np.float64)
    for axis, w in enumerate(_neighbour_weights(img, cfg)):
        structure = np.zeros((3, 3, 3))
        structure[tuple(2 if a == axis else 1 for a in range(3))] = 1
        g.add_grid_edges(ids, weights=w, structure=structure, symmetric=True)
    # source = foreground: a voxel left on the sink side (background) cuts its source edge, -log(1 - p)
    source, sink = -np.log1p(-p), -np.log(p)
    hard = 1e9
    if inside is not None:
        source = np.where(inside, hard, source)
    if outside is not None:
        sink = np.where(outside, hard, sink)
    g.add_grid_tedges(ids, source, sink)
    g.maxflow()
    return ~g.get_grid_segments(ids)


def refine_by_cut(probs: torch.Tensor, image: torch.Tensor, cfg: GraphCutConfig,
                  valid: torch.Tensor | None = None, inside: torch.Tensor | None = None,
                  outside: torch.Tensor | None = None) -> torch.Tensor:
    """The window's probabilities (z, y, x) with their 0.5 surface moved to the graph cut's (module docstring);
    `valid` (bool, z, y, x) marks the voxels inside the volume (the others keep their probabilities); with
    `cfg.seeds`, voxels of `inside` / `outside` (bool, z, y, x) stay on their side of the cut."""
    if probs.numel() > cfg.max_voxels or probs.numel() == 0:
        return probs
    p = probs.float()
    seeds = [m.numpy() if (cfg.seeds and m is not None) else None for m in (inside, outside)]
    fg = torch.from_numpy(cut_mask(p.numpy(), image.float().numpy(), cfg, *seeds))
    was = p > 0.5
    if cfg.min_agreement > 0:
        after = fg if valid is None else fg & valid
        before = was if valid is None else was & valid
        total = int(after.sum()) + int(before.sum())
        if total and 2 * int((after & before).sum()) < cfg.min_agreement * total:
            return probs
    out = torch.where(fg & ~was, torch.full_like(p, 0.5 + cfg.margin),
                      torch.where(~fg & was, torch.full_like(p, 0.5 - cfg.margin), p))
    return out if valid is None else torch.where(valid, out, p)


def native_cut(window: Window, probs: torch.Tensor, image: np.ndarray, cfg: GraphCutConfig,
               ) -> tuple[Window, torch.Tensor] | None:
    """A zoomed-out window's probabilities (patch, z, y, x) pasted onto the volume's own grid over the window's
    part inside the volume `image` (z, y, x) and cut there: (native window, probabilities); None when that part
    holds more than `cfg.max_voxels` voxels."""
    region = window.inside()
    if region_voxels(region) > cfg.max_voxels or region_voxels(region) == 0:
        return None
    native = np.zeros(tuple(s.stop - s.start for s in region), np.float32)
    paste_into(native, [s.start for s in region], window, probs)
    cut = refine_by_cut(torch.from_numpy(native), torch.from_numpy(np.asarray(image[region], np.float32)), cfg)
    return Window.native(region, image.shape), cut
