"""The promptable network: profiles, building, and self-describing checkpoints.

The network is `ResidualEncoderUNet` from `dynamic-network-architectures` with nnInteractive's
8-channel input layout (see `CHANNELS`) and 2 output logits (background, foreground).
Two profiles share one code path: `nninteractive` (ResEnc-L, 102.4 M parameters, patch 192^3,
for GPUs and warm start) and `lite` (sized for CPU inference).

A native checkpoint is one file loaded with `torch.load(weights_only=True)`:
    {"format": FORMAT, "arch": {...plain kwargs, op names as strings...}, "patch_size": [z, y, x],
     "channels": CHANNELS, "normalization": "zscore", "state_dict": {...}, "meta": {...}, "members": n}
With members > 1 (absent: 1) the file is an `Ensemble` of n networks of that architecture whose logits are
averaged (`python -m training.average --ensemble`); inference treats it as one network.
nnInteractive v1.0's published folder (`plans.json`, `fold_*/checkpoint_final.pth`) loads too.

Modality routes: beside a checkpoint file `X.pt`, a file `X.<MODALITY>.pt` (e.g. `default.CT.pt`) replaces it
for the cases whose name starts with `<MODALITY>_`, the challenge's naming (`CT_AbdTumor_0001.npz`);
`load_model(path, routes=True)` loads them into `LoadedModel.routes`, `LoadedModel.for_case` picks one.
"""
from __future__ import annotations

import copy
import glob
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

FORMAT = "segfm3d-checkpoint-v1"
NUM_INPUT_CHANNELS = 8
# nnInteractive v1.0's input channel order; the seed method uses channels 0, 1, 2, 4, 5.
CHANNELS = {
    "image": 0,
    "prev_seg": 1,
    "box_pos": 2,
    "box_neg": 3,
    "click_pos": 4,
    "click_neg": 5,
    "scribble_pos": 6,
    "scribble_neg": 7,
}

# Only these layer types may be named in a checkpoint or plans file (no dynamic imports).
_OPS: dict[str, type[nn.Module]] = {
    "Conv3d": nn.Conv3d,
    "InstanceNorm3d": nn.InstanceNorm3d,
    "BatchNorm3d": nn.BatchNorm3d,
    "LeakyReLU": nn.LeakyReLU,
    "ReLU": nn.ReLU,
    "Dropout3d": nn.Dropout3d,
}


def _stage_arch(features: list[int], blocks: list[int]) -> dict[str, Any]:
    n = len(features)
    return {
        "n_stages": n,
        "features_per_stage": list(features),
        "conv_op": "Conv3d",
        "kernel_sizes": [[3, 3, 3]] * n,
        "strides": [[1, 1, 1]] + [[2, 2, 2]] * (n - 1),
        "n_blocks_per_stage": list(blocks),
        "n_conv_per_stage_decoder": [1] * (n - 1),
        "conv_bias": True,
        "norm_op": "InstanceNorm3d",
        "norm_op_kwargs": {"eps": 1e-5, "affine": True},
        "dropout_op": None,
        "dropout_op_kwargs": None,
        "nonlin": "LeakyReLU",
        "nonlin_kwargs": {"inplace": True},
    }


@dataclass(frozen=True)
class Profile:
    """A named network size: architecture kwargs plus the patch (z, y, x) it runs at."""

    name: str
    arch: dict[str, Any]
    patch_size: tuple[int, int, int]


