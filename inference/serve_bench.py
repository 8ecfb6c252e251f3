"""`python -m inference.serve_bench`: latency and load of the interactive server, driven by real nnInteractive clients.

The server runs in its own process (`python -m inference.serve`, the default model unless --checkpoint), the
clients (`nninteractive-client`'s nnInteractiveRemoteInferenceSession) in threads of this one. On a synthetic
512x512x300 CT-like volume (inference.bench.synthetic_case) each client segments its own structure: per block
of 10 interactions a 2D box on the structure's middle axial slice, 5 clicks on its errors (evaluation/clicks.py),
a lasso, a scribble, a click and an undo, then a reset. First one client alone, then all clients at once.
Reported: p50 / p95 seconds per interaction (the client call: request, server, response applied to the
buffer), set_image seconds, errors, the server's peak RSS, and the machine's load average.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
TRAIN_PID = Path("/work/train.pid")  # the development machine's long training run, paused while measuring


def free_port() -> int:
    from .serve import bound_socket

    sock = bound_socket()
    port = sock.getsockname()[1]
    sock.close()
    return port


def start_server(checkpoint: str | None, port: int, sessions: int, extra: list[str]) -> subprocess.Popen:
    """`python -m inference.serve` in a child process; returns once /healthz answers."""
    import httpx

    cmd = [sys.executable, "-m", "inference.serve", "--port", str(port), "--max-sessions", str(sessions),
           "--log-level", "warning", *extra]
    if checkpoint:
        cmd += ["--checkpoint", checkpoint]
    proc = subprocess.Popen(cmd, cwd=ROOT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    proc.kill()
    raise RuntimeError("the server did not start within 120 s")


def peak_rss_gb(pid: int) -> float:
    """VmHWM (peak resident memory) of a process, GB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 2**20
    return float("nan")


def structure_crop(gt: np.ndarray, pad: int = 24) -> tuple[slice, slice, slice]:
    """The structure's bounding box (z, y, x) widened by `pad`: clicks are simulated there only (cheap)."""
    idx = np.nonzero(gt)
    return tuple(slice(max(int(a.min()) - pad, 0), min(int(a.max()) + pad + 1, n)) for a, n in zip(idx, gt.shape))


