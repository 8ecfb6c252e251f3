"""Refine a window's probabilities with the object's own intensity statistics (GrabCut-style, without the cut).

The network reads the image only weakly (docs/training.md, "Does the model read the image?"): much of a box
prompt's answer is the box's shape. This step reads the image of the case at hand instead. Inside one window
(patch grid, arrays (z, y, x)) it counts an intensity histogram weighted by the network's probability p and one
weighted by 1 - p (the surroundings), subtracts from the first the share that looks like the surroundings
(`unmixed`: a painted box's corners), and, unless too little is left (the object then does not differ from its
surroundings), moves each voxel's logit by the log likelihood ratio of its intensity, `strength` times:
logit' = logit(p) + strength * log(h_object(I) / h_surroundings(I)). Voxels that look like the surroundings leave
the object; voxels that look like the object join it where the network was unsure. `rounds` > 1 re-estimates the
histograms from the new probabilities (EM). Clicked voxels are pinned later by the predictor. docs/intensity.md
has the measurements behind the defaults.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage


@dataclass(frozen=True)
class IntensityConfig:
    """How strongly and how the histograms are estimated (see the module docstring)."""

    strength: float = 1.0  # weight of the log likelihood ratio added to the network's logit
    rounds: int = 1  # EM rounds (histograms re-estimated from the refined probabilities)
    bins: int = 48  # histogram bins between the window's 0.5 and 99.5 % intensity quantiles
    smooth: float = 1.0  # Gaussian smoothing of the histograms, in bins
    max_ratio: float = 4.0  # the log likelihood ratio is clipped to +-max_ratio
    min_mass: float = 8.0  # no refinement when the object or its surroundings weigh less (voxels)
    unmix: bool = True  # object histogram = p-weighted histogram minus its share that looks like the surroundings
    quantile: float = 0.8  # which quantile of the per-bin ratio sets the surroundings' share (see `unmixed`)
    min_share: float = 0.1  # no refinement when the unmixed object histogram keeps less of the p-weighted mass
    inside_only: bool = True  # histograms over the window's voxels inside the volume (not the filled outside)
    ring: float = 0.0  # > 0: surroundings weighted by exp(-distance / ring) from the mask (patch voxels); 0: all alike
    up: float = 1.0  # share of `strength` applied to positive ratios (voxels that look like the object)


def _smoothed(hist: torch.Tensor, sigma: float) -> torch.Tensor:
    """A 1D histogram convolved with a Gaussian of `sigma` bins (edges replicated)."""
    if sigma <= 0:
        return hist
    r = max(1, int(round(3 * sigma)))
    t = torch.arange(-r, r + 1, dtype=hist.dtype)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    padded = torch.nn.functional.pad(hist[None, None], (r, r), mode="replicate")
    return torch.nn.functional.conv1d(padded, k[None, None])[0, 0]


def unmixed(h_in: torch.Tensor, h_bg: torch.Tensor, quantile: float) -> torch.Tensor:
    """The object's part of `h_in` (the p-weighted histogram, which also holds surroundings the prediction
    covers): h_in minus the largest multiple of the surroundings' histogram `h_bg` that fits under it (the
    `quantile` of h_in / h_bg over the bins where h_bg holds 1/(2 x bins) of its mass or more), clipped at 0."""
    f_bg = h_bg / h_bg.sum().clamp_min(1e-6)
    common = f_bg >= 0.5 / len(f_bg)
    if not bool(common.any()):
        return h_in
    scale = torch.quantile(h_in[common] / f_bg[common], quantile)
    return (h_in - scale * f_bg).clamp_min(0)


def intensity_bins(image: torch.Tensor, bins: int, valid: torch.Tensor | None = None) -> torch.Tensor | None:
    """Each voxel's histogram bin (same shape as `image`), `bins` bins between the 0.5 and 99.5 % quantiles of
    the `valid` voxels (all when None; estimated on at most about 50,000 voxels); None for a flat image."""
    flat = image.reshape(-1).float()
    if valid is not None:
        flat = flat[valid.reshape(-1)]
        if flat.numel() == 0:
            return None
    lo, hi = torch.quantile(flat[:: max(1, flat.numel() // 50_000)], torch.tensor([0.005, 0.995])).tolist()
    if hi - lo < 1e-6:
        return None
    return ((image.float() - lo) / (hi - lo) * bins).long().clamp(0, bins - 1)


def proximity(probs: torch.Tensor, ring: float) -> torch.Tensor:
    """exp(-d / ring) per voxel (z, y, x), d the distance in voxels to the mask probs > 0.5 (1 inside it)."""
    mask = (probs > 0.5).numpy()
    if not mask.any():
        return torch.ones_like(probs, dtype=torch.float32)
    d = ndimage.distance_transform_edt(~mask)
    return torch.from_numpy(np.exp(-d / ring).astype(np.float32))


def log_ratio(bins: torch.Tensor, probs: torch.Tensor, cfg: IntensityConfig,
              valid: torch.Tensor | None = None) -> torch.Tensor | None:
    """log(h_fg(I) / h_bg(I)) per voxel (shape of `bins`, z, y, x), the histograms of the `valid` voxels' bins
    (all when None) weighted by `probs` and 1 - `probs`; None when either side weighs less than `cfg.min_mass`
    voxels."""
    idx = bins.reshape(-1)
    w = probs.reshape(-1).float()
    keep = torch.ones_like(w) if valid is None else valid.reshape(-1).float()
    fg_mass = float((w * keep).sum())
    if fg_mass < cfg.min_mass or float(keep.sum()) - fg_mass < cfg.min_mass:
        return None
    near = keep if cfg.ring <= 0 else keep * proximity(probs, cfg.ring).reshape(-1)
    h_fg = _smoothed(torch.bincount(idx, weights=w * keep, minlength=cfg.bins).float(), cfg.smooth)
    h_bg = _smoothed(torch.bincount(idx, weights=(1 - w) * near, minlength=cfg.bins).float(), cfg.smooth)
    if float(h_bg.sum()) < cfg.min_mass:
        return None
    if cfg.unmix:
        h_fg = unmixed(h_fg, h_bg, cfg.quantile)
        if float(h_fg.sum()) < max(cfg.min_mass, cfg.min_share * fg_mass):
            return None
    eps = 0.5  # half a voxel per bin: empty bins give a bounded ratio
    ratio = torch.log((h_fg + eps) / (h_fg.sum() + eps * cfg.bins)) - torch.log((h_bg + eps) / (h_bg.sum() + eps * cfg.bins))
    return ratio.clamp(-cfg.max_ratio, cfg.max_ratio)[bins]


def refine_by_intensity(probs: torch.Tensor, image: torch.Tensor, cfg: IntensityConfig,
                        valid: torch.Tensor | None = None) -> torch.Tensor:
    """The window's foreground probabilities (z, y, x) moved towards what its intensities say (module docstring);
    `valid` (bool, z, y, x) marks the voxels the histograms count (a window's part inside the volume)."""
    bins = intensity_bins(image, cfg.bins, valid)
    if bins is None:
        return probs
    p = probs.float().clamp(1e-4, 1 - 1e-4)
    logit = torch.log(p) - torch.log1p(-p)
    out = probs
    for _ in range(max(1, cfg.rounds)):
        ratio = log_ratio(bins, out, cfg, valid)
        if ratio is None:
            return out
        out = torch.sigmoid(logit + cfg.strength * torch.where(ratio > 0, cfg.up * ratio, ratio))
    return out if valid is None else torch.where(valid, out, probs)
