"""`python -m evaluation.image_check`: build the challenge image, run it as the organizer does, compare outputs.

1. Base: `--base` (python:3.13-slim-bookworm) when it is present or can be pulled. Otherwise a stand-in is
   built once with mmdebstrap (Debian `--suite`, default bookworm: Python 3.11, the version of the CPU
   torch wheel this machine has; no cp313 CPU wheel is reachable here) and the build runs with
   `--network none`, every wheel coming from a local folder (`build/wheels`, filled by `pip download` on
   this machine for the base's Python version, the CPU torch wheel included) mounted into the build.
2. Build (`--no-cache` unless `--cache`), save `<image>.tar.gz` and load it back, as the organizer
   receives it; build time, image size and tarball size are reported.
3. For every case of `--cases` (training format: imgs, gts, spacing) the box step and one click step of
   the organizer's protocol (evaluation/harness.py step inputs, the click simulated on the box step's
   output), each run twice with the same input: the image, exactly as the organizer runs it
   (`<engine> container run -m 32G --network none --rm -v inputs:/workspace/inputs/
   -v outputs:/workspace/outputs/ <image> /bin/bash -c "sh predict.sh"`), and `sh predict.sh` on this
   machine. The label maps must be identical voxel for voxel.
4. The reading and validation code's tests (tests/test_case_io.py, the fuzz corpus included) under the real
   base's Python, in a `--reading-check-suite` (trixie: Python 3.13) stand-in with numpy from local wheels.
Setup on a machine like this one (no Docker engine): `apt-get install -y podman runc mmdebstrap` and an
/etc/containers/containers.conf holding `default_ulimits = []` under `[containers]` and `runtime = "runc"`,
`cgroup_manager = "cgroupfs"` under `[engine]`.
Everything measured is printed and written to `<out>/image_check.json`. Exit status 0 only when every
step ran in both places, the labels are identical and the reading check passed.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from evaluation.boxes import boxes_from_gt
from evaluation.clicks import add_click, new_click_state, simulate_clicks
from evaluation.harness import find_cases, load_case, step_input
from evaluation.predictors import PROJECT_ROOT, SubprocessPredictor
from evaluation.regions import class_boxes

DEFAULT_BASE = "python:3.13-slim-bookworm"
STANDIN_TAG = "localhost/segfm3d-standin"
# pip download matches an explicit --platform exactly, so the older manylinux tags that bookworm's glibc 2.36 also
# runs are listed too (PyMaxflow publishes manylinux_2_17 wheels only)
WHEEL_PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
PLATFORM_ARGS = [arg for tag in WHEEL_PLATFORMS for arg in ("--platform", tag)]


def sh(cmd: list[str], **kw: Any) -> subprocess.CompletedProcess:
    """Run a command, echoing it; raises on failure with its output."""
    print("$ " + " ".join(cmd), file=sys.stderr, flush=True)
    res = subprocess.run(cmd, text=True, capture_output=True, **kw)
    if res.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed (exit {res.returncode}):\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
    return res


def find_engine(name: str | None) -> str:
    for engine in ([name] if name else ["podman", "docker"]):
        if shutil.which(engine) and subprocess.run([engine, "info"], capture_output=True).returncode == 0:
            return engine
    raise SystemExit("error: no working container engine (podman or docker); setup: python -m evaluation.image_check --help")


def image_exists(engine: str, image: str) -> bool:
    return subprocess.run([engine, "image", "inspect", image], capture_output=True).returncode == 0


def standin(engine: str, suite: str, rebuild: bool = False) -> tuple[str, float | None]:
    """The stand-in base for Debian `suite` (its python3, pip, python-is-python3), built once with mmdebstrap;
    (tag, seconds it took to build, None when it existed)."""
    tag = f"{STANDIN_TAG}:{suite}"
    if not rebuild and image_exists(engine, tag):
        return tag, None
    if not shutil.which("mmdebstrap"):
        raise SystemExit("error: mmdebstrap is needed for the stand-in base (apt-get install mmdebstrap)")
    with tempfile.TemporaryDirectory() as tmp:
        tar = Path(tmp) / "rootfs.tar"
        t0 = time.time()
        sh(["mmdebstrap", "--variant=apt", "--include=python3,python3-pip,python-is-python3",
            "--customize-hook=rm -f \"$1\"/usr/lib/python3*/EXTERNALLY-MANAGED",
            "--customize-hook=rm -rf \"$1\"/var/lib/apt/lists/* \"$1\"/var/cache/apt/*.bin",
            suite, str(tar)])
        sh([engine, "import", "--change", "ENV LANG=C.UTF-8", "--change", 'CMD ["python3"]', str(tar), tag])
    return tag, round(time.time() - t0, 1)


def get_base(engine: str, base: str, suite: str, rebuild: bool) -> tuple[str, bool, dict[str, Any]]:
    """(base image, is stand-in, facts): the real base if present or pullable, else the mmdebstrap stand-in."""
    if image_exists(engine, base) or subprocess.run([engine, "pull", base], capture_output=True).returncode == 0:
        return base, False, {"base": base}
    print(f"{base} cannot be pulled here: using a stand-in built with mmdebstrap (Debian {suite})", file=sys.stderr)
    tag, seconds = standin(engine, suite, rebuild)
    facts: dict[str, Any] = {"base": tag, "stand_in_for": base, "suite": suite}
    if seconds is not None:
        facts["stand_in_build_s"] = seconds
    return tag, True, facts


def _pin(requirements: str, name: str) -> str:
    for line in (PROJECT_ROOT / requirements).read_text().splitlines():
        if line.split("==")[0].strip().lower() == name:
            return line.split("#")[0].strip()
    raise KeyError(f"{name} is not pinned in {requirements}")


def reading_code_check(engine: str, suite: str, wheels: Path) -> dict[str, Any]:
    """tests/test_case_io.py (the fuzz corpus through read_case included) in a `suite` stand-in (trixie: Python
    3.13, as the real base), numpy and pytest from local wheels, no network: input handling without torch."""
    tag, _ = standin(engine, suite)
    py = python_version(engine, tag)
    wheels.mkdir(parents=True, exist_ok=True)
    sh([sys.executable, "-m", "pip", "download", "--quiet", "--dest", str(wheels), "--only-binary=:all:",
        "--python-version", py, "--implementation", "cp", "--abi", "cp" + py.replace(".", ""),
        *PLATFORM_ARGS, _pin("requirements.txt", "numpy"), _pin("requirements-dev.txt", "pytest")])
    script = ("pip install -q --no-index --find-links /wheels numpy pytest && cd /tmp && "
              "python3 -m pytest -q -p no:cacheprovider --noconftest /src/tests/test_case_io.py")
    res = subprocess.run([engine, "run", "--rm", "--network", "none", "-v", f"{PROJECT_ROOT}:/src:ro",
                          "-v", f"{wheels.resolve()}:/wheels:ro", "-e", "PYTHONPATH=/src",
                          "-e", "PYTHONDONTWRITEBYTECODE=1", tag, "sh", "-c", script],
                         capture_output=True, text=True)
    summary = (res.stdout.strip().splitlines() or ["no output"])[-1]
    print(f"tests/test_case_io.py under Python {py} ({tag}): {summary}", file=sys.stderr)
    return {"suite": suite, "python": py, "passed": res.returncode == 0, "summary": summary}


def python_version(engine: str, image: str) -> str:
    out = sh([engine, "run", "--rm", "--network", "none", image, "python3", "-c",
              "import sys; print('%d.%d' % sys.version_info[:2])"]).stdout.strip()
    return out


def download_wheels(folder: Path, py: str, torch_spec: str) -> None:
    """Every runtime wheel for CPython `py` into `folder`, through this machine's pip configuration."""
    folder.mkdir(parents=True, exist_ok=True)
    abi = "cp" + py.replace(".", "")
    common = ["--dest", str(folder), "--only-binary=:all:", "--python-version", py, "--implementation", "cp",
              "--abi", abi, *PLATFORM_ARGS]
    pip = [sys.executable, "-m", "pip", "download", "--quiet"]
    sh(pip + common + [torch_spec, "-r", str(PROJECT_ROOT / "requirements.txt")])
    sh(pip + common + ["--no-deps", "-r", str(PROJECT_ROOT / "requirements-nodeps.txt")])


