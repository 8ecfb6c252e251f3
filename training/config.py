"""Training configuration: one dataclass, every field a command-line option with its help text.

The config is saved as JSON in the run folder (`config.json`) and inside every training checkpoint
(`asdict(cfg)`), so a checkpoint says how it was made and `--resume` can continue it.
"""
from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints


def opt(default: Any, help: str, choices: tuple | None = None, cli: bool = True) -> Any:
    """A dataclass field carrying its command-line help text (and choices)."""
    return field(default=default, metadata={"help": help, "choices": choices, "cli": cli})


@dataclass
class TrainConfig:
    """Everything a training run needs; defaults are the CPU lite run."""

    # ---------------------------------------------------------------- data
    data: str = opt("data/train", "training folder: *.npz (imgs, gts, spacing) found recursively, "
                                  "e.g. <Modality>/<Dataset>/<case>.npz or flat <Modality>_<name>.npz")
    out: str = opt("runs/train", "run folder: config.json, log.csv, curves.png, last.pt, model.pt")
    coreset: float = opt(1.0, "fraction of the cases to train on, drawn uniformly per modality from "
                              "--seed (the paper uses 0.1); the chosen list is written to <out>/coreset.txt")
    cache_dir: str = opt(".cache/npy", "folder for uncompressed .npy copies of big volumes, memory-mapped "
                                       "instead of held in RAM")
    mmap_min_mb: float = opt(256.0, "volumes whose image+labels exceed this many MB are memory-mapped from "
                                    "--cache-dir; smaller ones are held decompressed in RAM")
    ram_cache_mb: float = opt(8192.0, "RAM budget per rank for decompressed volumes, shared out among its "
                                      "workers (least recently used evicted)")
    labelmaps: str = opt("data/labelmaps", "folder of label maps without images (*.npz with gts, spacing) for "
                                           "label-to-image synthesis and ensembles, besides the --data cases "
                                           "(skipped when missing)")
    pseudo: str = opt(".cache/pseudo", "folder of supervoxel pseudo-label cases written by "
                                       "`python -m training.pseudo` (the pseudo source is skipped when empty)")
    mix_real: float = opt(0.5, "sampling weight of real images with their labels")
    mix_synth: float = opt(0.2, "sampling weight of images synthesised from label maps (SynthSeg-style)")
    mix_pseudo: float = opt(0.1, "sampling weight of supervoxel pseudo-labels on real images")
    mix_ensemble: float = opt(0.1, "sampling weight of ensembles of real object masks with synthetic appearance")
    mix_procedural: float = opt(0.1, "sampling weight of procedural shapes (blobs, tubes, plates)")
    hard_examples: str = opt("", "a `python -m training.difficulty` file (box-step Dice per structure of the --data "
                                 "cases): draw a real case's labels by (1 - Dice) ^ --hard-power + --hard-floor "
                                 "instead of uniformly (empty: uniformly)")
    hard_power: float = opt(1.0, "exponent of (1 - Dice) in the --hard-examples weights")
    hard_floor: float = opt(0.1, "weight added to every label under --hard-examples (so well-learnt ones still come up)")
    label_size_power: float = opt(0.0, "draw a case's labels (real images and label maps) with weight "
                                       "(voxels) ^ this instead of uniformly (0); 0.5 favours large structures, "
                                       "which a single click otherwise rarely trains")
    num_workers: int = opt(-1, "DataLoader worker processes (-1: 1 on CPU, min(8, cores) on CUDA); workers "
                               "use the file system for sharing, not /dev/shm")
    # ---------------------------------------------------------------- model
    profile: str = opt("lite", "network profile, a name of inference.network.PROFILES (nninteractive = "
                               "ResEnc-L at 192^3; the lite ones for CPU; tiny for tests); unused with --init")
    init: str = opt("", "warm start: an nnInteractive v1.0 folder (plans.json + fold_*/checkpoint_final.pth), "
                        "a native checkpoint or a training checkpoint; empty = from scratch")
    patch: str = opt("", "patch size 'z,y,x' (default: the profile's or the checkpoint's patch)")
    # ---------------------------------------------------------------- prompts and augmentation
    p_no_box: float = opt(0.3, "probability that a sample has no box (its first prompt is the evaluator's "
                               "first click), so click-only cases are learned")
    p_click: float = opt(0.5, "probability per batch of simulating clicks on the model's own errors "
                              "(stage 1 without gradient, then stage 2 with all prompts)")
    click_rounds: int = opt(1, "clicks simulated per clicking batch (k rounds of predict-then-click)")
    click_rounds_max: int = opt(0, "when above --click-rounds: the rounds of each clicking batch are drawn "
                                   "uniformly from click-rounds..this (the organizer clicks up to 5 times)")
    click_threads: int = opt(1, "threads that compute the simulated clicks of a batch's samples in parallel (cc3d "
                                "and the distance transform release the GIL; on a GPU machine with cores to spare: 4)")
    nobox_always_click: bool = opt(False, "no-box samples always get a simulated click after stage 1 "
                                          "(default: they follow --p-click; their first click is a prompt already)")
    p_viewer: float = opt(0.15, "probability that a sample's first prompt is a viewer's 2D box, lasso or "
                                "scribble (one slice) instead of the organizer's box")
    p_refine: float = opt(0.0, "probability of a native-resolution tile on the surface of a large object (one whose "
                               "window is zoomed >= 1.5) with a coarse mask as previous segmentation and the box "
                               "(half of the time) as it crosses the tile: what inference refinement and click-local "
                               "updates feed the network")
    p_spatial: float = opt(0.5, "probability of a random affine + elastic deformation (image, labels and prompts "
                                "alike)")
    p_loose_box: float = opt(0.0, "probability that an organizer box sample's box is loosened: each of its 6 sides "
                                  "moved outward by U(0, --loose-box) x the object's extent on that axis (so the "
                                  "network must find the object's edges in the image, not at the box's)")
    loose_box: float = opt(0.25, "largest outward move of a loosened box's side, as a share of the object's extent")
    p_appearance: float = opt(0.3, "probability of random gamma / bias field / thick slices / blur / noise on a "
                                   "real image")
    zoom_aug_max: float = opt(1.25, "box windows: zoom_extra drawn uniformly in [1, this] on top of the "
                                    "inference zoom rule")
    nobox_zoom_max: float = opt(3.0, "no-box windows around the first click: zoom_extra in [1, this] "
                                     "(inference zooms out while the mask touches the border)")
    window_anisotropy: float = opt(1.0, "windows' axes may zoom differently, up to this ratio (1: the seed paper's "
                                        "isotropic zoom rule); inference uses the checkpoint's value")
    shift_frac: float = opt(0.08, "random window centre shift, as a fraction of the window size per axis")
    flip: bool = opt(False, "random flips of every axis (off by default, as the paper)")
    intensity_scale: float = opt(0.1, "image channel multiplied by 1 + U(-s, s) (z-scored units)")
    intensity_shift: float = opt(0.1, "image channel shifted by U(-s, s) (z-scored units)")
    # ---------------------------------------------------------------- loss and optimisation
    steps: int = opt(1000, "optimiser steps to train (total, counting resumed ones)")
    batch_size: int = opt(2, "samples per forward pass (per process)")
    accum: int = opt(1, "gradient accumulation: forward passes per optimiser step")
    lr: float = opt(1e-4, "peak learning rate (AdamW)")
    weight_decay: float = opt(1e-2, "AdamW weight decay")
    schedule: str = opt("constant", "learning-rate schedule after warm-up", ("constant", "cosine", "poly"))
    warmup_steps: int = opt(0, "linear warm-up steps from 0 to --lr")
    decay_from: int = opt(0, "cosine/poly: hold --lr until this step, then decay to --min-lr at --steps "
                             "(0: decay from the end of the warm-up); lets a run grow over sessions")
    min_lr: float = opt(0.0, "final learning rate of the cosine/poly schedules")
    poly_power: float = opt(0.9, "exponent of the poly schedule")
    dice_weight: float = opt(10.0, "loss = dice_weight * (1 - soft Dice) + BCE")
    click_focus_weight: float = opt(0.0, "add this x the BCE averaged over the error components the simulated clicks "
                                         "were placed in (so a background click's false-positive blob, whatever its "
                                         "size, must go; 0: off, the seed paper's loss)")
    skeleton_weight: float = opt(0.0, "add this x (1 - soft recall of the target's skeleton, dilated by one voxel "
                                 "inside the target): Skeleton Recall (Kirchhoff et al. 2024), for thin structures")
    grad_clip: float = opt(12.0, "clip the gradient norm to this (0: off)")
    ema: float = opt(0.0, "also keep an exponential moving average of the weights with this decay per step (e.g. "
                          "0.999: about the last 1,000 steps), written as <out>/model_ema.pt and, with "
                          "--snapshot-every, <out>/snapshots_ema/; 0: off")
    time_limit_min: float = opt(0.0, "wall-clock budget of this invocation's training loop in minutes (0: none): "
                                     "the schedule then runs on whichever clock is further along, the step count "
                                     "or the elapsed share of the budget (so the cosine/poly decay ends on time), "
                                     "and the run stops and saves when the budget is spent (GPU sprints)")
    seed: int = opt(0, "seed of the samples, clicks, coreset and initialisation")
    # ---------------------------------------------------------------- speed
    device: str = opt("auto", "cpu, cuda, cuda:N, or auto (cuda when present; LOCAL_RANK under torchrun)")
    threads: int = opt(0, "CPU threads for torch (0: every core this process may use, split across ranks)")
    channels_last: bool = opt(True, "channels_last_3d memory format for the network and inputs")
    compile: bool = opt(False, "torch.compile the network (slow to start; measure before using)")
    amp: str = opt("auto", "mixed precision: auto (CUDA: bf16 when supported, else fp16; CPU: $SEGFM_PRECISION, "
                           "default bf16 where the processor computes bf16 natively, else none), bf16, fp16, none",
                   ("auto", "bf16", "fp16", "none"))
    grad_checkpoint: bool = opt(False, "gradient checkpointing of the encoder stages (saves memory for "
                                       "ResEnc-L at 192^3, costs about one more forward)")
    # ---------------------------------------------------------------- checkpoints, logging, validation
    ckpt_every: int = opt(50, "write <out>/last.pt (training checkpoint) and <out>/model.pt (native) "
                              "every N steps, and at the end")
    keep_every: int = opt(0, "also keep <out>/step_<N>.pt every N steps (0: never)")
    snapshot_every: int = opt(0, "also keep the native model as <out>/snapshots/model_<step>.pt every N steps, for "
                                 "`python -m training.curve` (0: never)")
    export: str = opt("", "also write the native inference checkpoint to this path at every checkpoint")
    log_every: int = opt(10, "write a log.csv row every N steps (loss and Dice averaged over them)")
    trace_steps: int = opt(0, "profile this many steps with torch.profiler after 20 untimed ones and write "
                              "<out>/profile.txt: where a step's time goes, by stage and by operator (0: off)")
    resume: bool = opt(False, "continue from <out>/last.pt exactly where it stopped (same next step)")
    val_data: str = opt("", "held-out folder of *.npz with gts for periodic validation (evaluation harness)")
    val_every: int = opt(0, "validate every N steps (0: only --val-data at the end, if given)")
    val_max_cases: int = opt(2, "validate on at most this many held-out cases (keeps CPU runs cheap)")
    val_max_classes: int = opt(8, "validate at most this many classes per case (0: all)")
    progress: bool = opt(True, "show a tqdm progress bar")

    # ------------------------------------------------------------------ derived
    def patch_size(self) -> tuple[int, int, int] | None:
        """The --patch override as (z, y, x), or None."""
        if not self.patch:
            return None
        vals = [int(v) for v in str(self.patch).replace("x", ",").split(",") if v.strip()]
        if len(vals) == 1:
            vals = vals * 3
        if len(vals) != 3:
            raise ValueError(f"--patch needs 1 or 3 integers, got {self.patch!r}")
        return tuple(vals)  # type: ignore[return-value]

    def validate(self) -> None:
        """Raise ValueError on inconsistent options."""
        for name in ("p_no_box", "p_click", "coreset", "p_viewer", "p_refine", "p_spatial", "p_appearance",
                     "p_loose_box"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"--{name.replace('_', '-')} must be in [0, 1], got {v}")
        if self.coreset <= 0:
            raise ValueError("--coreset must be > 0")
        for name in ("steps", "batch_size", "accum", "click_rounds", "click_threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1")
        if self.click_rounds_max and self.click_rounds_max < self.click_rounds:
            raise ValueError("--click-rounds-max must be 0 or at least --click-rounds")
        if self.p_no_box + self.p_viewer + self.p_refine > 1:
            raise ValueError("--p-no-box + --p-viewer + --p-refine must be <= 1")
        if min(getattr(self, f"mix_{n}") for n in ("real", "synth", "pseudo", "ensemble", "procedural")) < 0:
            raise ValueError("--mix-* weights must be >= 0")
        if self.hard_power < 0 or self.hard_floor < 0 or (self.hard_examples and self.hard_power == 0
                                                          and self.hard_floor == 0):
            raise ValueError("--hard-power and --hard-floor must be >= 0 and not both 0")
        if self.label_size_power < 0:
            raise ValueError("--label-size-power must be >= 0")
        if not 0.0 <= self.ema < 1.0:
            raise ValueError(f"--ema must be in [0, 1), got {self.ema}")
        if self.click_focus_weight < 0:
            raise ValueError(f"--click-focus-weight must be >= 0, got {self.click_focus_weight}")
        if self.skeleton_weight < 0:
            raise ValueError(f"--skeleton-weight must be >= 0, got {self.skeleton_weight}")
        if self.loose_box < 0:
            raise ValueError(f"--loose-box must be >= 0, got {self.loose_box}")
        if self.zoom_aug_max < 1 or self.nobox_zoom_max < 1:
            raise ValueError("--zoom-aug-max and --nobox-zoom-max must be >= 1")
        self.patch_size()