PROFILES: dict[str, Profile] = {
    # ResEnc-L exactly as nnInteractive v1.0 (nnUNetResEncUNetLPlans, 3d_fullres_ps192).
    "nninteractive": Profile(
        "nninteractive", _stage_arch([32, 64, 128, 256, 320, 320], [1, 3, 4, 6, 6, 6]), (192, 192, 192)
    ),
    # CPU profile, chosen by measurement (README "Choosing the lite profile"): 2.4 M parameters,
    # about 0.35 s per 64^3 forward and 1.8 s per two-stage training step (batch 2) on 2 cores.
    "lite": Profile("lite", _stage_arch([8, 16, 32, 64, 128], [1, 1, 2, 2, 2]), (64, 64, 64)),
    # The larger CPU candidate (6.1 M, features 16-160), about 3x slower to train and 2x slower to run.
    "lite-l": Profile("lite-l", _stage_arch([16, 32, 64, 128, 160], [1, 2, 2, 2, 2]), (64, 64, 64)),
    # lite with a sixth stage (256 features at 1/32 resolution): 4x the parameters for about 20 % more time
    # per training step, since the added stage runs at 2^3 voxels of a 64^3 patch.
    "lite-deep": Profile("lite-deep", _stage_arch([8, 16, 32, 64, 128, 256], [1, 1, 2, 2, 2, 2]), (64, 64, 64)),
    # lite with 4x the features and one more block in the three deepest stages (1/4-1/16 resolution, where
    # convolutions are cheap): 14.3 M parameters for about 1.4x lite's training step and forward on 2 cores;
    # `python -m training.grow` turns a trained lite into it without losing what it learned.
    "lite-xl": Profile("lite-xl", _stage_arch([8, 16, 64, 128, 256], [1, 1, 3, 3, 3]), (64, 64, 64)),
    # Tiny network for tests only.
    "tiny": Profile("tiny", _stage_arch([4, 8, 8], [1, 1, 1]), (16, 16, 16)),
}


def _resolve_op(name: str | None) -> type[nn.Module] | None:
    """Map an op name ('Conv3d' or 'torch.nn.modules.conv.Conv3d') to its class; reject others."""
    if name is None:
        return None
    short = str(name).rsplit(".", 1)[-1]
    if short not in _OPS:
        raise ValueError(f"unsupported layer type in architecture: {name!r}")
    return _OPS[short]


def build_network(arch: dict[str, Any]) -> nn.Module:
    """Build the 8-channel-in, 2-logit-out ResidualEncoderUNet from plain architecture kwargs."""
    from dynamic_network_architectures.architectures.unet import ResidualEncoderUNet

    kw = copy.deepcopy(arch)
    for key in ("conv_op", "norm_op", "dropout_op", "nonlin"):
        kw[key] = _resolve_op(kw.get(key))
    net = ResidualEncoderUNet(
        input_channels=NUM_INPUT_CHANNELS, num_classes=2, deep_supervision=False, **kw
    )
    return net


class Ensemble(nn.Module):
    """Several networks of one architecture run on the same input; the output is the mean of their logits
    (B, 2, z, y, x). Its state_dict keys are `members.<i>.<key>`."""

    def __init__(self, members: list[nn.Module]):
        super().__init__()
        if len(members) < 2:
            raise ValueError("an ensemble needs at least two members")
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.members[0](x)
        for m in self.members[1:]:
            out = out + m(x)
        return out / len(self.members)


def member_count(net: nn.Module) -> int:
    """1 for a single network, the number of members for an `Ensemble`."""
    return len(net.members) if isinstance(net, Ensemble) else 1


