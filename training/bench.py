"""`python -m training.bench`: training speed (s/step, samples/s) and peak memory on this machine.

Each measurement runs in its own process (so peak RSS is its own) through the real training step:
sampling, stage 1 + click simulation (p_click = 1) or stage 2 only (p_click = 0), backward, AdamW,
in fp32 and, where the processor computes bf16 natively, under bf16 autocast. The expected step time of
a run with p_click = p is (1 - p) x no-click + p x click. A second table gives the samples/s of each data
source alone (`training.mixture`), in one process on one thread, as a DataLoader worker runs.
"""
from __future__ import annotations

import argparse
from dataclasses import asdict
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def measure(spec: dict) -> dict:
    """Time `steps` training steps after `warmup` (one process); spec holds TrainConfig fields plus those two."""
    import torch

    from . import config as C
    from .data import measure_loading, write_synthetic_cases
    from .train import setup, train_step

    spec = dict(spec)
    steps, warmup = int(spec.pop("steps_timed", 5)), int(spec.pop("warmup", 2))
    with tempfile.TemporaryDirectory() as tmp:
        if not spec.get("data"):
            spec["data"] = str(Path(tmp) / "cases")
            write_synthetic_cases(spec["data"], n=3, shape=(96, 128, 128), n_classes=4)
        cfg = C.TrainConfig(**{**spec, "out": str(Path(tmp) / "run"), "progress": False, "steps": 10**6})
        t0 = time.perf_counter()
        tr = setup(cfg)
        setup_s = time.perf_counter() - t0
        cuda = tr.device.type == "cuda"
        if cuda:
            torch.cuda.reset_peak_memory_stats(tr.device)
        t0 = time.perf_counter()
        for _ in range(warmup):
            train_step(tr)
        if cuda:
            torch.cuda.synchronize(tr.device)
        warmup_s = time.perf_counter() - t0
        times = []
        for _ in range(steps):
            t = time.perf_counter()
            train_step(tr)
            if cuda:
                torch.cuda.synchronize(tr.device)
            times.append(time.perf_counter() - t)
        times.sort()
        med = times[len(times) // 2]
        res = {
            "profile": cfg.profile if not cfg.init else cfg.init, "patch": list(tr.patch), "batch": cfg.batch_size,
            "p_click": cfg.p_click, "channels_last": cfg.channels_last, "compile": cfg.compile,
            "threads": torch.get_num_threads(), "device": str(tr.device), "amp": cfg.amp,
            "s_per_step_median": med, "s_per_step_min": times[0], "s_per_step_mean": sum(times) / len(times),
            "samples_per_s": cfg.batch_size * cfg.accum / med, "setup_s": setup_s, "warmup_s": warmup_s, "peak_rss_mb": _peak_rss_mb(),
        }
        res["loader_samples_per_s"] = measure_loading(tr.dataset, 20)  # one process, no workers
        if cuda:
            res["peak_gpu_mb"] = torch.cuda.max_memory_allocated(tr.device) / 2**20
        return res


def run_isolated(spec: dict, timeout: float) -> dict:
    """`measure(spec)` in a fresh process (its own peak RSS); returns its JSON result or the error."""
    cmd = [sys.executable, "-m", "training.bench", "--one", json.dumps(spec)]
    env = dict(os.environ, PYTHONPATH=str(PROJECT_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=PROJECT_ROOT, env=env)
    except subprocess.TimeoutExpired:
        return {**spec, "error": f"timed out after {timeout:.0f} s"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {**spec, "error": (proc.stderr or proc.stdout)[-800:]}
    return json.loads(lines[-1])


def format_row(r: dict) -> str:
    if "error" in r:
        return f"| {r.get('profile')} | {r.get('patch', '')} | p_click={r.get('p_click')} | error: {r['error'][-200:]!r} |"
    gpu = f" | {r['peak_gpu_mb']:.0f}" if "peak_gpu_mb" in r else ""
    return (f"| {r['profile']} | {r['amp']} | {'x'.join(map(str, r['patch']))} | {r['batch']} | {r['p_click']:g} | "
            f"{'on' if r['channels_last'] else 'off'} | {'on' if r['compile'] else 'off'} | {r['threads']} | "
            f"{r['s_per_step_median']:.2f} | {r['samples_per_s']:.2f} | {r['loader_samples_per_s']:.0f} | "
            f"{r['peak_rss_mb']:.0f}{gpu} |")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profiles", nargs="+", default=None,
                    help="CPU profiles to time (default: the lite profiles of inference.network.PROFILES)")
    ap.add_argument("--batch-size", type=int, default=2, help="samples per step")
    ap.add_argument("--steps", type=int, default=4, help="timed steps per measurement (median reported)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    ap.add_argument("--data", default=None,
                    help="training folder (default: data/train when present, else synthetic 96x128x128 cases)")
    ap.add_argument("--levers", action="store_true",
                    help="also time the CPU speed levers: channels_last off, torch.compile on")
    ap.add_argument("--p-click", type=float, nargs="+", default=[0.0, 1.0],
                    help="p_click values to time (0: stage 2 only; 1: stage 1 + click + stage 2)")
    ap.add_argument("--amps", nargs="+", default=None,
                    help="CPU precisions to time: none (fp32) and bf16 (default: both where the CPU has native bf16)")
    ap.add_argument("--no-sources", action="store_true", help="skip the samples/s table of the data sources")
    ap.add_argument("--transport", action="store_true",
                    help="only time how batches reach the training process from 2 workers (pipes against shared "
                         "memory, batch 24 at 64^3), then stop")
    ap.add_argument("--gpu-init", default="", help="on CUDA: also time a warm start from this nnInteractive folder")
    ap.add_argument("--timeout", type=float, default=900, help="seconds per measurement")
    ap.add_argument("--one", default="", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one:
        print(json.dumps(measure(json.loads(args.one))), flush=True)
        return 0
    if args.transport:
        print(transport_table())
        return 0
    import torch

    from inference.network import PROFILES

    profiles = args.profiles or [p for p in PROFILES if p.startswith("lite")]
    data = args.data if args.data is not None else (str(PROJECT_ROOT / "data" / "train")
                                                    if (PROJECT_ROOT / "data" / "train").is_dir() else "")
    specs = []
    base = {"batch_size": args.batch_size, "steps_timed": args.steps, "warmup": args.warmup, "data": data,
            "device": "cpu", "cache_dir": ""}
    from inference.precision import cpu_has_native_bf16

    amps = args.amps or (["none", "bf16"] if cpu_has_native_bf16() else ["none"])
    for prof in profiles:
        for amp in amps:
            for p in args.p_click:
                specs.append({**base, "profile": prof, "p_click": p, "amp": amp})
        if args.levers:
            specs.append({**base, "profile": prof, "p_click": 0.0, "channels_last": False})
            specs.append({**base, "profile": prof, "p_click": 0.0, "compile": True, "warmup": 2})
    if torch.cuda.is_available():
        gpu = {**base, "device": "cuda", "profile": "nninteractive", "batch_size": 2, "amp": "auto"}
        if args.gpu_init:
            gpu["init"] = args.gpu_init
        for p in args.p_click:
            specs.append({**gpu, "p_click": p})
        specs.append({**gpu, "p_click": 0.0, "grad_checkpoint": True})
    load = os.getloadavg()
    print(f"training bench on {os.cpu_count()} CPU(s), torch {torch.__version__}, data {data or 'synthetic'}, "
          f"load average before {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}", flush=True)
    header = ("| profile | amp | patch | batch | p_click | channels_last | compile | threads | s/step | samples/s | "
              "loader samples/s | peak RSS MB" + (" | peak GPU MB" if torch.cuda.is_available() else "") + " |")
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for spec in specs:
        print(format_row(run_isolated(spec, args.timeout)), flush=True)
    if not args.no_sources:
        print()
        print(sources_table(data))
    load = os.getloadavg()
    print(f"load average after {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} (other processes share these cores)")
    return 0


class _FixedSamples:
    """A dataset of one real-sized sample (8 x patch^3 float32 input, bool target), repeated: the transport alone."""

    def __init__(self, patch: int):
        from .data import SampleOptions
        self.opts = SampleOptions(patch=(patch,) * 3)
        rng = np.random.default_rng(0)
        self.sample = {"input": rng.random((8, patch, patch, patch), dtype=np.float32),
                       "target": rng.random((patch, patch, patch)) < 0.1, "label": np.int64(1)}

    def __getitem__(self, index: int) -> dict:
        return self.sample


def transport_table(batch: int = 24, workers: int = 2, patch: int = 64, n: int = 10) -> str:
    """Seconds per batch that the training process spends receiving batches from `workers` sample workers,
    numpy through the pipes against torch tensors in shared memory (training.data.make_loader), the samples
    themselves free: what a GPU run pays per step before any sampling or network work."""
    from .data import StreamSampler, make_loader

    rows = [f"| transport | s/batch of {batch} at {patch}^3 ({workers} workers) | samples/s |", "|---|---|---|"]
    for shared in (False, True):
        it = make_loader(_FixedSamples(patch), StreamSampler(batch), batch, workers, shared=shared)
        for _ in range(workers * 2):  # the workers' first batches are ready before the clock starts
            next(it)
        t0 = time.perf_counter()
        for _ in range(n):
            next(it)
        dt = (time.perf_counter() - t0) / n
        rows.append(f"| {'shared memory' if shared else 'pipes (numpy)'} | {dt:.3f} | {batch / dt:.0f} |")
    return "\n".join(rows)


def sources_table(data: str, n: int = 20, patch: int = 64, warmup: int = 40) -> str:
    """Samples/s of each source alone (one thread, default TrainConfig sampling options), as a table; the
    first `warmup` samples load the volumes (and their first clicks) and are not timed."""
    import torch

    from . import config as C
    from .data import SampleOptions, list_cases, make_sample, write_synthetic_cases
    from .mixture import SOURCE_NAMES
    from .train import build_sources

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        if not data:
            data = str(Path(tmp) / "cases")
            write_synthetic_cases(data, n=3, shape=(96, 128, 128), n_classes=4)
        cfg = C.TrainConfig(data=data)
        opts = SampleOptions.from_config(cfg, (patch,) * 3)
        rows = [f"| source | samples/s (1 thread, after {warmup} untimed) | ms/sample |", "|---|---|---|"]
        for name in SOURCE_NAMES:
            one = C.TrainConfig(**{**asdict(cfg), **{f"mix_{m}": float(m == name) for m in SOURCE_NAMES}})
            try:
                sources = build_sources(one, list_cases(data), 1)
            except ValueError as err:  # no data for this source (e.g. no pseudo-label cache)
                rows.append(f"| {name} | - ({err}) | - |")
                continue
            for i in range(warmup):  # loads the volumes a run holds in RAM after its first minutes
                make_sample(sources, opts, 0, i)
            t0 = time.perf_counter()
            for i in range(warmup, warmup + n):
                make_sample(sources, opts, 0, i)
            dt = (time.perf_counter() - t0) / n
            rows.append(f"| {name} | {1 / dt:.1f} | {1000 * dt:.0f} |")
    return "\n".join(rows)


if __name__ == "__main__":
    sys.exit(main())