# ---------------------------------------------------------------------- JSON and CLI
def to_json(cfg: TrainConfig) -> str:
    return json.dumps(asdict(cfg), indent=1, sort_keys=True)


def from_dict(d: dict[str, Any]) -> TrainConfig:
    """A config from a saved dict; unknown keys are ignored, missing keys take the defaults."""
    names = {f.name for f in fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in d.items() if k in names})


def save_json(cfg: TrainConfig, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(to_json(cfg) + "\n")
    tmp.replace(path)


def _base_type(tp: Any) -> type:
    if get_origin(tp) in (Union, getattr(__import__("types"), "UnionType", Union)):
        args = [a for a in get_args(tp) if a is not type(None)]
        return args[0]
    return tp


def _parse_bool(text: str) -> bool:
    t = str(text).strip().lower()
    if t in ("1", "true", "yes", "on"):
        return True
    if t in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean, got {text!r}")


def build_parser(prog: str = "python -m training") -> argparse.ArgumentParser:
    """argparse parser with one option per config field (booleans take --x / --no-x)."""
    ap = argparse.ArgumentParser(
        prog=prog,
        description="Train the promptable ResEnc U-Net with dynamic prompt simulation (boxes, clicks on the "
                    "model's own errors, previous mask). One process on CPU or one GPU; several GPUs with "
                    "`torchrun --nproc_per_node=N -m training ...` (DistributedDataParallel). "
                    "The run folder gets config.json, log.csv, curves.png, last.pt (training checkpoint, "
                    "--resume continues it) and model.pt (native checkpoint for inference).")
    hints = get_type_hints(TrainConfig)
    for f in fields(TrainConfig):
        if not f.metadata.get("cli", True):
            continue
        flag = "--" + f.name.replace("_", "-")
        tp = _base_type(hints[f.name])
        help_text = f.metadata.get("help", "")
        if tp is bool:
            ap.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None,
                            help=f"{help_text} (default: {f.default})")
        else:
            ap.add_argument(flag, dest=f.name, type=tp, default=None, choices=f.metadata.get("choices"),
                            help=f"{help_text} (default: {f.default!r})")
    return ap


def config_from_args(argv: list[str] | None = None) -> tuple[TrainConfig, set[str]]:
    """Parse the command line into a config; also return the names given explicitly."""
    ns = build_parser().parse_args(argv)
    given = {k for k, v in vars(ns).items() if v is not None}
    cfg = TrainConfig(**{k: getattr(ns, k) for k in given})
    return cfg, given


def merge(saved: TrainConfig, overrides: TrainConfig, given: set[str]) -> TrainConfig:
    """A saved config with the explicitly given options of `overrides` applied (for --resume)."""
    d = asdict(saved)
    d.update({k: getattr(overrides, k) for k in given})
    return from_dict(d)


__all__ = ["TrainConfig", "build_parser", "config_from_args", "from_dict", "merge", "save_json", "to_json",
]
