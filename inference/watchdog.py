"""Hard deadlines: `python -m inference` runs the network in a worker process and watches it.

The worker reports each case over a pipe (`begin`, `case` once read, `done`). When a case has no
result by its hard deadline (`budget.hard_deadline`: 15 s per class per run from the case's start,
from SEGFM_START for the first) less the time needed to write a fallback, the supervisor kills the
worker and writes the fallback prediction itself (the previous prediction, or at the box step the
boxes filled) for that case and every remaining one: a stalled network (or anything else that hangs)
costs the quality of those cases, never their outputs. A worker that dies (a crash, an out-of-memory
kill) loses only its current case, which gets the fallback; a new worker takes the rest.
The supervisor imports numpy only; torch lives in the worker.
"""
from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from . import budget as B
from .case_io import CaseError, peek_case, read_case, remove_partial_outputs, write_segs
from .fallback import fallback_segs

EXIT_GRACE_S = 10.0  # how long a worker that finished every case may take to exit


class Reporter:
    """The worker's side of the pipe: one line per event; silent when there is no supervisor."""

    def __init__(self, fd: int | None = None):
        self.fd = fd

    def send(self, *fields: object) -> None:
        if self.fd is None:
            return
        try:
            os.write(self.fd, (" ".join(str(f) for f in fields) + "\n").encode())
        except OSError:  # the supervisor is gone: keep working without it
            self.fd = None


@dataclass
class Current:
    """The case the worker is on and when its output is due (epoch seconds)."""

    index: int
    start: float
    deadline: float
    reported: bool = False  # the worker has read it (class count known)
    peeked: bool = False


def write_fallback(path: Path, out_dir: Path, why: str, validated: bool = False) -> bool:
    """Write a case's fallback prediction (uncompressed: fast); False when it is refused or the write fails.

    A case the worker has `validated` is read without its image data (the fallback needs only the image's
    shape, the boxes and prev_pred); any other is read and validated whole.
    """
    try:
        case = read_case(path, image_data=not validated)
        write_segs(out_dir / path.name, fallback_segs(case), compress=False)
    except CaseError as err:
        print(f"error: {err}", file=sys.stderr)
        return False
    except Exception as err:  # noqa: BLE001 - one case never stops the others
        print(f"error: {path.name}: the fallback prediction failed ({type(err).__name__}: {err})", file=sys.stderr)
        return False
    print(f"warning: {path.name}: {why}; wrote the fallback prediction", file=sys.stderr)
    return True


