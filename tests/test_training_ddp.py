"""Two-process DistributedDataParallel on CPU (gloo) through the real entry point: torchrun -m training."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

from inference.network import new_model
from training.data import write_synthetic_cases

ROOT = Path(__file__).resolve().parents[1]


def test_torchrun_two_processes_gloo(tmp_path):
    data = tmp_path / "cases"
    write_synthetic_cases(data, n=2, shape=(20, 28, 28), seed=4)
    out = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "training",
           "--data", str(data), "--out", str(out), "--profile", "tiny", "--steps", "2", "--accum", "2",
           "--batch-size", "1", "--p-click", "1", "--threads", "1", "--cache-dir", "", "--no-progress", "--seed", "7"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    log = proc.stdout + proc.stderr
    first_error = "\n".join(line for line in log.splitlines()
                            if any(k in line for k in ("Error", "error", "terminate", "Traceback", "rank")))
    assert proc.returncode == 0, first_error[:4000] + "\n---\n" + log[-4000:]
    ck = torch.load(out / "last.pt", weights_only=True)
    assert ck["step"] == 2 and ck["world_size"] == 2
    assert ck["replica_spread"] == 0.0  # every weight identical on both ranks
    init = new_model("tiny", seed=7).net.state_dict()
    trained = ck["model"]["state_dict"]
    assert any(not torch.equal(init[k], trained[k]) for k in init)
