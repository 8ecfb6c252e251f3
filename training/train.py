"""The training loop: one process on CPU or GPU, or several GPUs/processes under torchrun (DDP).

A run folder holds config.json, log.csv (step, loss, Dice, samples/s, lr, validation), curves.png,
last.pt (the training checkpoint: native model + optimiser + step + config + RNG states, read with
torch.load(weights_only=True)), model.pt (the native inference checkpoint, loadable by
inference.network.load_model) and with `--ema` model_ema.pt (the moving average of the weights).
`--resume` continues from last.pt with the same next step: samples and simulated clicks are pure functions
of (seed, rank, step), and the optimiser state is restored.
"""
from __future__ import annotations

import csv
import gc
import math
import os
import random
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch.profiler import record_function

from inference import precision
from inference.network import (PROFILES, LoadedModel, atomic_torch_save, checkpoint_dict, load_model, member_count,
                               new_model, save_checkpoint)

from . import config as C
from .data import (PROMPT_KINDS, CaseStore, PromptDataset, SampleOptions, StreamSampler, list_cases, make_loader,
                   select_coreset, write_case_list)
from .difficulty import read_difficulty
from .mixture import SOURCE_NAMES, Mixture, Sources
from .simulate import hard_dice, make_predict, segmentation_loss, simulate_prompts, tubed_skeleton
from .trace import StepTracer

TRAIN_FORMAT = "segfm3d-train-v1"
# Training Dice per source of the sample and per kind of its first prompt (after the simulated clicks, as the
# loss sees it): which part of the mixture the model fails on.
GROUPS = tuple(f"dice_{name}" for name in SOURCE_NAMES) + tuple(f"dice_{kind}" for kind in PROMPT_KINDS)
# wait_s: seconds per step spent waiting for the sample loader; sim_s: in the simulated clicks (stage-1 passes and
# click placement): what bounds a GPU run when s_per_step is far above the network's own time. focus_bce: with
# --click-focus-weight, the BCE on the clicked error components, averaged over the passes that clicked.
# skel_recall: with --skeleton-weight, the soft recall of the targets' skeletons.
LOG_COLUMNS = ["step", "loss", "dice", "soft_dice", "bce", "samples_per_s", "s_per_step", "wait_s", "sim_s", "lr",
               "clicked", "elapsed_s", "val_dsc_auc_box", "val_dsc_final_box", "val_dsc_auc_nobox", "val_dsc_final_nobox",
               *GROUPS, "focus_bce", "skel_recall"]


