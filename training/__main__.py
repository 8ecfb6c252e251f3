"""`python -m training`: train the promptable network (see `python -m training --help`).

One entry point for every case: CPU, one GPU, or several GPUs / processes with
`torchrun --nproc_per_node=N -m training ...` (DistributedDataParallel; gloo on CPU, nccl on CUDA).
"""
from __future__ import annotations

import sys

from .train import main

if __name__ == "__main__":
    sys.exit(main())
