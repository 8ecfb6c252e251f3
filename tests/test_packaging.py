"""What the Dockerfile copies and runs exists, and predict.sh works with the folder variables.

No Docker engine runs here, so the image is checked piece by piece: its base and settings, every
COPY source, the pinned requirements, and predict.sh run from a folder holding only what the image
holds (inference/, weights/, predict.sh), with INPUT_DIR/OUTPUT_DIR pointing elsewhere.
"""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from inference.network import new_model, save_checkpoint

ROOT = Path(__file__).resolve().parent.parent


def _dockerfile():
    return (ROOT / "Dockerfile").read_text()


def test_dockerfile_base_and_settings():
    text = _dockerfile()
    assert re.search(r"^ARG BASE_IMAGE=python:3\.13-slim-bookworm\s*$", text, re.M)  # the organizer's build
    assert re.search(r"^FROM \$\{BASE_IMAGE\}\s*$", text, re.M)
    assert re.search(r"^ARG PIP_NO_INDEX\s*$", text, re.M) and re.search(r"^ARG PIP_FIND_LINKS\s*$", text, re.M)
    assert re.search(r"^ENV .*PIP_NO_CACHE_DIR=1", text, re.M)
    assert re.search(r"^WORKDIR /workspace\s*$", text, re.M)
    assert re.search(r"^ARG TORCH_INDEX=", text, re.M)  # the build argument that picks CPU or CUDA torch
    assert "sh predict.sh" in text


def test_dockerfile_copies_only_existing_runtime_files():
    sources = []
    for line in _dockerfile().splitlines():
        if line.startswith("COPY "):
            sources += line.split()[1:-1]
    assert sources, "no COPY lines"
    for src in sources:
        assert (ROOT / src.rstrip("/")).exists(), f"Dockerfile copies missing {src}"
    copied = {s.rstrip("/") for s in sources}
    assert {"inference", "weights", "predict.sh", "requirements.txt"} <= copied
    assert not copied & {"training", "evaluation", "tests", "data", "samples"}  # runtime only
    # .dockerignore keeps the build context to what is copied (not .venv, data/, build/wheels)
    ignore = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
              if line.strip() and not line.startswith("#")]
    assert ignore[0] == "*" and {f"!{s}" for s in sources} <= set(ignore)
    assert "requirements-serve.txt" not in _dockerfile()  # the interactive server stays out of the image


def test_requirements_are_pinned():
    for name in ("requirements.txt", "requirements-nodeps.txt", "requirements-serve.txt", "requirements-dev.txt"):
        for line in (ROOT / name).read_text().splitlines():
            line = line.split("#")[0].strip()
            if line and not line.startswith("-r"):
                assert re.fullmatch(r"[A-Za-z0-9_.\-]+==[0-9][A-Za-z0-9.+]*", line), f"{name}: unpinned {line!r}"


def test_runtime_imports_need_only_the_runtime_requirements():
    # the image has torch, numpy, scipy and dynamic-network-architectures; block everything else we use,
    # the interactive server's packages included (requirements-serve.txt is not in the image)
    code = (
        "import sys\n"
        "BLOCKED = {'cc3d', 'edt', 'SimpleITK', 'nibabel', 'matplotlib', 'tqdm', 'evaluation', 'training',\n"
        "           'fastapi', 'uvicorn', 'blosc2', 'starlette', 'httpx', 'nnInteractive'}\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in BLOCKED: raise ImportError(f'{name} is not in the image')\n"
        "sys.meta_path.insert(0, Block())\n"
        "import inference.predictor, inference.__main__\n"
        "from inference.network import new_model\n"
        "new_model('tiny')\n"
    )
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


@pytest.fixture
def image_like_workspace(tmp_path):
    """A folder holding what the image's /workspace holds, with a tiny checkpoint as weights/default.pt."""
    ws = tmp_path / "workspace"
    ws.mkdir()
    shutil.copytree(ROOT / "inference", ws / "inference", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "predict.sh", ws / "predict.sh")
    (ws / "weights").mkdir()
    save_checkpoint(new_model("tiny"), ws / "weights" / "default.pt")
    return ws


def _case(path, shape=(8, 24, 40), k=2):
    boxes = [{"z_min": 1, "z_max": 5, "z_mid": 3, "z_mid_x_min": 2 + 10 * c, "z_mid_y_min": 3,
              "z_mid_x_max": 8 + 10 * c, "z_mid_y_max": 12} for c in range(k)]
    img = np.random.default_rng(0).integers(0, 255, shape, dtype=np.uint8)
    np.savez_compressed(path, imgs=img, spacing=np.array([1.0, 1.0, 2.0]), boxes=np.array(boxes, dtype=object))


@pytest.mark.parametrize("mode", ["venv-on-path", "explicit-python"])
def test_predict_sh_with_folder_variables(image_like_workspace, tmp_path, mode):
    inputs, outputs = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    _case(inputs / "CT_one.npz")
    _case(inputs / "MR_two.npz", k=3)
    (inputs / "CT_broken.npz").write_bytes(b"PK\x03\x04 truncated")
    env = dict(os.environ, INPUT_DIR=str(inputs), OUTPUT_DIR=str(outputs))
    env.pop("PYTHON", None)
    env.pop("SEGFM_WEIGHTS", None)
    if mode == "venv-on-path":
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    else:
        env["PYTHON"] = sys.executable
    res = subprocess.run(["sh", str(image_like_workspace / "predict.sh")], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert "CT_broken.npz" in res.stderr  # the bad case is named ...
    assert sorted(p.name for p in outputs.iterdir()) == ["CT_one.npz", "MR_two.npz"]  # ... and the others done
    for name, k in (("CT_one.npz", 2), ("MR_two.npz", 3)):
        segs = np.load(outputs / name)["segs"]
        assert segs.dtype == np.uint8 and segs.shape == (8, 24, 40) and segs.max() <= k
