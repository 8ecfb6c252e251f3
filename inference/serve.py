"""`python -m inference.serve`: an nnInteractive-compatible server, so napari and 3D Slicer can segment on a CPU.

It speaks the remote protocol of `nninteractive-client` 2.5.x / 2.6.0 (`nnInteractiveRemoteInferenceSession`,
the client napari-nninteractive and SlicerNNInteractive use): bearer keys, leases with heartbeat and idle
reaping, a session limit (503 + Retry-After), 410 for unknown leases, the NNIA blosc2 array container, the
X-Meta header and prediction responses that carry only the rewritten box. docs/server.md has the details.
Each lease holds one `inference.session.InteractiveSession` (one image, one object); all model runs of all
sessions go through one compute thread, uploads are decoded in a thread pool so heartbeats stay answered.

Axis order: the protocol's coordinates, boxes and masks are in the array order of the uploaded image
(its axes 1..3; napari and Slicer send (z, y, x)); the server passes them through unchanged. Boxes are
half-open [[a0, a1], [b0, b1], [c0, c1]] in that order.

Only the server imports FastAPI, uvicorn and blosc2 (requirements-serve.txt); the challenge container never does.
"""
from __future__ import annotations

import argparse
import asyncio
import hmac
import json
import logging
import os
import secrets
import socket
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, Response

from .nnia import pack_array, unpack_array
from .predictor import DEFAULT_WEIGHTS, Predictor, load_predictor
from .session import INTENSITY_MODES, UNTRAINED, InteractiveSession, SessionError, Update

log = logging.getLogger("inference.serve")

DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 1527
LEASE_HEADER, META_HEADER = "X-Lease-Token", "X-Meta"
OCTET = "application/octet-stream"
JSON_LIMIT = 1 << 20  # bytes of a JSON request body
SERVER_VERSION = "segfm3d 0.1.0"
DEFAULT_LICENSE = ("weights/default.pt: trained on public volumes under MIT, Apache-2.0, BSD-3-Clause and "
                   "CC BY 3.0/4.0 licences (sources and attributions: weights/README.md, data/SPLIT.md)")
MISSING_LICENSE = "!!MISSING!!"  # the protocol's 'unknown'


@dataclass
class ServerConfig:
    """Server settings; times in seconds (0 disables the idle or the liveness timeout)."""

    api_key: str | None = None
    max_sessions: int = 3
    idle_timeout_s: float = 600.0
    liveness_timeout_s: float = 60.0
    sweep_interval_s: float = 15.0
    retry_after_s: int = 10
    max_upload_bytes: int = 2 << 30
    undo_depth: int = 1
    seconds_per_interaction: float = 4.0
    intensity: str = "auto"
    license: str = MISSING_LICENSE


@dataclass
class Lease:
    """One claimed session: its token, the interactive session, the target buffer's (shape, dtype) and two clocks."""

    token: str
    session: InteractiveSession
    last_seen: float
    last_active: float
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    buffer: tuple[tuple[int, int, int], np.dtype] | None = None


class Registry:
    """The leases: claim (up to max_sessions), look-up (touches last_seen), peek, release, and the reaper's sweep."""

    def __init__(self, config: ServerConfig, new_session: Callable[[], InteractiveSession],
                 clock: Callable[[], float] = time.monotonic):
        self.config, self.new_session, self.clock = config, new_session, clock
        self.leases: dict[str, Lease] = {}

    def claim(self) -> Lease | None:
        """A new lease, or None when the server is full (after reaping expired leases)."""
        self.sweep()
        if len(self.leases) >= self.config.max_sessions:
            return None
        now = self.clock()
        lease = Lease(secrets.token_hex(16), self.new_session(), now, now)
        self.leases[lease.token] = lease
        return lease

    def peek(self, token: str | None) -> Lease:
        if not token:
            raise HTTPException(410, "lease token missing")
        lease = self.leases.get(token)
        if lease is None:
            raise HTTPException(410, "lease expired or unknown")
        return lease

    def get(self, token: str | None) -> Lease:
        lease = self.peek(token)
        lease.last_seen = self.clock()
        return lease

    def touch_active(self, lease: Lease) -> None:
        lease.last_seen = lease.last_active = self.clock()

    def remaining(self, lease: Lease) -> float:
        idle = self.config.idle_timeout_s
        return max(0.0, idle - (self.clock() - lease.last_active)) if idle > 0 else float("inf")

    def release(self, token: str | None) -> None:
        if token:
            self.leases.pop(token, None)

    def sweep(self) -> list[str]:
        """Drop leases not seen for the liveness timeout or not used for the idle timeout (busy ones stay)."""
        now, cfg = self.clock(), self.config
        gone = []
        for token, lease in list(self.leases.items()):
            if lease.lock.locked():
                continue
            dead = cfg.liveness_timeout_s > 0 and now - lease.last_seen > cfg.liveness_timeout_s
            idle = cfg.idle_timeout_s > 0 and now - lease.last_active > cfg.idle_timeout_s
            if dead or idle:
                del self.leases[token]
                gone.append(token)
                log.info("reaped session %s… (%s)", token[:8], "no heartbeat" if dead else "idle")
        return gone


