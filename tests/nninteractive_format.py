"""Test helper: write a model folder in nnInteractive v1.0's published layout (no nnU-Net needed).

    <folder>/plans.json                      configurations[conf]['architecture'] + 'patch_size'
    <folder>/dataset.json
    <folder>/inference_session_class.json
    <folder>/fold_0/checkpoint_final.pth     {'network_weights', 'init_args', 'trainer_name', ...}

Op names are nnU-Net's fully qualified strings ('torch.nn.modules.conv.Conv3d', ...), listed in
'_kw_requires_import', as nnU-Net's ResEnc planners write them.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import torch

RESENC_CLASS = "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet"
_QUALIFIED = {
    "Conv3d": "torch.nn.modules.conv.Conv3d",
    "InstanceNorm3d": "torch.nn.modules.instancenorm.InstanceNorm3d",
    "BatchNorm3d": "torch.nn.modules.batchnorm.BatchNorm3d",
    "LeakyReLU": "torch.nn.LeakyReLU",
    "ReLU": "torch.nn.ReLU",
    "Dropout3d": "torch.nn.modules.dropout.Dropout3d",
}
_OP_KEYS = ("conv_op", "norm_op", "dropout_op", "nonlin")


def nninteractive_arch_kwargs(arch: dict[str, Any]) -> dict[str, Any]:
    """Our plain architecture kwargs with op names spelled as nnU-Net's plans spell them."""
    kw = copy.deepcopy(arch)
    for key in _OP_KEYS:
        if kw.get(key) is not None:
            short = str(kw[key]).rsplit(".", 1)[-1]
            kw[key] = _QUALIFIED.get(short, kw[key])
    return kw


def write_nninteractive_folder(folder: str | Path, net_state_dict: dict[str, torch.Tensor], arch_kwargs: dict[str, Any],
                               patch_size, configuration: str = "3d_fullres_ps192_bs24") -> Path:
    """Write plans.json, dataset.json, inference_session_class.json and fold_0/checkpoint_final.pth; returns the folder."""
    folder = Path(folder)
    (folder / "fold_0").mkdir(parents=True, exist_ok=True)
    arch = nninteractive_arch_kwargs(arch_kwargs)
    plans = {
        "dataset_name": "Dataset225_nnInteractiveV2",
        "plans_name": "nnUNetResEncUNetLPlans_noResampling",
        "original_median_spacing_after_transp": [1.0, 1.0, 1.0],
        "image_reader_writer": "SimpleITKIO",
        "transpose_forward": [0, 1, 2],
        "transpose_backward": [0, 1, 2],
        "configurations": {
            configuration: {
                "data_identifier": "nnUNetPlans_3d_fullres",
                "preprocessor_name": "DefaultPreprocessor",
                "batch_size": 24,
                "patch_size": [int(v) for v in patch_size],
                "spacing": [1.0, 1.0, 1.0],
                "normalization_schemes": ["ZScoreNormalization"],
                "use_mask_for_norm": [False],
                "architecture": {
                    "network_class_name": RESENC_CLASS,
                    "arch_kwargs": arch,
                    "_kw_requires_import": [k for k in _OP_KEYS if arch.get(k) is not None],
                },
            }
        },
    }
    (folder / "plans.json").write_text(json.dumps(plans, indent=2))
    (folder / "dataset.json").write_text(json.dumps({"channel_names": {"0": "image"},
                                                     "labels": {"background": 0, "foreground": 1},
                                                     "file_ending": ".nii.gz"}, indent=2))
    (folder / "inference_session_class.json").write_text(json.dumps(
        {"inference_class": "nnInteractiveInferenceSession", "point_radius": 4,
         "preferred_scribble_thickness": 2}, indent=2))
    ckpt = {
        "network_weights": {k: v.detach().cpu().clone() for k, v in net_state_dict.items()},
        "init_args": {"plans": plans, "configuration": configuration, "fold": 0},
        "trainer_name": "nnInteractiveTrainer_stub",
        "current_epoch": 1,
        "inference_allowed_mirroring_axes": [0, 1, 2],
        "logging": {},
        "_best_ema": None,
        "grad_scaler_state": None,
    }
    torch.save(ckpt, folder / "fold_0" / "checkpoint_final.pth")
    return folder
