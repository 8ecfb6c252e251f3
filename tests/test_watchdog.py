"""One case never takes down the others, and every valid case is answered before its deadline
(inference/__main__.py, inference/watchdog.py), through `python -m inference` as predict.sh runs it.

The stalled and crashing networks are the real predictor with `Predictor.run_network` (hang) or
`Predictor.predict_case` (crash) replaced in the worker process by a `sitecustomize` module the test
puts on PYTHONPATH; the supervisor never imports the predictor, so it runs unchanged.
"""
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from fuzz_corpus import background_checkpoint, base, deflate_bomb, npy_bytes, one_core, save, with_member
from inference.case_io import read_case
from inference.fallback import fallback_segs

ROOT = Path(__file__).resolve().parent.parent

FAKE_NETWORK = '''
import importlib.abc, importlib.util, os, signal, sys, time

class _Patch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name != "inference.predictor":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        load = spec.loader.exec_module

        def exec_module(module):
            load(module)
            mode = os.environ["FAKE_NETWORK"]
            real_predict = module.Predictor.predict_case

            def hang(self, x, tta=1):
                print("fake network: hanging", file=sys.stderr, flush=True)
                while True:
                    time.sleep(60)

            def crash_on(self, case, budget=None):
                if case.name == mode.split(":", 1)[1]:
                    print("fake network: crashing", file=sys.stderr, flush=True)
                    os.kill(os.getpid(), signal.SIGKILL)
                return real_predict(self, case, budget)

            if mode == "hang":
                module.Predictor.run_network = hang
            else:
                module.Predictor.predict_case = crash_on

        spec.loader.exec_module = exec_module
        return spec

sys.meta_path.insert(0, _Patch())
'''


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return background_checkpoint(tmp_path_factory.mktemp("w") / "tiny.pt")


def _run(ins: Path, outs: Path, weights: Path, *extra: str, env: dict | None = None, timeout: float = 300):
    full_env = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, "-m", "inference", "--input-dir", str(ins), "--output-dir", str(outs),
                           "--weights", str(weights), *extra], cwd=ROOT, env=full_env, capture_output=True,
                          text=True, timeout=timeout, preexec_fn=one_core)


def test_a_folder_of_bad_cases_and_long_names_loses_no_answerable_case(tmp_path, weights):
    ins, outs = tmp_path / "in", tmp_path / "out"
    ins.mkdir()
    long_name = "CT_" + "x" * 243 + ".npz"  # 250 bytes: the old temporary name was too long for the file system
    assert len(long_name.encode()) == 250
    deflate_bomb("declared")(ins / "CT_a_bomb.npz")
    with_member("box", "imgs", npy_bytes({"descr": "|u1", "fortran_order": False, "shape": (10**5,) * 3}, b""))(
        ins / "CT_b_huge.npz")
    with_member("box", "imgs", npy_bytes(b"{'descr': '|u1', 'shape': (6, 20, ", b"\0" * 64))(ins / "CT_c_header.npz")
    save(base("box"))(ins / long_name)
    save(base("click"))(ins / "CT_d_valid.npz")
    t0 = time.time()
    res = _run(ins, outs, weights, "--quiet")
    assert time.time() - t0 < 120
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr
    assert sorted(p.name for p in outs.iterdir()) == sorted(["CT_d_valid.npz", long_name])
    for name, problem in (("CT_a_bomb", "too large"), ("CT_b_huge", "memory available"),
                          ("CT_c_header", "unreadable npy header (TokenError")):
        assert f"error: {name}.npz: " in res.stderr and problem in res.stderr


def test_three_valid_cases_one_with_a_long_name(tmp_path, weights):
    ins, outs = tmp_path / "in", tmp_path / "out"
    ins.mkdir()
    names = ["A.npz", "B" * 251 + ".npz", "C.npz"]
    for name in names:
        save(base("box"))(ins / name)
    res = _run(ins, outs, weights, "--quiet", "--no-watchdog")
    assert res.returncode == 0, res.stderr
    assert sorted(p.name for p in outs.iterdir()) == sorted(names)


def _fake_env(tmp_path: Path, mode: str) -> dict:
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(FAKE_NETWORK)
    return {"PYTHONPATH": os.pathsep.join([str(site), str(ROOT)]), "FAKE_NETWORK": mode}


def test_a_hung_network_still_answers_every_case_before_its_deadline(tmp_path, weights):
    ins, outs = tmp_path / "in", tmp_path / "out"
    ins.mkdir()
    names = ["CT_1.npz", "CT_2.npz", "MR_3.npz"]
    save(base("box"))(ins / names[0])
    save(base("click"))(ins / names[1])
    save(base("box"))(ins / names[2])
    per_class = 10.0  # the first case: 2 classes, so 20 s from the start, the worker's start-up included
    start = time.time()
    res = _run(ins, outs, weights, "--per-class-run-s", str(per_class),
               env={**_fake_env(tmp_path, "hang"), "SEGFM_START": repr(start)}, timeout=120)
    assert "fake network: hanging" in res.stderr  # the worker did reach the network and hang there
    assert res.returncode == 0, res.stderr
    assert "CT_1.npz: no result before its deadline" in res.stderr
    assert sorted(p.name for p in outs.iterdir()) == names
    for name in names:
        assert np.array_equal(np.load(outs / name)["segs"], fallback_segs(read_case(ins / name)))
    assert (outs / names[0]).stat().st_mtime < start + 2 * per_class  # before the first case's deadline
    assert time.time() < start + 2 * per_class + 10  # and the others right after, without the network


def test_a_crashed_worker_loses_only_its_case(tmp_path, weights):
    ins, outs, ref = tmp_path / "in", tmp_path / "out", tmp_path / "ref"
    ins.mkdir()
    names = ["CT_1.npz", "CT_2.npz", "CT_3.npz"]
    for name, step in zip(names, ("box", "click", "box")):
        save(base(step))(ins / name)
    res = _run(ins, outs, weights, env=_fake_env(tmp_path, "crash:CT_2.npz"))
    assert "fake network: crashing" in res.stderr and "CT_2.npz: the network process died" in res.stderr
    assert res.returncode == 1
    assert sorted(p.name for p in outs.iterdir()) == names  # nothing partial left behind
    assert np.array_equal(np.load(outs / "CT_2.npz")["segs"], fallback_segs(read_case(ins / "CT_2.npz")))
    assert _run(ins, ref, weights, "--no-watchdog").returncode == 0
    for name in ("CT_1.npz", "CT_3.npz"):  # the network's own answers, as without the crash
        assert np.array_equal(np.load(outs / name)["segs"], np.load(ref / name)["segs"])


def test_the_watchdog_never_cuts_into_the_planners_share():
    from inference import budget as B

    # a small case: its whole share less the reserve; a huge one: never before 90 % of its share
    assert B.watchdog_time(100.0, 2, 15.0, B.fallback_reserve_s(30 * 101 * 122)) > 100.0 + 29.0
    assert B.watchdog_time(100.0, 1, 15.0, B.fallback_reserve_s(10**9)) == pytest.approx(100.0 + 13.5)
    assert B.fallback_reserve_s(10**6, file_bytes=10**8) > B.fallback_reserve_s(10**6)  # reading it whole costs more