# ---------------------------------------------------------------------------------------------- parsing
def _json_number_list(value: Any, n: int, what: str) -> list[float]:
    if not isinstance(value, (list, tuple)) or len(value) != n or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        raise SessionError(f"{what} must be a list of {n} numbers, got {value!r}")
    return [float(v) for v in value]


def parse_bbox(value: Any, what: str) -> list[list[float]]:
    """[[a0, a1], [b0, b1], [c0, c1]] numbers (half-open, image array order) or SessionError."""
    if not isinstance(value, (list, tuple)) or len(value) != 3:
        raise SessionError(f"{what} must be [[lo, hi], [lo, hi], [lo, hi]], got {value!r}")
    return [_json_number_list(pair, 2, what) for pair in value]


def flag(body: dict, key: str, default: bool | None = None) -> bool:
    """A boolean field; required when default is None."""
    if key not in body or body[key] is None:
        if default is None:
            raise SessionError(f"missing required field '{key}'")
        return default
    value = body[key]
    if isinstance(value, bool) or value in (0, 1):
        return bool(value)
    raise SessionError(f"'{key}' must be true or false, got {value!r}")


def parse_buffer(body: dict, max_bytes: int) -> tuple[tuple[int, int, int], np.dtype]:
    """The target buffer's shape [a, b, c] and integer or bool dtype name."""
    shape, name = body.get("shape"), body.get("dtype")
    if shape is None or name is None:
        raise SessionError("set_target_buffer needs 'shape' and 'dtype'")
    if not isinstance(shape, list) or len(shape) != 3 or not all(
            isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in shape):
        raise SessionError(f"'shape' must be 3 positive integers, got {shape!r}")
    try:
        dtype = np.dtype(str(name))
    except TypeError:
        raise SessionError(f"unknown dtype {name!r}") from None
    if dtype.kind not in "biu":
        raise SessionError(f"the target buffer's dtype must be bool or integer, got {dtype}")
    if int(np.prod(shape)) * dtype.itemsize > max_bytes:
        raise HTTPException(413, f"target buffer {shape} {dtype} exceeds the server's limit")
    return tuple(shape), dtype


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it exceeds `limit` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise HTTPException(400, f"bad Content-Length {declared!r}")
        if int(declared) > limit:
            raise HTTPException(413, f"body of {int(declared)} bytes exceeds the limit of {limit} bytes")
    parts, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPException(413, f"body exceeds the limit of {limit} bytes")
        parts.append(chunk)
    return b"".join(parts)


async def read_json(request: Request) -> dict:
    """A JSON object body; an empty body counts as {} (2.5.x heartbeats send none)."""
    raw = await read_body(request, JSON_LIMIT)
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as err:
        raise SessionError(f"body is not JSON: {err}") from None
    if not isinstance(body, dict):
        raise SessionError("body must be a JSON object")
    return body


def read_meta(request: Request) -> dict:
    raw = request.headers.get(META_HEADER)
    if raw is None:
        return {}
    try:
        meta = json.loads(raw)
    except ValueError as err:
        raise HTTPException(400, f"Bad X-Meta: {err}") from None
    if not isinstance(meta, dict):
        raise HTTPException(400, "Bad X-Meta: not a JSON object")
    return meta