# ---------------------------------------------------------------------- processes and devices
@dataclass(frozen=True)
class Dist:
    """This process's place in a torchrun job (rank 0 of 1 without torchrun)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def dist_from_env() -> Dist:
    """RANK / WORLD_SIZE / LOCAL_RANK / LOCAL_WORLD_SIZE as torchrun sets them."""
    env = os.environ
    world = int(env.get("WORLD_SIZE", 1))
    return Dist(int(env.get("RANK", 0)), world, int(env.get("LOCAL_RANK", 0)),
                int(env.get("LOCAL_WORLD_SIZE", world)))


def pick_device(name: str, dist: Dist) -> torch.device:
    """cuda:LOCAL_RANK when CUDA is present (auto), else cpu."""
    if name == "auto":
        return torch.device(f"cuda:{dist.local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device(f"cuda:{dist.local_rank}")
    return dev


def configure_threads(threads: int, dist: Dist) -> int:
    """torch intra-op threads: the given number, or this process's share of the usable cores."""
    if threads <= 0:
        try:
            cores = len(os.sched_getaffinity(0))
        except AttributeError:
            cores = os.cpu_count() or 1
        threads = max(1, cores // max(1, dist.local_world))
    torch.set_num_threads(threads)
    return threads


def init_distributed(dist: Dist, device: torch.device) -> None:
    """Join the process group: nccl on CUDA, gloo on CPU."""
    if dist.world > 1 and not torch.distributed.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")


def autocast_factory(device: torch.device, amp: str) -> tuple[Callable[[], Any], torch.dtype | None]:
    """A zero-argument autocast context factory and its dtype (None: full precision).

    auto: on CUDA bf16 where supported, else fp16; on a CPU what `inference.precision` picks
    ($SEGFM_PRECISION, default: bf16 where the processor computes it natively, else fp32)."""
    if amp == "auto" and device.type != "cuda":
        amp = {"bf16": "bf16", "fp32": "none"}[precision.resolve(device)]
    if amp == "none":
        return nullcontext, None
    if amp == "auto":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    else:
        dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return (lambda: torch.autocast(device.type, dtype=dtype)), dtype


# ---------------------------------------------------------------------- model
def enable_grad_checkpointing(net: torch.nn.Module) -> int:
    """Recompute each encoder stage in the backward pass (state-dict keys unchanged); returns the count."""
    from torch.utils.checkpoint import checkpoint

    stages = getattr(getattr(net, "encoder", None), "stages", None)
    if stages is None:
        raise ValueError("gradient checkpointing needs a network with encoder.stages")
    for stage in stages:
        inner = stage.forward

        def fwd(x, _inner=inner):
            if torch.is_grad_enabled():
                return checkpoint(_inner, x, use_reentrant=False)
            return _inner(x)
        stage.forward = fwd
    return len(stages)


def freeze_unused_heads(net: torch.nn.Module) -> int:
    """Freeze the deep-supervision heads that the forward pass does not use (DDP needs every trainable
    parameter to get a gradient); returns the number of frozen tensors. They stay in the checkpoints."""
    decoder = getattr(net, "decoder", None)
    heads = getattr(decoder, "seg_layers", None)
    if heads is None or getattr(decoder, "deep_supervision", False):
        return 0
    n = 0
    for head in list(heads)[:-1]:
        for p in head.parameters():
            p.requires_grad_(False)
            n += 1
    return n


def initial_model(cfg: C.TrainConfig) -> LoadedModel:
    """The model to start from: --init (nnInteractive folder, native or training checkpoint) or a new profile."""
    if cfg.init:
        model = load_model(cfg.init)
        if member_count(model.net) > 1:
            raise ValueError(f"--init {cfg.init}: an ensemble of {member_count(model.net)} networks cannot be "
                             "trained as one; start from one of its members")
        model.meta = {**model.meta, "init": str(cfg.init)}
        return model
    if cfg.profile not in PROFILES:
        raise ValueError(f"unknown --profile {cfg.profile!r}; choose from {sorted(PROFILES)}")
    return new_model(cfg.profile, seed=cfg.seed)


def build_sources(cfg: C.TrainConfig, paths: list[Path], workers: int) -> Sources:
    """The training sources: the --data cases (real, their labels drawn by --hard-examples when given, and, with
    the --labelmaps maps, synthesised; both drawing labels by --label-size-power), the supervoxel cases under
    --pseudo, and the canvases; the RAM budget is shared among the stores and workers."""
    maps = list_cases(cfg.labelmaps) if cfg.labelmaps and Path(cfg.labelmaps).is_dir() else []
    pseudo = list_cases(cfg.pseudo) if cfg.pseudo and Path(cfg.pseudo).is_dir() else []
    ram = cfg.ram_cache_mb / max(1, workers) / 3
    kw = dict(cache_dir=cfg.cache_dir or None, mmap_min_mb=cfg.mmap_min_mb, ram_budget_mb=ram)
    real = CaseStore(paths, **kw)
    if cfg.hard_examples:
        real.set_difficulty(read_difficulty(cfg.hard_examples), cfg.hard_power, cfg.hard_floor)
    painted = CaseStore(list(paths) + maps, **kw)
    for store in (real, painted):
        store.set_size_power(cfg.label_size_power)
    return Sources(real, painted, CaseStore(pseudo, **kw) if pseudo else None, Mixture.from_config(cfg))


def check_patch(patch: tuple[int, int, int], model: LoadedModel) -> None:
    for p, d in zip(patch, model.divisor):
        if p % d:
            raise ValueError(f"patch {patch} must be a multiple of {model.divisor} per axis for this network")


# ---------------------------------------------------------------------- schedule
def lr_at(step: int, cfg: C.TrainConfig, clock_step: int | None = None) -> float:
    """Learning rate of optimiser step `step` (0-based): linear warm-up, then constant, cosine or poly. The decay
    follows `clock_step` when given (the step the wall clock has reached under --time-limit-min)."""
    if cfg.warmup_steps > 0 and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return cfg.lr
    start = max(cfg.warmup_steps, cfg.decay_from)
    span = max(1, cfg.steps - start)
    t = min(1.0, max(0.0, ((step if clock_step is None else max(step, clock_step)) - start) / span))
    if cfg.schedule == "cosine":
        return cfg.min_lr + (cfg.lr - cfg.min_lr) * 0.5 * (1 + math.cos(math.pi * t))
    if cfg.schedule == "poly":
        return cfg.min_lr + (cfg.lr - cfg.min_lr) * (1 - t) ** cfg.poly_power
    raise ValueError(f"unknown schedule {cfg.schedule!r}")


# ---------------------------------------------------------------------- checkpoints
def rng_state() -> dict[str, Any]:
    """Python, numpy and torch RNG states as lists and tensors (safe for weights_only loading)."""
    version, pstate, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": [version, list(pstate), gauss],
        "numpy": [name, torch.from_numpy(np.asarray(keys, dtype=np.int64)), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` saved."""
    if "python" in state:
        version, pstate, gauss = state["python"]
        random.setstate((version, tuple(pstate), gauss))
    if "numpy" in state:
        name, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    if "torch" in state:
        torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def training_checkpoint(model: LoadedModel, optimizer: torch.optim.Optimizer, step: int, cfg: C.TrainConfig,
                        scaler: Any = None) -> dict[str, Any]:
    """The self-describing training checkpoint (native model inside, so load_model reads it too)."""
    ck = {
        "format": TRAIN_FORMAT,
        "model": checkpoint_dict(model, {"step": step, "trained_by": "training"}),
        "optimizer": optimizer.state_dict(),
        "step": int(step),
        "config": asdict(cfg),
        "rng": rng_state(),
    }
    if scaler is not None:
        ck["scaler"] = scaler.state_dict()
    return ck


def load_training_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    ck = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(ck, dict) or ck.get("format") != TRAIN_FORMAT:
        raise ValueError(f"{path}: not a training checkpoint ({TRAIN_FORMAT})")
    return ck


def optimizer_to(optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    for state in optimizer.state.values():
        for k, v in state.items():
            if isinstance(v, torch.Tensor) and k != "step":
                state[k] = v.to(device)


# ---------------------------------------------------------------------- logging
class RunLog:
    """log.csv with fixed columns and curves.png, written by rank 0 only."""

    def __init__(self, out: Path, resume_step: int | None):
        self.path = out / "log.csv"
        self.png = out / "curves.png"
        rows = []
        if resume_step is not None and self.path.is_file():
            with open(self.path, newline="") as fh:
                rows = [r for r in csv.DictReader(fh) if r.get("step") and int(r["step"]) <= resume_step]
        with open(self.path, "w", newline="") as fh:
            w = csv.DictWriter(fh, LOG_COLUMNS)
            w.writeheader()
            for r in rows:
                w.writerow({k: r.get(k, "") for k in LOG_COLUMNS})

    def write(self, row: dict[str, Any]) -> None:
        with open(self.path, "a", newline="") as fh:
            w = csv.DictWriter(fh, LOG_COLUMNS)
            w.writerow({k: (f"{row[k]:.6g}" if isinstance(row.get(k), float) else row.get(k, "")) for k in LOG_COLUMNS})

    def plot(self) -> None:
        """Loss, Dice and validation curves against the step."""
        try:
            import matplotlib
            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except Exception:  # matplotlib missing: the CSV is enough
            return
        with open(self.path, newline="") as fh:
            rows = list(csv.DictReader(fh))

        def series(key: str) -> tuple[list[int], list[float]]:
            pts = [(int(r["step"]), float(r[key])) for r in rows if r.get(key) not in (None, "")]
            return [p[0] for p in pts], [p[1] for p in pts]
        fig, axes = plt.subplots(1, 3, figsize=(15, 4))
        for ax, keys, title in ((axes[0], ["loss"], "loss"), (axes[1], ["dice", "soft_dice"], "train Dice"),
                                (axes[2], ["val_dsc_final_box", "val_dsc_final_nobox"], "validation DSC_Final")):
            for k in keys:
                xs, ys = series(k)
                if xs:
                    ax.plot(xs, ys, label=k, marker="o" if k.startswith("val") else None, ms=3)
            ax.set_title(title)
            ax.set_xlabel("step")
            ax.grid(alpha=0.3)
            if ax.lines:
                ax.legend()
        fig.tight_layout()
        tmp = self.png.with_name(".curves.tmp.png")
        fig.savefig(tmp, dpi=80)
        plt.close(fig)
        os.replace(tmp, self.png)


# ---------------------------------------------------------------------- the run
@dataclass
class Trainer:
    """The state of a run, built by `setup` and advanced by `train_step`."""

    cfg: C.TrainConfig
    dist: Dist
    device: torch.device
    model: LoadedModel
    net: torch.nn.Module            # the plain module (weights, checkpoints)
    fwd: torch.nn.Module            # what stage 2 calls (DDP and/or compiled)
    stage1: torch.nn.Module         # what stage 1 calls (no gradient, no DDP)
    optimizer: torch.optim.Optimizer
    scaler: Any
    autocast: Callable[[], Any]
    batches: Any
    patch: tuple[int, int, int]
    dataset: PromptDataset
    step: int = 0
    ema: Any = None                 # torch.optim.swa_utils.AveragedModel of `net` with --ema, else None
    clock_step: int | None = None   # under --time-limit-min: the step the wall clock has reached (schedule_clock)
    click_pool: Any = None          # --click-threads > 1: the thread pool that computes simulated clicks


def to_channels_last(net: torch.nn.Module) -> torch.nn.Module:
    """channels_last_3d for the convolutions; weights with a 1x1x1 kernel keep the standard strides (the two
    layouts are the same memory, but DDP compares strides and would warn about every such gradient)."""
    net = net.to(memory_format=torch.channels_last_3d)
    for p in net.parameters():
        if p.dim() == 5 and p.shape[2:] == (1, 1, 1):
            p.data = p.data.clone(memory_format=torch.contiguous_format)
    return net


def setup(cfg: C.TrainConfig, given: set[str] | None = None) -> Trainer:
    """Build (or resume) everything a run needs; returns the Trainer at its first step to run."""
    dist = dist_from_env()
    device = pick_device(cfg.device, dist)
    init_distributed(dist, device)
    out = Path(cfg.out)
    resume_ck = None
    if cfg.resume and (out / "last.pt").is_file():
        resume_ck = load_training_checkpoint(out / "last.pt")
        cfg = C.merge(C.from_dict(resume_ck["config"]), cfg, (given or set()) | {"resume"})
    elif cfg.resume and dist.main:
        print(f"--resume: no {out / 'last.pt'} yet, starting a new run", file=sys.stderr)
    cfg.validate()
    if device.type == "cpu":
        configure_threads(cfg.threads, dist)
    torch.manual_seed(cfg.seed)
    model = load_model(out / "last.pt") if resume_ck is not None else initial_model(cfg)
    patch = cfg.patch_size() or tuple(model.patch_size)
    check_patch(patch, model)
    model.patch_size = tuple(int(v) for v in patch)
    model.meta = {**model.meta, "train_patch": list(patch)}
    net = model.net.to(device).train()
    freeze_unused_heads(net)
    if cfg.channels_last:
        net = to_channels_last(net)
    if cfg.grad_checkpoint:
        enable_grad_checkpointing(net)
    core = torch.compile(net) if cfg.compile else net
    fwd = core
    if dist.world > 1:
        # Gradients as views of DDP's buckets: no copy between the gradients and the all-reduce buffers.
        fwd = torch.nn.parallel.DistributedDataParallel(
            core, device_ids=[device.index] if device.type == "cuda" else None, gradient_as_bucket_view=True)
    optimizer = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=cfg.lr,
                                  weight_decay=cfg.weight_decay)
    autocast, amp_dtype = autocast_factory(device, cfg.amp)
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 and device.type == "cuda" else None
    ema = None
    if cfg.ema > 0:
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
        ema = AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema), use_buffers=True)
        if resume_ck is not None and "ema" in resume_ck:
            ema.load_state_dict(resume_ck["ema"])
    step = 0
    if resume_ck is not None:
        optimizer.load_state_dict(resume_ck["optimizer"])
        optimizer_to(optimizer, device)
        if scaler is not None and "scaler" in resume_ck:
            scaler.load_state_dict(resume_ck["scaler"])
        set_rng_state(resume_ck["rng"])
        step = int(resume_ck["step"])
    root = Path(cfg.data)
    paths = list_cases(root)
    if cfg.coreset < 1.0:
        paths = select_coreset(paths, cfg.coreset, cfg.seed, root if root.is_dir() else None)
        if dist.main:
            write_case_list(paths, out / "coreset.txt", root if root.is_dir() else None)
    # One worker on a CPU: sampling (synthesis, deformation) overlaps the network and runs single-threaded
    # (cornucopia's ops ran 3-4x slower with the 2 training threads than with 1, measured on 2 cores).
    workers = cfg.num_workers if cfg.num_workers >= 0 else (min(8, os.cpu_count() or 1) if device.type == "cuda" else 1)
    sources = build_sources(cfg, paths, workers)
    dataset = PromptDataset(sources, SampleOptions.from_config(cfg, patch), cfg.seed)
    sampler = StreamSampler(cfg.batch_size, dist.rank, dist.world, start=step * cfg.accum)
    batches = make_loader(dataset, sampler, cfg.batch_size, workers, pin_memory=device.type == "cuda")
    if dist.main:
        out.mkdir(parents=True, exist_ok=True)
        C.save_json(cfg, out / "config.json")
    # the pool starts its threads at the first clicking batch, after the loader has forked its workers
    pool = ThreadPoolExecutor(cfg.click_threads, thread_name_prefix="clicks") if cfg.click_threads > 1 else None
    return Trainer(cfg, dist, device, model, net, fwd, core, optimizer, scaler, autocast, batches, patch, dataset, step,
                   ema, click_pool=pool)


def add_group_dice(totals: dict[str, float], dice: np.ndarray, batch: dict[str, torch.Tensor]) -> None:
    """Add each sample's Dice to the sums `sum:dice_<source>` and `sum:dice_<kind>` and count it in `n:...`
    (`group_means` turns them into the log's per-group columns)."""
    groups = [("source", SOURCE_NAMES), ("kind", PROMPT_KINDS)]
    for key, names in groups:
        if key not in batch:
            continue
        for i, d in zip(batch[key].tolist(), dice.tolist()):
            col = f"dice_{names[int(i)]}"
            totals[f"sum:{col}"] = totals.get(f"sum:{col}", 0.0) + float(d)
            totals[f"n:{col}"] = totals.get(f"n:{col}", 0.0) + 1.0


def group_means(acc: dict[str, float]) -> dict[str, float]:
    """The accumulated `sum:` / `n:` pairs of `add_group_dice` as means per group column (groups seen only)."""
    return {k[4:]: v / acc[f"n:{k[4:]}"] for k, v in acc.items() if k.startswith("sum:") and acc.get(f"n:{k[4:]}")}


def train_step(tr: Trainer) -> dict[str, float]:
    """One optimiser step (accum forward passes); returns the averaged metrics."""
    cfg, dev = tr.cfg, tr.device
    lr = lr_at(tr.step, cfg, tr.clock_step)
    for group in tr.optimizer.param_groups:
        group["lr"] = lr
    predict = make_predict(tr.stage1, tr.autocast)
    totals: dict[str, float] = {}
    clicked = 0
    for a in range(cfg.accum):
        t_wait = time.perf_counter()
        with record_function("loader"):
            b = next(tr.batches)
        t_sim = time.perf_counter()
        x = b["input"].to(dev, non_blocking=True)
        if cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last_3d)
        target = b["target"].to(dev, non_blocking=True)
        skeleton = None
        if cfg.skeleton_weight > 0:
            with record_function("skeleton"):
                skel = np.stack([tubed_skeleton(t) for t in b["target"].numpy()])
                skeleton = torch.from_numpy(skel).to(dev, non_blocking=True)
        rng = np.random.default_rng([cfg.seed, 1, tr.dist.rank, tr.step, a])
        with record_function("simulate_prompts"):
            x, sim = simulate_prompts(predict, x, target, b["has_box"], rng, cfg.p_click, cfg.click_rounds,
                                      cfg.nobox_always_click, cfg.click_rounds_max, tr.click_pool,
                                      focus=cfg.click_focus_weight > 0)
        t_end = time.perf_counter()  # x is read back on the CPU in the simulation, so the GPU work is included
        totals["wait_s"] = totals.get("wait_s", 0.0) + t_sim - t_wait
        totals["sim_s"] = totals.get("sim_s", 0.0) + t_end - t_sim
        clicked += sim.stage1_passes > 0
        sync = a == cfg.accum - 1 or not isinstance(tr.fwd, torch.nn.parallel.DistributedDataParallel)
        with (nullcontext() if sync else tr.fwd.no_sync()), record_function("forward_backward"):
            with tr.autocast():
                logits = tr.fwd(x)
            focus = None if sim.focus is None else torch.from_numpy(sim.focus).to(dev, non_blocking=True)
            loss, parts = segmentation_loss(logits, target, cfg.dice_weight, focus, cfg.click_focus_weight,
                                            skeleton, cfg.skeleton_weight)
            scaled = loss / cfg.accum
            if tr.scaler is not None:
                tr.scaler.scale(scaled).backward()
            else:
                scaled.backward()
        hard = hard_dice(logits.detach(), target).cpu().numpy()
        parts["dice"] = float(hard.mean())
        if "focus_bce" in parts:  # a mean over the clicking passes only (`group_means`)
            totals["sum:focus_bce"] = totals.get("sum:focus_bce", 0.0) + parts.pop("focus_bce")
            totals["n:focus_bce"] = totals.get("n:focus_bce", 0.0) + 1.0
        for k, v in parts.items():
            totals[k] = totals.get(k, 0.0) + v / cfg.accum
        add_group_dice(totals, hard, b)
    with record_function("optimizer"):
        if tr.scaler is not None:
            tr.scaler.unscale_(tr.optimizer)
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(tr.net.parameters(), cfg.grad_clip)
        if tr.scaler is not None:
            tr.scaler.step(tr.optimizer)
            tr.scaler.update()
        else:
            tr.optimizer.step()
        tr.optimizer.zero_grad(set_to_none=True)
        if tr.ema is not None:
            tr.ema.update_parameters(tr.net)
    tr.step += 1
    totals["lr"] = lr
    totals["clicked"] = clicked / cfg.accum
    return totals


def replica_spread(net: torch.nn.Module) -> float:
    """Largest difference of any weight between the DDP replicas (0.0 when they are equal); a collective."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return 0.0
    flat = torch.cat([p.detach().float().flatten() for p in net.parameters()])
    hi, lo = flat.clone(), flat
    torch.distributed.all_reduce(hi, op=torch.distributed.ReduceOp.MAX)
    torch.distributed.all_reduce(lo, op=torch.distributed.ReduceOp.MIN)
    return float((hi - lo).abs().max())


def save_all(tr: Trainer) -> None:
    """last.pt (training), model.pt (native), optional step_N.pt and --export (rank 0 writes; all ranks call)."""
    spread = replica_spread(tr.net) if tr.dist.world > 1 else 0.0
    if not tr.dist.main:
        return
    out = Path(tr.cfg.out)
    ck = training_checkpoint(tr.model, tr.optimizer, tr.step, tr.cfg, tr.scaler)
    ck["world_size"] = tr.dist.world
    ck["replica_spread"] = spread
    if spread > 0:
        print(f"warning: DDP replicas differ by up to {spread:.3g} at step {tr.step}", file=sys.stderr)
    if tr.ema is not None:
        ck["ema"] = tr.ema.state_dict()
    atomic_torch_save(ck, out / "last.pt")
    if tr.cfg.keep_every > 0 and tr.step % tr.cfg.keep_every == 0:
        atomic_torch_save(ck, out / f"step_{tr.step:07d}.pt")
    meta = {"step": tr.step, "trained_by": "training", "mixture": Mixture.from_config(tr.cfg).as_dict(),
            "train_config": asdict(tr.cfg)}
    save_checkpoint(tr.model, out / "model.pt", meta)
    if tr.cfg.snapshot_every > 0 and tr.step % tr.cfg.snapshot_every == 0:
        save_checkpoint(tr.model, out / "snapshots" / f"model_{tr.step:06d}.pt", meta)
    if tr.cfg.export:
        save_checkpoint(tr.model, tr.cfg.export, meta)
    if tr.ema is not None:
        averaged = replace(tr.model, net=tr.ema.module)
        meta_ema = {**meta, "ema": tr.cfg.ema}
        save_checkpoint(averaged, out / "model_ema.pt", meta_ema)
        if tr.cfg.snapshot_every > 0 and tr.step % tr.cfg.snapshot_every == 0:
            save_checkpoint(averaged, out / "snapshots_ema" / f"model_{tr.step:06d}.pt", meta_ema)


_VAL_CASES: dict[tuple[str, int], Any] = {}


def validation_case(path: Path, max_classes: int) -> Any:
    """A held-out case for the harness, reduced to at most `max_classes` evenly spread classes (relabelled 1..K)."""
    from evaluation.harness import Case, load_case

    key = (str(path), int(max_classes))
    if key not in _VAL_CASES:
        case = load_case(path)
        if 0 < max_classes < len(case.labels):
            keep = np.unique(np.linspace(0, len(case.labels) - 1, max_classes).round().astype(int))
            lut = np.zeros(int(case.gts.max()) + 1, dtype=np.uint8)
            lut[np.asarray(case.labels)[keep]] = np.arange(1, len(keep) + 1)
            case = Case(case.name, case.imgs, lut[case.gts], case.spacing, list(range(1, len(keep) + 1)), True)
        _VAL_CASES[key] = case
    return _VAL_CASES[key]


def validate(model: LoadedModel, folder: str | os.PathLike, device: torch.device, max_cases: int = 2,
             max_classes: int = 8) -> dict[str, float]:
    """Mean DSC_AUC and DSC_Final over held-out cases, with and without boxes, replayed in-process by
    evaluation.harness (box step + 5 simulated clicks) through the inference Predictor."""
    from evaluation.harness import InProcessPredictor, find_cases, run_case
    from inference.predictor import Predictor

    threads = torch.get_num_threads()
    paths = find_cases(folder)[: max_cases if max_cases > 0 else None]
    if not paths:
        return {}
    net = model.net
    was_training = net.training
    try:
        predictor = Predictor(model, device, per_class_run_s=1e9)  # no time-budget degradation in validation
        runner = InProcessPredictor.from_model(predictor, name="training")
        res: dict[str, float] = {}
        for mode in ("box", "nobox"):
            rows = [run_case(validation_case(p, max_classes), runner, mode == "box").row for p in paths]
            res[f"val_dsc_auc_{mode}"] = float(np.mean([r["DSC_AUC"] for r in rows]))
            res[f"val_dsc_final_{mode}"] = float(np.mean([r["DSC_Final"] for r in rows]))
        return res
    finally:
        net.train(was_training)
        torch.set_num_threads(threads)


def run_validation(tr: Trainer) -> dict[str, float]:
    """Validation metrics on the held-out cases (rank 0 only); empty when not configured."""
    if not tr.cfg.val_data or not tr.dist.main:
        return {}
    return validate(tr.model, tr.cfg.val_data, tr.device, tr.cfg.val_max_cases, tr.cfg.val_max_classes)


def schedule_clock(elapsed_s: float, cfg: C.TrainConfig, start_step: int, dist: Dist, device: torch.device) -> int:
    """Under --time-limit-min: the step the wall clock has reached, start_step + (elapsed share of the budget) x
    (steps still to go); cfg.steps once the budget is spent. Ranks agree (the largest elapsed time wins)."""
    share = elapsed_s / (60.0 * cfg.time_limit_min)
    if dist.world > 1:
        t = torch.tensor([share], dtype=torch.float64, device=device)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        share = float(t.item())
    return cfg.steps if share >= 1.0 else start_step + int(share * (cfg.steps - start_step))


def train(cfg: C.TrainConfig, given: set[str] | None = None,
          on_step: Callable[[Trainer, dict[str, float]], None] | None = None,
          clock: Callable[[], float] = time.perf_counter) -> Trainer:
    """Run (or resume) training to cfg.steps (or to the end of --time-limit-min); `on_step(trainer, metrics)` is
    called after every step (after its logging, checkpoint and validation); `clock` reads seconds."""
    tr = setup(cfg, given)
    cfg = tr.cfg
    log = RunLog(Path(cfg.out), tr.step if tr.step > 0 else None) if tr.dist.main else None
    bar = None
    if tr.dist.main and cfg.progress:
        from tqdm import tqdm
        bar = tqdm(total=cfg.steps, initial=tr.step, desc="train", dynamic_ncols=True, file=sys.stderr)
    acc: dict[str, float] = {}
    n_acc, t_last, t0 = 0, clock(), clock()
    samples_per_step = cfg.batch_size * cfg.accum * tr.dist.world
    start_step, saved = tr.step, True
    tracer = None
    if cfg.trace_steps > 0 and tr.dist.main:
        tracer = StepTracer(Path(cfg.out), cfg.trace_steps, tr.device.type)

    def write_row(now: float, lr: float) -> None:  # a log.csv row: the metrics averaged since the last one
        nonlocal acc, n_acc, t_last
        row = {k: v / n_acc for k, v in acc.items() if ":" not in k}
        row.update(group_means(acc))
        row.update(step=tr.step, samples_per_s=samples_per_step * n_acc / max(now - t_last, 1e-9),
                   s_per_step=(now - t_last) / n_acc, lr=lr, elapsed_s=now - t0)
        log.write(row)
        acc, n_acc, t_last = {}, 0, clock()

    while tr.step < cfg.steps:
        if cfg.time_limit_min > 0:
            tr.clock_step = schedule_clock(clock() - t0, cfg, start_step, tr.dist, tr.device)
            if tr.clock_step >= cfg.steps:
                break
        if tracer is not None:
            tracer.step_begins()
        metrics = train_step(tr)
        if tracer is not None:
            tracer.step_ends()
        saved = False
        for k, v in metrics.items():
            acc[k] = acc.get(k, 0.0) + v
        n_acc += 1
        now = clock()
        sps = samples_per_step * n_acc / max(now - t_last, 1e-9)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{metrics['loss']:.3f}", dice=f"{metrics['dice']:.3f}", sps=f"{sps:.2f}",
                            lr=f"{metrics['lr']:.2e}")
        if log is not None and (tr.step % cfg.log_every == 0 or tr.step == cfg.steps):
            write_row(now, metrics["lr"])
        if tr.step % cfg.ckpt_every == 0 or tr.step == cfg.steps:
            save_all(tr)
            saved = True
            if log is not None:
                log.plot()
        val_due = cfg.val_data and ((cfg.val_every > 0 and tr.step % cfg.val_every == 0) or tr.step == cfg.steps)
        if val_due:
            t_val = clock()
            res = run_validation(tr)
            if log is not None and res:
                log.write({"step": tr.step, **res})
                log.plot()
                if bar is not None:
                    bar.write(f"step {tr.step}: validation " + ", ".join(f"{k} {v:.3f}" for k, v in res.items()))
            t_last += clock() - t_val  # validation time is not training throughput
        if tr.dist.world > 1 and val_due:
            torch.distributed.barrier()
        if on_step is not None:
            on_step(tr, metrics)
    if not saved:  # the time budget ended the run between checkpoints
        if log is not None and n_acc:
            write_row(clock(), metrics["lr"])
        save_all(tr)
        if log is not None:
            log.plot()
    if bar is not None:
        bar.close()
    return tr


def leave_process_group(tr: Trainer | None) -> None:
    """Orderly DDP exit: wait for every rank, free the DDP wrapper (its reducer holds the process group), then
    destroy the group. A rank that tears gloo down while its peer is still saving or plotting, or a group destroyed
    only at interpreter shutdown, can abort the process ('terminate called without an active exception')."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return
    if tr is not None:
        torch.distributed.barrier()
        tr.fwd = tr.stage1 = None  # type: ignore[assignment]
    gc.collect()
    torch.distributed.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    cfg, given = C.config_from_args(argv)
    tr = None
    try:
        tr = train(cfg, given)
    finally:
        leave_process_group(tr)
    return 0
