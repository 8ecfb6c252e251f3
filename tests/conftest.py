"""Shared test setup: tests run on the CPU with few threads so the suite stays quick on 2 cores."""
import os

os.environ.setdefault("OMP_NUM_THREADS", "2")

import torch  # noqa: E402

torch.set_num_threads(min(2, torch.get_num_threads()))