def build(engine: str, image: str, base: str, wheels: Path | None, cache: bool) -> float:
    cmd = [engine, "build", "-t", image, "--build-arg", f"BASE_IMAGE={base}"]
    if not cache:
        cmd.append("--no-cache")
    if wheels is not None:
        cmd += ["--network", "none", "--volume", f"{wheels.resolve()}:/wheels:ro",
                "--build-arg", "PIP_NO_INDEX=1", "--build-arg", "PIP_FIND_LINKS=/wheels"]
    t0 = time.time()
    sh(cmd + [str(PROJECT_ROOT)])
    return time.time() - t0


def save_and_load(engine: str, image: str, tarball: Path) -> dict[str, Any]:
    """Save the image as the organizer receives it (gzip), remove it and load it back from the tarball."""
    t0 = time.time()
    tar = tarball.with_suffix("")  # .tar
    tar.unlink(missing_ok=True)
    sh([engine, "save", "-o", str(tar), image])
    with open(tarball, "wb") as fh:
        subprocess.run(["gzip", "-c", str(tar)], stdout=fh, check=True)
    tar.unlink()
    saved = time.time() - t0
    sh([engine, "rmi", image])
    # docker loads the .tar.gz itself; podman 4.3 reads docker archives uncompressed only
    with open(tar, "wb") as fh:
        subprocess.run(["gzip", "-dc", str(tarball)], stdout=fh, check=True)
    sh([engine, "image", "load", "-i", str(tar)])
    tar.unlink()
    return {"tarball": str(tarball), "tarball_bytes": tarball.stat().st_size, "save_s": round(saved, 1)}