class Supervisor:
    """Runs workers over the cases (absolute paths, sorted) and enforces every case's hard deadline."""

    def __init__(self, cases: Sequence[Path], out_dir: Path, command: Callable[[int, int], list[str]],
                 per_class_run_s: float = 15.0, clock: Callable[[], float] = time.time):
        self.cases = list(cases)
        self.out_dir = out_dir
        self.command = command  # (pipe fd, first case index) -> argv of a worker
        self.per_class_run_s = per_class_run_s
        self.clock = clock
        self.failures = 0
        self.proc: subprocess.Popen | None = None

    # ------------------------------------------------------------------ deadlines
    def _size(self, index: int) -> int:
        path = self.cases[index]
        return path.stat().st_size if path.is_file() else 0

    def _provisional(self, index: int, start: float) -> Current:
        """Before the worker has read the case: one class's share (peeked at once this runs out)."""
        reserve = B.fallback_reserve_s(0, file_bytes=self._size(index))
        return Current(index, start, B.watchdog_time(start, 1, self.per_class_run_s, reserve))

    def _peek(self, cur: Current) -> None:
        cur.peeked = True
        peeked = peek_case(self.cases[cur.index])
        if peeked is not None and peeked[0] > 1:
            k, voxels = peeked
            reserve = B.fallback_reserve_s(voxels, file_bytes=self._size(cur.index))
            cur.deadline = B.watchdog_time(cur.start, k, self.per_class_run_s, reserve)

    # ------------------------------------------------------------------ one worker
    def _stop_worker(self) -> None:
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
            try:
                proc.wait(timeout=2.0)
            except subprocess.TimeoutExpired:
                pass  # stuck in the kernel; it cannot write once it wakes
        remove_partial_outputs(self.out_dir, proc.pid)
        self.proc = None

    def _handle(self, line: str, cur: Current | None) -> Current | None:
        """Update the current case from one worker line; returns the new current case (None: all done)."""
        fields = line.split()
        if not fields:
            return cur
        kind, index = fields[0], int(fields[1])
        now = self.clock()
        if kind == "begin":
            start = float(fields[2])
            return Current(index, start, self._provisional(index, start).deadline)
        if kind == "case" and cur is not None and cur.index == index:
            k, voxels = int(fields[2]), int(fields[3])
            cur.deadline = B.watchdog_time(cur.start, k, self.per_class_run_s, B.fallback_reserve_s(voxels))
            cur.reported = True
            return cur
        if kind == "done":
            if fields[2] != "ok":
                self.failures += 1
            nxt = index + 1
            return self._provisional(nxt, now) if nxt < len(self.cases) else None
        return cur

    def _watch(self, first: int, start: float) -> tuple[str, int, bool]:
        """Run one worker from case `first`: ('finished' | 'stalled' | 'crashed' | 'startup', the case it was on,
        whether the worker had read that case)."""
        read_fd, write_fd = os.pipe()
        env = dict(os.environ, SEGFM_START=repr(start))
        try:
            self.proc = subprocess.Popen(self.command(write_fd, first), pass_fds=(write_fd,), env=env)
        finally:
            os.close(write_fd)
        cur: Current | None = self._provisional(first, start)
        began = False
        buf = b""
        exit_by = None
        try:
            while True:
                now = self.clock()
                if cur is None:
                    exit_by = exit_by or now + EXIT_GRACE_S
                    due = exit_by
                else:
                    due = cur.deadline
                if now >= due:
                    if cur is None:
                        return "finished", len(self.cases), False
                    if not cur.reported and not cur.peeked:
                        self._peek(cur)
                        continue
                    return "stalled", cur.index, cur.reported
                ready, _, _ = select.select([read_fd], [], [], min(max(due - now, 0.0), 1.0))
                if not ready:
                    continue
                chunk = os.read(read_fd, 65536)
                if not chunk:  # the worker has exited (or is exiting)
                    try:
                        self.proc.wait(timeout=EXIT_GRACE_S)
                    except subprocess.TimeoutExpired:
                        pass
                    if cur is None:
                        return "finished", len(self.cases), False
                    return ("crashed" if began else "startup"), cur.index, cur.reported
                buf += chunk
                *lines, buf = buf.split(b"\n")
                for line in lines:
                    began |= line.startswith(b"begin")
                    try:
                        cur = self._handle(line.decode(errors="replace"), cur)
                    except (ValueError, IndexError):  # not a line of the protocol: ignored
                        continue
        finally:
            os.close(read_fd)
            self._stop_worker()

    # ------------------------------------------------------------------ the run
    def run(self, start: float) -> int:
        """Every case gets its prediction or, past its deadline, its fallback. Returns the exit status."""
        def on_signal(signum, frame):  # the caller's timeout: do not leave the worker behind
            self._stop_worker()
            sys.exit(128 + signum)

        old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGHUP)}
        try:
            first = 0
            while first < len(self.cases):
                outcome, index, validated = self._watch(first, start)
                if outcome == "finished":
                    break
                name = self.cases[index].name
                if outcome == "stalled":  # answered all the same: a warning, not an error
                    why = "no result before its deadline: the network was stopped"
                else:
                    print(f"error: {name}: the network process died ({outcome})", file=sys.stderr)
                    why = "the network process died"
                    self.failures += 1
                self.failures += not write_fallback(self.cases[index], self.out_dir, why, validated)
                first = index + 1
                if outcome != "crashed":  # a stalled or unstartable network: no network for the rest
                    for path in self.cases[first:]:
                        self.failures += not write_fallback(path, self.out_dir, why)
                    break
                start = self.clock()
        finally:
            for s, handler in old.items():
                signal.signal(s, handler)
        return 1 if self.failures else 0
