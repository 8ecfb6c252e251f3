"""Average the weights of several snapshots of one run (stochastic weight averaging, Izmailov et al. 2018), or
keep several models as an ensemble.

Snapshots taken at a constant learning rate scatter around a flat region of the loss; their mean often lies
nearer its centre than any one of them, which is what a learning-rate decay buys, at no training cost. The
networks here normalise with InstanceNorm, so the mean needs no recomputed batch statistics.

    python -m training.average runs/d/snapshots/model_00{3,4,5}*.pt --out runs/d/swa.pt

All snapshots must share one architecture; the result is a native checkpoint whose `meta.averaged_from` lists
them (the other meta is the last snapshot's).

With `--ensemble` the networks are kept side by side instead (`inference.network.Ensemble`): every prediction
runs each of them and averages their logits. That costs one network run per member at inference, and suits
models of different runs, whose weights need not lie in one basin (so their weight mean may be worse than
either):

    python -m training.average --ensemble runs/f/model_ema.pt runs/g/model.pt --out runs/ens_fg.pt

`--half float16` (or `bfloat16`) stores the weights in 16 bits: half the file, and loading casts them back to
float32. float16 keeps 3 more mantissa bits, so it changed lite-xl's logits 7x less than bfloat16 (largest
difference 0.018 against 0.084 on one random patch). Given one checkpoint, it only rewrites it that way:

    python -m training.average runs/n/model.pt --half float16 --out runs/n/model_fp16.pt
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

import torch

from inference.network import Ensemble, LoadedModel, load_model, member_count, save_checkpoint


def check_one_architecture(models: Sequence[LoadedModel]) -> LoadedModel:
    """The last of `models`, after checking that all share its architecture and patch (ValueError otherwise)."""
    last = models[-1]
    for m in models:
        if m.arch != last.arch or tuple(m.patch_size) != tuple(last.patch_size):
            raise ValueError(f"{m.source or 'a model'}: another architecture than {last.source or 'the last'}")
    return last


def average_models(models: Sequence[LoadedModel]) -> LoadedModel:
    """The last of `models`, changed in place: its floating-point weights become the mean of all `models`'
    (integer buffers keep its own)."""
    if not models:
        raise ValueError("nothing to average")
    last = check_one_architecture(models)
    states = [m.net.state_dict() for m in models]
    mean = {}
    for key, value in states[-1].items():
        if value.is_floating_point():
            mean[key] = torch.stack([s[key].float() for s in states]).mean(0).to(value.dtype)
        else:
            mean[key] = value.clone()
    last.net.load_state_dict(mean)
    return last


def ensemble_models(models: Sequence[LoadedModel]) -> LoadedModel:
    """One model whose network is an `Ensemble` of `models`' networks (same architecture and patch; meta of the
    last). Members that are ensembles themselves are flattened."""
    if len(models) < 2:
        raise ValueError("an ensemble needs at least two checkpoints")
    last = check_one_architecture(models)
    members = [net for m in models for net in (m.net.members if isinstance(m.net, Ensemble) else [m.net])]
    return LoadedModel(Ensemble(members).eval(), last.patch_size, last.arch, dict(last.meta), last.source)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.average", description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoints", nargs="+", type=Path, help="native checkpoints (snapshots of one run)")
    parser.add_argument("--out", required=True, type=Path, help="the averaged native checkpoint")
    parser.add_argument("--ensemble", action="store_true",
                        help="keep the networks and average their logits at every prediction (an ensemble) "
                             "instead of averaging their weights")
    parser.add_argument("--half", choices=("float16", "bfloat16"), default=None,
                        help="store the weights in this 16-bit type (half the file; loaded back as float32)")
    parser.add_argument("--lineage", default=None,
                        help="a line for meta.lineage saying what the result descends from (default: the last's)")
    args = parser.parse_args(argv)
    dtype = getattr(torch, args.half) if args.half else None
    models = [load_model(p) for p in args.checkpoints]
    sources = [str(p) for p in args.checkpoints]
    lineage = {"lineage": args.lineage} if args.lineage else {}
    if args.ensemble:
        save_checkpoint(ensemble_models(models), args.out, {"ensemble_of": sources, **lineage}, dtype)
        print(f"ensemble of {member_count(load_model(args.out).net)} networks -> {args.out}")
    else:
        save_checkpoint(average_models(models), args.out, {"averaged_from": sources, **lineage}, dtype)
        print(f"averaged {len(args.checkpoints)} checkpoints -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