def container_command(engine: str, image: str) -> str:
    """The organizer's run command (CVPR25_iter_eval.py), plus --network none; INPUT_DIR/OUTPUT_DIR from the harness."""
    return (f'{engine} container run -m 32G --network none --name segfm3d-check-{os.getpid()} --rm '
            f'-v "$INPUT_DIR/":/workspace/inputs/ -v "$OUTPUT_DIR/":/workspace/outputs/ '
            f'{image} /bin/bash -c "sh predict.sh"')


def _run_step(runners: dict[str, SubprocessPredictor], data: dict, name: str, step: str) -> dict[str, Any]:
    record: dict[str, Any] = {"step": step}
    outs = {}
    for label, runner in runners.items():
        run = runner.run(data, name)
        segs, problem = runner.read_output(name)
        outs[label] = segs
        record[f"{label}_s"] = round(run.seconds, 2)
        if run.problem or problem or segs is None:
            record[f"{label}_problem"] = run.problem or problem or "no output"
    a, b = outs["image"], outs["local"]
    record["identical"] = a is not None and b is not None and a.shape == b.shape and bool(np.array_equal(a, b))
    if a is not None and b is not None and a.shape == b.shape:
        record["voxels_differing"] = int((a != b).sum())
        record["labels"] = int(len(np.unique(b)) - (b == 0).any())
    return record


