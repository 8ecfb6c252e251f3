"""Predictors the harness can score: a container-style shell command, or a Python callable.

Both follow the organizer's file semantics: one output per case name that persists between the
steps of a case (the organizer never clears its outputs folder), so a step that writes nothing
leaves the previous step's output in place, and the harness reads whatever is there.

Step input keys (see challenge-contract.md section 1): imgs (z, y, x), spacing (x, y, z), boxes
(list of dicts), and from the first click step on clicks, clicks_order, prev_pred (z, y, x).
"""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_COMMAND = "sh predict.sh"


@dataclass
class StepRun:
    """Wall time of one predictor run (the organizer's RunningTime_k) and any problem seen."""

    seconds: float
    problem: str | None = None


class Predictor(ABC):
    """A predictor scored by the harness, one case at a time, one run per step."""

    name: str = "predictor"

    def begin_case(self, case_name: str) -> None:
        """Forget any output left for this case name (each case starts without one)."""

    @abstractmethod
    def run(self, data: Mapping[str, Any], case_name: str) -> StepRun:
        """Run one step on the step input `data` (organizer keys) for case file `case_name`."""

    @abstractmethod
    def read_output(self, case_name: str) -> tuple[np.ndarray | None, str | None]:
        """The current output `segs` of the case (None if absent or unreadable) and a problem."""

    def end_case(self, case_name: str) -> None:
        """Called after the last step of a case."""

    def close(self) -> None:
        """Release resources (temporary folders)."""


def _fresh_copy(value: Any) -> Any:
    """A private copy of one step-input value: the predictor may change it freely, as it could
    change the file it reads in the organizer's setup, without touching the harness's state."""
    if isinstance(value, np.ndarray):
        return value.copy()
    return copy.deepcopy(value)


class InProcessPredictor(Predictor):
    """Wraps a Python callable `fn(data) -> segs` (or `fn(data, case_name)` with pass_name).

    `data` holds fresh copies: python objects (boxes / clicks as lists of dicts, clicks_order as
    lists) and arrays. An exception or a non-array result writes no output: the previous step's
    output stays, as an unwritten file would for the organizer.
    """

    def __init__(self, fn: Callable[..., Any], name: str = "inprocess", pass_name: bool = False) -> None:
        self.fn = fn
        self.name = name
        self.pass_name = pass_name
        self._outputs: dict[str, np.ndarray] = {}

    @classmethod
    def from_model(cls, model: Any, name: str = "model") -> InProcessPredictor:
        """Wrap an object with `.predict(data, name=case_name) -> segs` (the inference package)."""
        return cls(lambda data, case_name: model.predict(data, name=case_name), name=name, pass_name=True)

    def begin_case(self, case_name: str) -> None:
        self._outputs.pop(case_name, None)

    def run(self, data: Mapping[str, Any], case_name: str) -> StepRun:
        payload = {key: _fresh_copy(value) for key, value in data.items()}
        kept = "; the previous output is kept, as an unwritten file would be" if case_name in self._outputs else ""
        start = time.perf_counter()
        try:
            result = self.fn(payload, case_name) if self.pass_name else self.fn(payload)
        except Exception as exc:  # noqa: BLE001 - a failing predictor must not stop the evaluation
            return StepRun(time.perf_counter() - start, f"predictor raised {type(exc).__name__}: {exc}{kept}")
        seconds = time.perf_counter() - start
        if isinstance(result, Mapping) and "segs" in result:
            result = result["segs"]
        if not isinstance(result, np.ndarray):
            return StepRun(seconds, f"predictor returned {type(result).__name__}, not an array{kept}")
        self._outputs[case_name] = np.array(result, copy=True)
        return StepRun(seconds)

    def read_output(self, case_name: str) -> tuple[np.ndarray | None, str | None]:
        segs = self._outputs.get(case_name)
        return (segs, None) if segs is not None else (None, "missing output")

    def end_case(self, case_name: str) -> None:
        self._outputs.pop(case_name, None)


def write_input_npz(path: Path, data: Mapping[str, Any]) -> None:
    """Write a step input as the organizer does: np.savez_compressed, lists as object arrays."""
    np.savez_compressed(path, **dict(data))


