"""Grow a trained network into a larger profile without losing what it learned (Net2Net-style warm start).

A `ResidualEncoderUNet` of the same number of stages but more features per stage and more residual blocks
is initialised so that it computes (almost) the same function as the trained one:

- **wider stages** (Chen et al. 2016, Net2WiderNet): new channel c' of stage s copies an old channel idx_s[c']
  (the first C_s are the old ones, the rest drawn at random); every weight that reads stage s divides by the
  number of copies of the channel it reads, so the next layer's sum is unchanged. InstanceNorm normalises a
  copied channel exactly as the original, the residual additions add copies to copies, and the decoder's
  concatenations (up-sampled | skip) are mapped half by half. A little noise breaks the copies' symmetry.
- **deeper stages**: an added residual block starts with its last norm's scale and shift at zero, so its
  residual branch is zero and the block passes its input on (through one more LeakyReLU).

    python -m training.grow --from weights/default.pt --profile lite-xl --out runs/xl/init.pt

The result is a native checkpoint (`--init` it in `python -m training`). Arrays and weights carry no spatial
coordinates; channel maps only.
"""
from __future__ import annotations

import argparse
import re
import sys
from typing import Sequence

import numpy as np
import torch
from torch import nn

from inference.network import PROFILES, LoadedModel, Profile, load_model, member_count, new_model, save_checkpoint

IN, OUT = "in", "out"