def compare_case(path: Path, runners: dict[str, SubprocessPredictor]) -> list[dict[str, Any]]:
    """The box step and one click step of a case through both runners; labels compared."""
    case = load_case(path)
    boxes = boxes_from_gt(case.gts, case.labels)
    for runner in runners.values():
        runner.begin_case(case.name)
    records = [_run_step(runners, step_input(case, boxes), case.name, "box")]
    prev, _ = runners["local"].read_output(case.name)
    prev = prev.astype(np.uint8) if prev is not None else np.zeros(case.gts.shape, np.uint8)
    clicks, order = new_click_state(len(case.labels))
    for index, result in enumerate(simulate_clicks(prev, case.gts, case.labels, class_boxes(case.gts, case.labels))):
        add_click(clicks, order, index, result)
    records.append(_run_step(runners, step_input(case, boxes, clicks, order, prev), case.name, "click 1"))
    for runner in runners.values():
        runner.end_case(case.name)
    for r in records:
        r["case"] = case.name
        r["classes"] = len(case.labels)
    return records


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m evaluation.image_check", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", default=str(PROJECT_ROOT / "samples"), help="training-format cases (default samples/)")
    ap.add_argument("--image", default="segfm3d:latest", help="tag of the image to build (default segfm3d:latest)")
    ap.add_argument("--engine", default=None, help="podman or docker (default: the first that works)")
    ap.add_argument("--base", default=DEFAULT_BASE, help=f"base image (default {DEFAULT_BASE})")
    ap.add_argument("--suite", default="bookworm",
                    help="Debian suite of the stand-in base (default bookworm: Python 3.11, the CPU torch wheel here)")
    ap.add_argument("--torch", default="torch==2.13.0+cpu", help="torch wheel for an offline build (default torch==2.13.0+cpu)")
    ap.add_argument("--wheels", default=str(PROJECT_ROOT / "build" / "wheels"), help="wheel folder of an offline build")
    ap.add_argument("--out", default=str(PROJECT_ROOT / "build" / "image_check"), help="report folder")
    ap.add_argument("--cache", action="store_true", help="reuse cached build layers (default: build from scratch)")
    ap.add_argument("--rebuild-base", action="store_true", help="rebuild the stand-in base even if it exists")
    ap.add_argument("--no-save", action="store_true", help="skip saving and reloading the .tar.gz")
    ap.add_argument("--reading-check-suite", default="trixie",
                    help="also run tests/test_case_io.py in this Debian suite's stand-in (default trixie: "
                         "Python 3.13, the real base's version); '' to skip")
    args = ap.parse_args(argv)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    engine = find_engine(args.engine)
    report: dict[str, Any] = {"engine": engine, "image": args.image, "load_before": os.getloadavg()[0]}
    base, standin, facts = get_base(engine, args.base, args.suite, args.rebuild_base)
    report.update(facts)
    report["python"] = python_version(engine, base)
    wheels = None
    if standin:
        wheels = Path(args.wheels)
        download_wheels(wheels, report["python"], args.torch)
    report["build_s"] = round(build(engine, args.image, base, wheels, args.cache), 1)
    report["image_bytes"] = int(sh([engine, "image", "inspect", "--format", "{{.Size}}", args.image]).stdout.strip())
    if not args.no_save:
        report.update(save_and_load(engine, args.image, out / (args.image.split(":")[0].replace("/", "_") + ".tar.gz")))
    print(f"built {args.image} from {base} in {report['build_s']} s: {report['image_bytes'] / 1e9:.2f} GB"
          + (f", tarball {report['tarball_bytes'] / 1e9:.2f} GB" if "tarball_bytes" in report else ""), file=sys.stderr)

    scratch = Path(tempfile.mkdtemp(prefix="image_check_"))
    runners = {
        "image": SubprocessPredictor(container_command(engine, args.image), PROJECT_ROOT, name="image",
                                     scratch_dir=scratch / "image", log_dir=out / "logs" / "image"),
        "local": SubprocessPredictor("sh predict.sh", PROJECT_ROOT, name="local", scratch_dir=scratch / "local",
                                     log_dir=out / "logs" / "local", env={"PYTHON": sys.executable}),
    }
    records = []
    try:
        for path in find_cases(args.cases):
            for r in compare_case(path, runners):
                records.append(r)
                print(json.dumps(r), file=sys.stderr, flush=True)
    finally:
        for runner in runners.values():
            runner.close()
        shutil.rmtree(scratch, ignore_errors=True)
    report["steps"] = records
    if args.reading_check_suite:
        report["reading_check"] = reading_code_check(engine, args.reading_check_suite,
                                                     Path(args.wheels).with_name(f"wheels-{args.reading_check_suite}"))
    report["load_after"] = os.getloadavg()[0]
    ok = bool(records) and all(r["identical"] and not any(k.endswith("_problem") for k in r) for r in records)
    ok = ok and report.get("reading_check", {}).get("passed", True)
    report["identical"] = ok
    (out / "image_check.json").write_text(json.dumps(report, indent=1))
    print(f"{'PASS' if ok else 'FAIL'}: {sum(r['identical'] for r in records)}/{len(records)} steps identical; "
          f"report in {out / 'image_check.json'}", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
