"""Promptable 3D segmentation for the CVPR 2025 interactive challenge contract.

Stages, one module each: case_io (read, validate, write) -> prompts (encode) -> window (crop and
paste back) -> network (the ResEnc U-Net and its checkpoints) -> fusion (classes) -> predictor (the loop).
"""