def channel_map(old: int, new: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(idx, scale): new channel c' copies old channel idx[c']; a reader of c' multiplies by scale[c']
    (1 / the number of copies of idx[c'])."""
    if new < old:
        raise ValueError(f"cannot shrink a stage from {old} to {new} features")
    idx = np.concatenate([np.arange(old), rng.integers(0, old, new - old)])
    counts = np.bincount(idx, minlength=old)
    return idx, 1.0 / counts[idx]


def conv_groups(name: str, n_stages: int) -> tuple[object, object] | None:
    """(input group, output group) of a convolution by its module name: a stage index, ('cat', s) for the
    decoder's concatenation of stage s, IN (the 8 prompt channels) or OUT (the 2 logits); None: not a conv."""
    m = re.fullmatch(r"encoder\.stem\.convs\.0\.conv", name)
    if m:
        return IN, 0
    m = re.fullmatch(r"encoder\.stages\.(\d+)\.blocks\.(\d+)\.(conv1|conv2|skip\.1)\.conv", name)
    if m:
        s, b, part = int(m[1]), int(m[2]), m[3]
        reads_previous = (part == "skip.1") or (part == "conv1" and b == 0 and s > 0)
        return (s - 1 if reads_previous else s), s
    m = re.fullmatch(r"decoder\.transpconvs\.(\d+)", name)
    if m:
        i = int(m[1])
        return n_stages - 1 - i, n_stages - 2 - i
    m = re.fullmatch(r"decoder\.stages\.(\d+)\.convs\.0\.conv", name)
    if m:
        s = n_stages - 2 - int(m[1])
        return ("cat", s), s
    m = re.fullmatch(r"decoder\.seg_layers\.(\d+)", name)
    if m:
        return n_stages - 2 - int(m[1]), OUT
    return None


def _group_map(group: object, maps: dict[int, tuple[np.ndarray, np.ndarray]], fixed: int
               ) -> tuple[np.ndarray, np.ndarray]:
    if group in (IN, OUT):
        return np.arange(fixed), np.ones(fixed)
    if isinstance(group, tuple):  # ('cat', s): [up-sampled stage s | skip of stage s]
        idx, scale = maps[group[1]]
        c = len(np.unique(idx))
        return np.concatenate([idx, idx + c]), np.concatenate([scale, scale])
    return maps[int(group)]


def _in_added_block(name: str, old_blocks: Sequence[int]) -> bool:
    m = re.match(r"encoder\.stages\.(\d+)\.blocks\.(\d+)\.", name)
    return bool(m) and int(m[2]) >= int(old_blocks[int(m[1])])


def _widen(old: torch.Tensor, out_map, in_map, transposed: bool) -> torch.Tensor:
    """old weight indexed by the channel maps; the input dimension scaled by the copies' shares."""
    (oi, _), (ii, iscale) = out_map, in_map
    o_dim, i_dim = (1, 0) if transposed else (0, 1)
    w = old.index_select(o_dim, torch.as_tensor(oi)).index_select(i_dim, torch.as_tensor(ii))
    shape = [1] * w.dim()
    shape[i_dim] = -1
    return w * torch.as_tensor(iscale, dtype=w.dtype).reshape(shape)


def grow(model: LoadedModel, profile: str | Profile, noise: float = 0.01, seed: int = 0) -> LoadedModel:
    """The model grown into `profile` (same number of stages, at least as many features and blocks per stage)."""
    target = PROFILES[profile] if isinstance(profile, str) else profile
    if member_count(model.net) > 1:
        raise ValueError(f"{model.source or 'the model'} is an ensemble of {member_count(model.net)} networks: "
                         "grow one of its members")
    old_arch, new_arch = model.arch, target.arch
    n = int(old_arch["n_stages"])
    if int(new_arch["n_stages"]) != n:
        raise ValueError(f"profile {target.name} has {new_arch['n_stages']} stages, the model {n}: cannot grow")
    old_f, new_f = list(old_arch["features_per_stage"]), list(new_arch["features_per_stage"])
    if any(nb < ob for ob, nb in zip(old_arch["n_blocks_per_stage"], new_arch["n_blocks_per_stage"])):
        raise ValueError(f"profile {target.name} has fewer blocks than the model in some stage")
    rng = np.random.default_rng(seed)
    # stages of equal widths share one map: a stage whose skip path is the identity (no projection) adds
    # its input's channels to its own, so their copies must be the same
    by_width: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}
    for s in range(n):
        if (old_f[s], new_f[s]) not in by_width:
            by_width[old_f[s], new_f[s]] = channel_map(old_f[s], new_f[s], rng)
    maps = {s: by_width[old_f[s], new_f[s]] for s in range(n)}
    grown = new_model(target, seed=seed)
    old_mods = dict(model.net.named_modules())
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, mod in grown.net.named_modules():
            groups = conv_groups(name, n)
            if groups is None:
                continue
            src = old_mods.get(name)
            if src is None:
                if not _in_added_block(name, old_arch["n_blocks_per_stage"]):
                    # e.g. a stage whose skip path was the identity and now needs a projection
                    raise ValueError(f"cannot grow into {target.name}: the model has no counterpart of {name}")
                continue  # a conv of an added block: keep its fresh init (the block is silenced below)
            transposed = isinstance(mod, nn.ConvTranspose3d)
            in_ch, out_ch = mod.weight.shape[:2] if transposed else mod.weight.shape[1::-1]
            in_map = _group_map(groups[0], maps, int(in_ch))
            out_map = _group_map(groups[1], maps, int(out_ch))
            w = _widen(src.weight.detach().float(), out_map, in_map, transposed)
            if noise > 0 and w.shape != src.weight.shape:
                w = w + noise * float(w.std()) * torch.randn(w.shape, generator=gen)
            mod.weight.copy_(w)
            if mod.bias is not None:
                mod.bias.copy_(src.bias.detach()[torch.as_tensor(out_map[0])])
            norm_name = name[: -len(".conv")] + ".norm" if name.endswith(".conv") else None
            if norm_name and norm_name in old_mods:
                new_norm = grown.net.get_submodule(norm_name)
                sel = torch.as_tensor(out_map[0])
                new_norm.weight.copy_(old_mods[norm_name].weight.detach()[sel])
                new_norm.bias.copy_(old_mods[norm_name].bias.detach()[sel])
        for s, stage in enumerate(grown.net.encoder.stages):
            for b, block in enumerate(stage.blocks):
                if b >= int(old_arch["n_blocks_per_stage"][s]):
                    block.conv2.norm.weight.zero_()
                    block.conv2.norm.bias.zero_()
    grown.patch_size = tuple(model.patch_size)
    grown.meta = {**{k: v for k, v in model.meta.items() if k not in ("profile",)}, "profile": target.name,
                  "grown_from": {"profile": model.meta.get("profile"), "step": model.meta.get("step"),
                                 "source": model.source, "noise": noise, "seed": seed}}
    grown.net.eval()
    return grown


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.grow", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--from", dest="src", required=True, help="native or training checkpoint to grow")
    ap.add_argument("--profile", required=True, choices=sorted(PROFILES), help="the larger profile")
    ap.add_argument("--out", required=True, help="native checkpoint to write")
    ap.add_argument("--noise", type=float, default=0.01, help="symmetry-breaking noise, x the weight's std")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    model = load_model(args.src)
    grown = grow(model, args.profile, args.noise, args.seed)
    x = torch.randn(1, 8, *model.patch_size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a, b = model.net(x), grown.net(x)
    rel = float((a - b).abs().max() / a.abs().max())
    n_old = sum(p.numel() for p in model.net.parameters())
    n_new = sum(p.numel() for p in grown.net.parameters())
    save_checkpoint(grown, args.out)
    print(f"{args.src} ({n_old:,} parameters) -> {args.out} ({args.profile}, {n_new:,}); largest logit "
          f"difference on a random input: {rel:.2e} of the largest logit", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