def client_run(url: str, image: np.ndarray, gt: np.ndarray, interactions: int, results: list, errors: list,
               barrier: threading.Barrier | None = None) -> None:
    """One user: claim, upload, then blocks of 10 timed interactions (box, clicks, lasso, scribble, undo)."""
    from nnInteractive.inference.remote import nnInteractiveRemoteInferenceSession

    from evaluation.clicks import simulate_click

    crop = structure_crop(gt)
    zs = np.flatnonzero(gt.any(axis=(1, 2)))
    z = int(zs[len(zs) // 2])
    ys, xs = np.nonzero(gt[z])
    box = [[z, z + 1], [int(ys.min()), int(ys.max()) + 1], [int(xs.min()), int(xs.max()) + 1]]
    section = gt[z:z + 1, box[1][0]:box[1][1], box[2][0]:box[2][1]].astype(np.uint8)
    zc = min(z + 2, int(zs.max()))
    row = int(np.median(np.nonzero(gt[zc])[0]))
    stroke = np.zeros((1, 2, gt.shape[2]), np.uint8)
    stroke[0] = gt[zc, row:row + 2]
    stroke_at = [[zc, zc + 1], [row, row + 2], [0, gt.shape[2]]]

    def click(buf: np.ndarray):
        found = simulate_click(buf[crop], gt[crop])
        if found is None:
            return ([z, ys.mean(), xs.mean()], True)
        (p, kind) = found
        return ([p[0] + crop[0].start, p[1] + crop[1].start, p[2] + crop[2].start], kind == "fg")

    if barrier is not None:
        barrier.wait()
    session = nnInteractiveRemoteInferenceSession(url)
    try:
        t0 = time.perf_counter()
        session.set_image(image[None], {"spacing": [1.0, 0.7, 0.7]})
        results.append(("set_image", time.perf_counter() - t0))
        buf = np.zeros(image.shape, np.uint8)
        session.set_target_buffer(buf)
        plan = ["box"] + ["click"] * 5 + ["lasso", "scribble", "click", "undo"]
        done = 0
        while done < interactions:
            for kind in plan[: interactions - done]:
                args = click(buf) if kind == "click" else None
                t0 = time.perf_counter()
                try:
                    if kind == "box":
                        session.add_bbox_interaction(box, True)
                    elif kind == "click":
                        session.add_point_interaction(args[0], args[1])
                    elif kind == "lasso":
                        session.add_lasso_interaction(section, True, interaction_bbox=[box[0], box[1], box[2]])
                    elif kind == "scribble":
                        session.add_scribble_interaction(stroke, True, interaction_bbox=stroke_at)
                    else:
                        session.undo()
                    results.append((kind, time.perf_counter() - t0))
                except Exception as err:  # counted, and the user goes on
                    errors.append(f"{kind}: {type(err).__name__}: {err}")
                done += 1
            session.reset_interactions()
    finally:
        session.close()


def summarise(results: list[tuple[str, float]]) -> dict:
    times = np.array([t for kind, t in results if kind != "set_image"])
    uploads = [t for kind, t in results if kind == "set_image"]
    by_kind = {}
    for kind in sorted({k for k, _ in results if k != "set_image"}):
        t = np.array([s for k, s in results if k == kind])
        by_kind[kind] = {"n": len(t), "p50_s": float(np.percentile(t, 50))}
    return {"interactions": int(len(times)), "p50_s": float(np.percentile(times, 50)) if len(times) else None,
            "p95_s": float(np.percentile(times, 95)) if len(times) else None,
            "max_s": float(times.max()) if len(times) else None,
            "set_image_s": float(np.median(uploads)) if uploads else None, "by_kind": by_kind}


def phase(url: str, image: np.ndarray, gts: np.ndarray, clients: int, interactions: int) -> dict:
    results: list = []
    errors: list = []
    barrier = threading.Barrier(clients)
    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        futures = [pool.submit(client_run, url, image, gts == c + 1, interactions, results, errors, barrier)
                   for c in range(clients)]
        for f in futures:
            try:
                f.result()
            except Exception as err:
                errors.append(f"client: {type(err).__name__}: {err}")
    out = summarise(results)
    out.update(clients=clients, errors=len(errors), error_messages=errors[:10], wall_s=time.perf_counter() - t0)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m inference.serve_bench", description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default=None, help="model to serve (default: weights/default.pt)")
    ap.add_argument("--clients", type=int, default=3, help="concurrent clients in the load phase (default 3)")
    ap.add_argument("--interactions", type=int, default=30, help="timed interactions per client (default 30)")
    ap.add_argument("--shape", type=int, nargs=3, default=(300, 512, 512), metavar=("Z", "Y", "X"),
                    help="synthetic volume (z, y, x), default 300 512 512")
    ap.add_argument("--server-arg", action="append", default=[], help="extra argument for inference.serve (repeatable)")
    ap.add_argument("--pause-training", action="store_true",
                    help=f"SIGSTOP the training run of {TRAIN_PID} while measuring (SIGCONT after, always)")
    ap.add_argument("--out", default=str(ROOT / "bench_out" / "serve.json"))
    args = ap.parse_args(argv)

    from .bench import synthetic_case

    image, gts = synthetic_case(tuple(args.shape), max(args.clients, 1), seed=0)
    port = free_port()
    paused = None
    if args.pause_training and TRAIN_PID.is_file():
        paused = int(TRAIN_PID.read_text().split()[0])
    server = start_server(args.checkpoint, port, args.clients, args.server_arg)
    url = f"http://127.0.0.1:{port}"
    report = {"shape_zyx": list(args.shape), "checkpoint": args.checkpoint or "weights/default.pt",
              "cpus": len(os.sched_getaffinity(0)), "load_before": os.getloadavg()}
    try:
        if paused:
            os.kill(paused, signal.SIGSTOP)
        report["one_client"] = phase(url, image, gts, 1, args.interactions)
        print(f"1 client : {json.dumps(report['one_client'])}", flush=True)
        report["concurrent"] = phase(url, image, gts, args.clients, args.interactions)
        print(f"{args.clients} clients: {json.dumps(report['concurrent'])}", flush=True)
    finally:
        if paused:
            os.kill(paused, signal.SIGCONT)
        report["server_peak_rss_gb"] = peak_rss_gb(server.pid)
        report["load_after"] = os.getloadavg()
        report["training_paused"] = bool(paused)
        server.terminate()
        server.wait(timeout=30)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))
    print(f"wrote {args.out}")
    print("\n| clients | interactions | p50 (s) | p95 (s) | set_image (s) | errors | server peak RSS (GB) |")
    print("|---|---|---|---|---|---|---|")
    for key in ("one_client", "concurrent"):
        r = report[key]
        print(f"| {r['clients']} | {r['interactions']} | {r['p50_s']:.2f} | {r['p95_s']:.2f} | {r['set_image_s']:.2f} "
              f"| {r['errors']} | {report['server_peak_rss_gb']:.2f} |")
    print(f"load average before / after: {report['load_before'][0]:.1f} / {report['load_after'][0]:.1f} "
          f"on {report['cpus']} cores; training paused: {report['training_paused']}")
    errors = report["one_client"]["errors"] + report["concurrent"]["errors"]
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
