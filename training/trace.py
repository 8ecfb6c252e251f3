"""`--trace-steps N`: where a training step's time goes, from torch.profiler over N steps after 20 untimed ones.

`train_step` marks its stages with `torch.profiler.record_function` (loader, simulate_prompts, forward_backward,
optimizer); the tables in `<out>/profile.txt` list those stages and the operators under them, by time on the
CPU and, on a GPU, by time on the device. A GPU sprint returns the file (`RETURN` in training/gpu_sprint.sh).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

STAGES = ("loader", "simulate_prompts", "forward_backward", "optimizer")


class StepTracer:
    """Call `step_begins()` before and `step_ends()` after each training step; writes the file once."""

    def __init__(self, out: Path, steps: int, device_type: str, skip: int = 20):
        self.out, self.steps, self.skip, self.device_type = Path(out), int(steps), int(skip), device_type
        self.seen = 0
        self.prof: Any = None

    def step_begins(self) -> None:
        if self.steps > 0 and self.seen == self.skip and self.prof is None:
            acts = [torch.profiler.ProfilerActivity.CPU]
            if self.device_type == "cuda":
                acts.append(torch.profiler.ProfilerActivity.CUDA)
            self.prof = torch.profiler.profile(activities=acts)
            self.prof.__enter__()

    def step_ends(self) -> None:
        self.seen += 1
        if self.prof is not None and self.seen == self.skip + self.steps:
            self.prof.__exit__(None, None, None)
            self.write(self.prof)
            self.prof = None

    def write(self, prof: Any) -> Path:
        ka = prof.key_averages()
        parts = [f"torch.profiler over {self.steps} training steps (after {self.skip} untimed ones); "
                 f"stages: {', '.join(STAGES)}\n",
                 "== by self time on the CPU ==", ka.table(sort_by="self_cpu_time_total", row_limit=30),
                 "== by total time on the CPU (the stages include what they call) ==",
                 ka.table(sort_by="cpu_time_total", row_limit=30)]
        if self.device_type == "cuda":
            for key in ("self_device_time_total", "self_cuda_time_total"):
                try:
                    parts += ["== by self time on the GPU ==", ka.table(sort_by=key, row_limit=30)]
                    break
                except (AttributeError, KeyError, ValueError):
                    continue
        path = self.out / "profile.txt"
        path.write_text("\n".join(parts) + "\n")
        return path