def spacing_of(meta: dict) -> list[float] | None:
    """image_properties.spacing (image array order) when usable; anything else is ignored with a warning,
    since the model does not use spacing."""
    props = meta.get("image_properties") or {}
    spacing = props.get("spacing") if isinstance(props, dict) else None
    if spacing is None:
        return None
    try:
        values = [float(s) for s in spacing]
        if len(values) == 3 and all(np.isfinite(v) and v > 0 for v in values):
            return values
    except (TypeError, ValueError):
        pass
    log.warning("set_image: ignoring unusable spacing %r (the model does not use spacing)", spacing)
    return None


# ---------------------------------------------------------------------------------------------- responses
def prediction_response(lease: Lease, update: Update) -> Response:
    """The protocol's prediction response: X-Meta {ran_prediction, bbox} and the buffer's content inside bbox."""
    region = update.region
    if not update.ran or region is None or any(s.stop <= s.start for s in region):
        meta = {"ran_prediction": bool(update.ran), "bbox": None}
        return Response(b"", media_type=OCTET, headers={META_HEADER: json.dumps(meta, separators=(",", ":"))})
    dtype = lease.buffer[1] if lease.buffer is not None else np.dtype(np.uint8)
    block = lease.session.mask[region].astype(dtype)
    meta = {"ran_prediction": True, "bbox": [[s.start, s.stop] for s in region], "dtype": dtype.name,
            "shape": list(block.shape)}
    return Response(pack_array(block), media_type=OCTET,
                    headers={META_HEADER: json.dumps(meta, separators=(",", ":"))})


def capabilities(predictor: Predictor, config: ServerConfig) -> dict[str, Any]:
    """The capability JSON (same for every session); channel indices are nnInteractive's interaction channels."""
    return {
        "supported_interactions": {"points": True, "bbox2d": True, "bbox3d": True, "lasso": True, "scribble": True},
        "channel_mapping": {"prev_seg": 0, "bbox2d": [1, 2], "bbox3d": [1, 2], "lasso": [1, 2], "points": [3, 4],
                            "scribble": [5, 6]},
        "num_interaction_channels": 7,
        "supports_initial_label": True,
        "supports_zero_shot_label_refinement": False,
        "preferred_scribble_thickness": [2, 2, 2],
        "interaction_decay": None,
        "inference_session_version": SERVER_VERSION,
        "license": config.license,
        "supports_undo": config.undo_depth > 0,
        "do_autozoom": True,
        "patch_size": [int(v) for v in predictor.model.patch_size],
        # not read by the clients: what the model was never trained on, and the server's own name
        "untrained_interactions": list(UNTRAINED),
        "server": SERVER_VERSION,
    }