def count_parameters(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


@dataclass
class LoadedModel:
    """A network in eval mode with what inference needs to know about it."""

    net: nn.Module
    patch_size: tuple[int, int, int]
    arch: dict[str, Any]
    meta: dict[str, Any] = field(default_factory=dict)
    source: str = ""
    routes: dict[str, "LoadedModel"] = field(default_factory=dict)  # modality -> the model for its cases

    def for_case(self, name: str) -> "LoadedModel":
        """The model for a case file name: its modality's route, else this one."""
        return self.routes.get(case_modality(name), self)

    @property
    def divisor(self) -> tuple[int, int, int]:
        """Each patch axis must be a multiple of this (the product of the strides), (z, y, x)."""
        strides = np.array(self.arch["strides"], dtype=int).reshape(-1, 3)
        return tuple(int(v) for v in strides.prod(axis=0))


def new_model(profile: str | Profile, seed: int | None = 0) -> LoadedModel:
    """A freshly initialised model of a profile (He init, as nnU-Net)."""
    prof = PROFILES[profile] if isinstance(profile, str) else profile
    if seed is not None:
        torch.manual_seed(seed)
    net = build_network(prof.arch)
    net.apply(net.initialize)
    return LoadedModel(net, tuple(prof.patch_size), copy.deepcopy(prof.arch), {"profile": prof.name})


def state_dict_to(state: dict[str, torch.Tensor], device: str | torch.device,
                  float_dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """Detached copies on `device` (floating-point entries in `float_dtype` when given) that keep the sharing of
    the source: entries that are the same tensor (the ResEnc decoder holds its encoder, so every encoder weight
    appears twice) stay one tensor, which torch.save writes once. A plain per-entry `.cpu()` from a GPU copies
    each entry apart: a 9.8 MB lite checkpoint became 35.8 MB, over the device tool's 16 MiB per returned file."""
    copies: dict[tuple, torch.Tensor] = {}
    out = {}
    for k, v in state.items():
        v = v.detach()
        key = (v.device, v.dtype, v.untyped_storage().data_ptr(), v.storage_offset(), tuple(v.shape), v.stride())
        if key not in copies:
            dtype = float_dtype if float_dtype is not None and v.is_floating_point() else v.dtype
            copies[key] = v.to(device, dtype)
        out[k] = copies[key]
    return out


def checkpoint_dict(model: LoadedModel, extra_meta: dict[str, Any] | None = None,
                    weights_dtype: torch.dtype | None = None) -> dict[str, Any]:
    """The self-describing checkpoint dictionary (plain types and tensors only); with `weights_dtype` (e.g.
    torch.bfloat16: half the file) the floating-point weights are stored in it, and loading casts them back to
    the network's float32."""
    meta = dict(model.meta)
    meta.update(extra_meta or {})
    state = state_dict_to(model.net.state_dict(), "cpu", weights_dtype)
    if weights_dtype is not None:
        meta["weights_dtype"] = str(weights_dtype).replace("torch.", "")
    return {
        "format": FORMAT,
        "arch": copy.deepcopy(model.arch),
        "patch_size": [int(v) for v in model.patch_size],
        "channels": dict(CHANNELS),
        "normalization": "zscore",
        "num_classes": 2,
        "state_dict": state,
        "meta": meta,
        "members": member_count(model.net),
    }


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """Save with torch.save to a temporary name in the same folder, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def save_checkpoint(model: LoadedModel, path: str | os.PathLike, extra_meta: dict | None = None,
                    weights_dtype: torch.dtype | None = None) -> None:
    atomic_torch_save(checkpoint_dict(model, extra_meta, weights_dtype), path)


def _load_torch(path: Path) -> Any:
    """torch.load with weights_only=True; nnU-Net logs may hold numpy scalars, which are allowed."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # numpy scalars in nnU-Net logging dicts
        if "numpy" not in str(err):
            raise
        safe = [np.dtype, np.core.multiarray.scalar] if hasattr(np, "core") else [np.dtype]
        safe += [type(np.dtype(t)) for t in ("float64", "float32", "int64", "int32", "bool")]
        with torch.serialization.safe_globals(safe):
            return torch.load(path, map_location="cpu", weights_only=True)


def _from_native(ckpt: dict[str, Any], source: str) -> LoadedModel:
    for key in ("arch", "patch_size", "state_dict"):
        if key not in ckpt:
            raise ValueError(f"{source}: checkpoint lacks '{key}'")
    if ckpt.get("channels", CHANNELS) != CHANNELS:
        raise ValueError(f"{source}: unsupported channel layout {ckpt.get('channels')}")
    n = int(ckpt.get("members", 1))
    net = build_network(ckpt["arch"]) if n == 1 else Ensemble([build_network(ckpt["arch"]) for _ in range(n)])
    net.load_state_dict(ckpt["state_dict"])
    meta = dict(ckpt.get("meta", {}))
    return LoadedModel(net, tuple(int(v) for v in ckpt["patch_size"]), ckpt["arch"], meta, source)


def _from_nninteractive_folder(folder: Path, fold: str | None = None) -> LoadedModel:
    """Load nnInteractive v1.0's folder: plans.json + fold_*/checkpoint_final.pth."""
    plans_path = folder / "plans.json"
    if not plans_path.is_file():
        raise FileNotFoundError(f"{folder}: no plans.json (not an nnInteractive model folder)")
    folds = sorted(p for p in folder.glob("fold_*") if (p / "checkpoint_final.pth").is_file())
    if fold is not None:
        folds = [p for p in folds if p.name == f"fold_{fold}"]
    if len(folds) != 1:
        raise ValueError(f"{folder}: expected exactly one fold_*/checkpoint_final.pth, found {len(folds)}; pass fold=")
    ckpt = _load_torch(folds[0] / "checkpoint_final.pth")
    if "network_weights" not in ckpt:
        raise ValueError(f"{folds[0]}: no 'network_weights' in checkpoint")
    plans = json.loads(plans_path.read_text())
    configuration = ckpt.get("init_args", {}).get("configuration") or "3d_fullres_ps192_bs24"
    conf = plans["configurations"][configuration]
    architecture = conf["architecture"]
    class_name = architecture.get("network_class_name", "")
    if not class_name.endswith("ResidualEncoderUNet"):
        raise ValueError(f"{plans_path}: unsupported network class {class_name!r}")
    arch = copy.deepcopy(architecture["arch_kwargs"])
    for key in ("conv_op", "norm_op", "dropout_op", "nonlin"):
        if arch.get(key) is not None:
            arch[key] = str(arch[key]).rsplit(".", 1)[-1]
    net = build_network(arch)
    net.load_state_dict(ckpt["network_weights"])
    meta = {
        "profile": "nninteractive",
        "origin": "nnInteractive v1.0 folder",
        "configuration": configuration,
        "trainer_name": ckpt.get("trainer_name"),
    }
    return LoadedModel(net, tuple(int(v) for v in conf["patch_size"]), arch, meta, str(folder))


def case_modality(name: str) -> str:
    """The modality prefix of a challenge case file name ('CT' of 'CT_AbdTumor_0001.npz'); '' without one."""
    base = Path(name).name
    return base.split("_", 1)[0] if "_" in base else ""


def route_paths(path: str | os.PathLike) -> dict[str, Path]:
    """The modality routes of a checkpoint file `X.pt`: {modality: `X.<modality>.pt`} for those that exist."""
    path = Path(path)
    if not path.is_file():
        return {}
    routes = {}
    for p in sorted(path.parent.glob(f"{glob.escape(path.stem)}.*{glob.escape(path.suffix)}")):
        modality = p.name[len(path.stem) + 1:len(p.name) - len(path.suffix)]
        if modality and "." not in modality and p.is_file():
            routes[modality] = p
    return routes


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu", routes: bool = False) -> LoadedModel:
    """Load a native checkpoint file or an nnInteractive v1.0 folder; the network is in eval mode. With
    `routes`, the file's modality routes (`X.<MODALITY>.pt` beside it, module docstring) come in `.routes`."""
    path = Path(path)
    if path.is_dir():
        model = _from_nninteractive_folder(path)
    elif path.is_file():
        ckpt = _load_torch(path)
        if not isinstance(ckpt, dict):
            raise ValueError(f"{path}: not a checkpoint dictionary")
        if ckpt.get("format") == FORMAT:
            model = _from_native(ckpt, str(path))
        elif "model" in ckpt and isinstance(ckpt["model"], dict) and ckpt["model"].get("format") == FORMAT:
            model = _from_native(ckpt["model"], str(path))  # a training checkpoint
        else:
            raise ValueError(f"{path}: unknown checkpoint format (expected '{FORMAT}')")
    else:
        raise FileNotFoundError(f"checkpoint not found: {path}")
    model.net.to(device).eval()
    if routes:
        model.routes = {modality: load_model(p, device) for modality, p in route_paths(path).items()}
    return model
