"""Numeric precision of the network: fp32, or bf16 autocast where the processor computes bf16 natively.

One switch for inference (`predict.sh`, the server) and training: `SEGFM_PRECISION=auto|fp32|bf16`
(default auto). `auto` picks bf16 on a CPU that reports AVX512_BF16 or AMX (oneDNN then runs bf16
convolutions natively, about 2x faster here), fp32 on other CPUs (AVX2-only machines would emulate bf16,
which is slower than fp32); on CUDA the predictor keeps its fp16 autocast.
"""
from __future__ import annotations

import os
from contextlib import nullcontext
from typing import Any, Callable

import torch

ENV = "SEGFM_PRECISION"
CHOICES = ("auto", "fp32", "bf16")


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512_BF16 or AMX tiles), as torch sees it."""
    cpu = getattr(torch, "cpu", None)
    for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        fn = getattr(cpu, probe, None)
        try:
            if fn is not None and fn():
                return True
        except Exception:  # a probe missing or failing on an exotic build: treat as unsupported
            continue
    return False


def requested(value: str | None = None) -> str:
    """The requested precision: `value`, else $SEGFM_PRECISION, else auto; anything else is an error."""
    name = (value if value is not None else os.environ.get(ENV, "auto")).strip().lower() or "auto"
    if name not in CHOICES:
        raise ValueError(f"{ENV} must be one of {', '.join(CHOICES)}, not {name!r}")
    return name


def resolve(device: torch.device | str, value: str | None = None) -> str:
    """The precision to run on `device`: 'bf16' or 'fp32' on a CPU; on CUDA 'fp16' unless bf16/fp32 asked."""
    dev = torch.device(device)
    name = requested(value)
    if dev.type == "cuda":
        return "fp16" if name == "auto" else name
    if name == "auto":
        return "bf16" if cpu_has_native_bf16() else "fp32"
    return name


def autocast(device: torch.device | str, precision: str) -> Callable[[], Any]:
    """A zero-argument context factory running the network at `precision` on `device`."""
    dev = torch.device(device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    if dtype is None:
        return nullcontext
    return lambda: torch.autocast(dev.type, dtype=dtype)