# ---------------------------------------------------------------------------------------------- the app
def make_app(predictor: Predictor, config: ServerConfig | None = None) -> FastAPI:
    """The FastAPI app serving protocol A with one InteractiveSession per lease."""
    config = config or ServerConfig()
    compute = ThreadPoolExecutor(max_workers=1, thread_name_prefix="segfm-model")

    def new_session() -> InteractiveSession:
        return InteractiveSession(predictor, config.seconds_per_interaction, True, config.undo_depth,
                                  config.intensity)

    registry = Registry(config, new_session)
    caps = capabilities(predictor, config)

    async def sweeper() -> None:
        while True:
            await asyncio.sleep(config.sweep_interval_s)
            registry.sweep()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        task = asyncio.create_task(sweeper())
        try:
            yield
        finally:
            task.cancel()
            compute.shutdown(wait=False, cancel_futures=True)

    async def authorised(request: Request) -> None:
        if not config.api_key:
            return
        header = request.headers.get("authorization", "")
        if not header.startswith("Bearer "):
            raise HTTPException(401, "Missing bearer token")
        if not hmac.compare_digest(header[7:].encode(), config.api_key.encode()):
            raise HTTPException(401, "Invalid bearer token")

    app = FastAPI(title="segfm3d interactive server", redirect_slashes=False, lifespan=lifespan,
                  docs_url=None, redoc_url=None, openapi_url=None)
    app.state.registry, app.state.config = registry, config
    api = APIRouter(dependencies=[Depends(authorised)])

    @app.exception_handler(ValueError)
    async def bad_request(request: Request, err: ValueError) -> JSONResponse:
        return JSONResponse({"detail": str(err)}, status_code=400)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, err: Exception) -> JSONResponse:
        log.exception("%s %s failed", request.method, request.url.path)
        return JSONResponse({"detail": f"internal error: {type(err).__name__}: {err}"}, status_code=500)

    def lease_of(request: Request) -> Lease:
        return registry.get(request.headers.get(LEASE_HEADER))

    async def on_session(lease: Lease, fn: Callable[[], Any]) -> Any:
        """Run fn on the compute thread, one call per session at a time; both ends count as activity."""
        async with lease.lock:
            registry.touch_active(lease)
            try:
                return await asyncio.get_running_loop().run_in_executor(compute, fn)
            finally:
                registry.touch_active(lease)

    def check_buffer(lease: Lease) -> None:
        if lease.buffer is not None and lease.session.image is not None and lease.buffer[0] != lease.session.shape:
            raise SessionError(f"target buffer shape {list(lease.buffer[0])} differs from the image's "
                               f"{list(lease.session.shape)}: call set_target_buffer with the image's shape")

    async def interaction(lease: Lease, call: Callable[[InteractiveSession], Update]) -> Response:
        def fn() -> Response:
            check_buffer(lease)
            return prediction_response(lease, call(lease.session))
        return await on_session(lease, fn)

    async def array_body(request: Request) -> np.ndarray:
        body = await read_body(request, config.max_upload_bytes)
        return await asyncio.to_thread(unpack_array, body, config.max_upload_bytes)

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"ok": True}

    @api.get("/capabilities")
    async def get_capabilities() -> dict:
        return caps

    @api.post("/claim")
    async def claim(request: Request) -> Any:
        await read_body(request, JSON_LIMIT)
        lease = registry.claim()
        if lease is None:
            return JSONResponse({"detail": f"server is at capacity ({config.max_sessions} sessions)"},
                                status_code=503, headers={"Retry-After": str(config.retry_after_s)})
        log.info("claimed session %s… (%d of %d)", lease.token[:8], len(registry.leases), config.max_sessions)
        return {"lease_token": lease.token, "idle_timeout_seconds": float(config.idle_timeout_s),
                "liveness_timeout_seconds": float(config.liveness_timeout_s), "max_sessions": config.max_sessions}

    @api.post("/release")
    async def release(request: Request) -> dict:
        registry.release(request.headers.get(LEASE_HEADER))
        return {"released": True}

    @api.post("/heartbeat")
    async def heartbeat(request: Request) -> dict:
        await read_body(request, JSON_LIMIT)  # {} from 2.6 clients, nothing from 2.5.x
        lease = lease_of(request)
        return {"remaining_seconds": registry.remaining(lease)}

    @api.get("/lease_status")
    async def lease_status(request: Request) -> dict:
        lease = registry.peek(request.headers.get(LEASE_HEADER))
        return {"remaining_seconds": registry.remaining(lease), "idle_timeout_seconds": float(config.idle_timeout_s)}

    @api.post("/set_image")
    async def set_image(request: Request) -> dict:
        lease = lease_of(request)
        spacing = spacing_of(read_meta(request))
        image = await array_body(request)
        if image.ndim not in (3, 4):
            raise SessionError(f"set_image expects a (C, a, b, c) image, got shape {image.shape}")

        def fn() -> dict:
            lease.session.set_image(image, spacing)
            lease.buffer = None
            return {"original_image_shape": [int(s) for s in image.shape]}
        return await on_session(lease, fn)

    @api.post("/set_target_buffer")
    async def set_target_buffer(request: Request) -> dict:
        lease = lease_of(request)
        buffer = parse_buffer(await read_json(request), config.max_upload_bytes)

        def fn() -> dict:
            lease.buffer = buffer
            if lease.session.image is not None:
                lease.session.clear_mask()  # the server's buffer starts empty, as the reference allocates zeros
            return {}
        return await on_session(lease, fn)

    @api.post("/set_do_autozoom")
    async def set_do_autozoom(request: Request) -> dict:
        lease = lease_of(request)
        value = flag(await read_json(request), "do_autozoom")

        def fn() -> dict:
            lease.session.do_autozoom = value
            return {}
        return await on_session(lease, fn)

    @api.post("/reset_interactions")
    async def reset_interactions(request: Request) -> dict:
        lease = lease_of(request)
        await read_json(request)

        def fn() -> dict:
            if lease.session.image is not None:
                lease.session.reset()
            return {}
        return await on_session(lease, fn)

    @api.post("/undo")
    async def undo(request: Request) -> Response:
        lease = lease_of(request)
        await read_json(request)
        return await interaction(lease, lambda s: s.undo() if s.image is not None else Update(False))

    @api.post("/predict")
    async def predict(request: Request) -> Response:
        lease = lease_of(request)
        flag(await read_json(request), "force_full_refine", False)  # accepted; every prediction is a full one
        return await interaction(lease, lambda s: s.predict())

    @api.post("/add_point_interaction")
    async def add_point(request: Request) -> Response:
        lease = lease_of(request)
        body = await read_json(request)
        point = _json_number_list(body.get("coordinates"), 3, "'coordinates'")
        positive, run = flag(body, "include_interaction"), flag(body, "run_prediction", True)
        return await interaction(lease, lambda s: s.add_point(point, positive, run))

    @api.post("/add_bbox_interaction")
    async def add_bbox(request: Request) -> Response:
        lease = lease_of(request)
        body = await read_json(request)
        box = parse_bbox(body.get("bbox_coords"), "'bbox_coords'")
        positive, run = flag(body, "include_interaction"), flag(body, "run_prediction", True)
        return await interaction(lease, lambda s: s.add_box(box, positive, run))

    async def mask_interaction(request: Request, kind: str) -> Response:
        lease = lease_of(request)
        meta = read_meta(request)
        positive, run = flag(meta, "include_interaction"), flag(meta, "run_prediction", True)
        bbox = meta.get("interaction_bbox")
        bbox = None if bbox is None else parse_bbox(bbox, "'interaction_bbox'")
        mask = await array_body(request)
        if kind == "lasso":
            return await interaction(lease, lambda s: s.add_lasso(mask, positive, run, bbox))
        return await interaction(lease, lambda s: s.add_scribble(mask, positive, run, bbox))

    @api.post("/add_scribble_interaction")
    async def add_scribble(request: Request) -> Response:
        return await mask_interaction(request, "scribble")

    @api.post("/add_lasso_interaction")
    async def add_lasso(request: Request) -> Response:
        return await mask_interaction(request, "lasso")

    @api.post("/add_initial_seg_interaction")
    async def add_initial_seg(request: Request) -> Response:
        lease = lease_of(request)
        run = flag(read_meta(request), "run_prediction", False)
        seg = await array_body(request)
        return await interaction(lease, lambda s: s.set_initial_segmentation(seg, run))

    app.include_router(api)
    return app