def _file_signature(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


class SubprocessPredictor(Predictor):
    """Runs a container-style command once per step, as the organizer runs its Docker image.

    The command (default `sh predict.sh`) runs in `workdir` with INPUT_DIR / OUTPUT_DIR set to
    the absolute inputs / outputs folders; the inputs folder holds exactly one file,
    `<case>.npz`, rewritten in place at every step; the outputs folder is never cleared between
    steps. The wall time around the command (start-up included) is the step's running time.
    """

    def __init__(
        self,
        command: str = DEFAULT_COMMAND,
        workdir: str | os.PathLike = PROJECT_ROOT,
        name: str = "model",
        scratch_dir: str | os.PathLike | None = None,
        timeout_s: float | None = None,
        log_dir: str | os.PathLike | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.command = command
        self.workdir = Path(workdir).resolve()
        self.name = name
        self.timeout_s = timeout_s
        self.log_dir = Path(log_dir) if log_dir is not None else None
        self.extra_env = dict(env or {})
        self._own_scratch = scratch_dir is None
        self.scratch = Path(tempfile.mkdtemp(prefix="eval_io_")) if scratch_dir is None else Path(scratch_dir)
        self.input_dir = (self.scratch / "inputs").resolve()
        self.output_dir = (self.scratch / "outputs").resolve()
        for folder in (self.input_dir, self.output_dir):  # fresh folders, as the organizer makes them
            if folder.exists():
                shutil.rmtree(folder)
            folder.mkdir(parents=True)
        self._cache: dict[str, tuple[tuple[int, int, int], np.ndarray | None, str | None]] = {}

    def _log(self, case_name: str, text: str) -> None:
        if self.log_dir is None or not text:
            return
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_dir / f"{Path(case_name).stem}.log", "a", encoding="utf-8", errors="replace") as fh:
            fh.write(text)

    def begin_case(self, case_name: str) -> None:
        for stale in self.input_dir.iterdir():
            stale.unlink()
        (self.output_dir / case_name).unlink(missing_ok=True)
        self._cache.pop(case_name, None)

    def run(self, data: Mapping[str, Any], case_name: str) -> StepRun:
        input_path = self.input_dir / case_name
        write_input_npz(input_path, data)
        output_path = self.output_dir / case_name
        before = _file_signature(output_path)
        env = dict(os.environ)
        env.update(self.extra_env)
        env["INPUT_DIR"] = str(self.input_dir)
        env["OUTPUT_DIR"] = str(self.output_dir)
        problem = None
        start = time.perf_counter()
        try:
            proc = subprocess.run(
                self.command, shell=True, cwd=self.workdir, env=env, capture_output=True,
                text=True, errors="replace", timeout=self.timeout_s, check=False,
            )
            seconds = time.perf_counter() - start
            self._log(case_name, f"$ {self.command}  [exit {proc.returncode}, {seconds:.2f} s]\n{proc.stdout}{proc.stderr}\n")
            if proc.returncode != 0:
                problem = f"command exited with {proc.returncode}"
        except subprocess.TimeoutExpired as exc:
            seconds = time.perf_counter() - start
            problem = f"command timed out after {exc.timeout} s"
            self._log(case_name, f"$ {self.command}  [timeout]\n")
        after = _file_signature(output_path)
        if after is not None and after == before:
            extra = "output not rewritten; the previous step's file is used, as the organizer would"
            problem = f"{problem}; {extra}" if problem else extra
        return StepRun(seconds, problem)

    def read_output(self, case_name: str) -> tuple[np.ndarray | None, str | None]:
        path = self.output_dir / case_name
        signature = _file_signature(path)
        if signature is None:
            return None, "missing output"
        cached = self._cache.get(case_name)
        if cached is not None and cached[0] == signature:
            return cached[1], cached[2]
        try:
            with np.load(path, allow_pickle=True) as npz:
                segs = np.asarray(npz["segs"]) if "segs" in npz.files else None
                problem = None if segs is not None else f"output has no 'segs' key (keys: {npz.files})"
        except Exception as exc:  # noqa: BLE001 - a malformed file counts as no output
            segs, problem = None, f"unreadable output ({type(exc).__name__}: {exc})"
        self._cache[case_name] = (signature, segs, problem)
        return segs, problem

    def end_case(self, case_name: str) -> None:
        # the organizer deletes the input after a case; its output stays (names never repeat)
        (self.input_dir / case_name).unlink(missing_ok=True)
        self._cache.pop(case_name, None)

    def close(self) -> None:
        if self._own_scratch:
            shutil.rmtree(self.scratch, ignore_errors=True)