# ---------------------------------------------------------------------------------------------- running it
def warm_up(predictor: Predictor) -> None:
    """One network run at the patch size, so that the first interaction does not pay the first-call cost."""
    import torch

    from .network import NUM_INPUT_CHANNELS

    predictor.run_network(torch.zeros((NUM_INPUT_CHANNELS, *predictor.model.patch_size)))


def bound_socket(host: str = DEFAULT_HOST, port: int = 0) -> socket.socket:
    """A listening TCP socket (port 0: a free port, read it from getsockname())."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    return sock


class ServerThread:
    """Serve an app from a background thread (tests, the demo): `with ServerThread(app) as url: ...`."""

    def __init__(self, app: FastAPI, host: str = DEFAULT_HOST, port: int = 0, log_level: str = "warning"):
        import uvicorn

        self.sock = bound_socket(host, port)
        self.url = f"http://{host}:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level=log_level, lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the server thread did not start")
            time.sleep(0.02)
        return self.url

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m inference.serve", description=__doc__.splitlines()[0])
    ap.add_argument("--host", default=DEFAULT_HOST, help=f"address to listen on (default {DEFAULT_HOST}: this "
                    "machine only; 0.0.0.0 exposes it to the network, use --api-key then)")
    ap.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}, as nnInteractive)")
    ap.add_argument("--api-key", default=os.environ.get("NN_INTERACTIVE_API_KEY"),
                    help="require 'Authorization: Bearer KEY' (default: $NN_INTERACTIVE_API_KEY; none: no key)")
    ap.add_argument("--checkpoint", default=os.environ.get("SEGFM_WEIGHTS"),
                    help="native checkpoint or nnInteractive v1.0 folder (default: $SEGFM_WEIGHTS or weights/default.pt)")
    ap.add_argument("--device", default=os.environ.get("SEGFM_DEVICE"), help="cpu or cuda (default: cuda when present)")
    ap.add_argument("--max-sessions", type=int, default=3, help="concurrent sessions (default 3); more get 503")
    ap.add_argument("--idle-timeout", type=float, default=600.0,
                    help="seconds without an interaction before a session is dropped (default 600; 0: never)")
    ap.add_argument("--liveness-timeout", type=float, default=60.0,
                    help="seconds without any request (clients heartbeat) before a session is dropped (default 60)")
    ap.add_argument("--sweep-interval", type=float, default=15.0, help="seconds between reaper sweeps (default 15)")
    ap.add_argument("--max-upload-mb", type=float, default=2048.0,
                    help="largest request body and decoded array, MiB (default 2048)")
    ap.add_argument("--undo-depth", type=int, default=1, help="interactions each session can undo (default 1, as nnInteractive)")
    ap.add_argument("--no-undo", action="store_true", help="disable undo (capabilities say supports_undo false)")
    ap.add_argument("--seconds-per-interaction", type=float, default=4.0,
                    help="time budget of one prediction: zoom-outs stop when it runs short (default 4)")
    ap.add_argument("--intensity", choices=INTENSITY_MODES, default="auto",
                    help="map uploaded images to the model's [0, 255] convention (default auto: [0, 255] integers "
                         "kept, values below -500 taken as CT HU and soft-tissue windowed, others percentile-clipped)")
    ap.add_argument("--tta", type=int, choices=(1, 2, 4, 8), default=1, help="mirrored copies per network run (default 1)")
    ap.add_argument("--license", default=None, help="licence text shown by the viewers (default: the model's)")
    ap.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    return ap


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    license_text = args.license
    if license_text is None:
        is_default = args.checkpoint is None or Path(args.checkpoint).resolve() == DEFAULT_WEIGHTS.resolve()
        license_text = DEFAULT_LICENSE if is_default else MISSING_LICENSE
    return ServerConfig(
        api_key=args.api_key or None, max_sessions=max(1, args.max_sessions), idle_timeout_s=args.idle_timeout,
        liveness_timeout_s=args.liveness_timeout, sweep_interval_s=args.sweep_interval,
        max_upload_bytes=int(args.max_upload_mb * 2**20), undo_depth=0 if args.no_undo else max(0, args.undo_depth),
        seconds_per_interaction=args.seconds_per_interaction, intensity=args.intensity, license=license_text)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import uvicorn

    config = config_from_args(args)
    if args.host not in ("127.0.0.1", "localhost", "::1") and not config.api_key:
        log.warning("listening on %s without an API key: anyone who can reach this port can use the server",
                    args.host)
    t0 = time.time()
    from .settings import env_options
    predictor = load_predictor(args.checkpoint, args.device, routes=False, tta=args.tta,  # sessions carry no modality
                               **env_options(adapt_by_default=False))  # SEGFM_INTENSITY, ...; adapting only on request
    warm_up(predictor)
    log.info("model %s on %s loaded in %.2f s; serving http://%s:%d (max %d sessions%s)", predictor.model.source,
             predictor.device, time.time() - t0, args.host, args.port, config.max_sessions,
             ", API key required" if config.api_key else "")
    uvicorn.run(make_app(predictor, config), host=args.host, port=args.port, log_level=args.log_level,
                timeout_keep_alive=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
