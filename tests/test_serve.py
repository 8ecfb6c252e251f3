"""The nnInteractive-compatible server (inference/serve.py), driven by the real nninteractive-client 2.6.0."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from nnInteractive.inference.remote import (
    ServerAtCapacityError,
    SessionExpiredError,
    nnInteractiveRemoteInferenceSession as Client,
)
from nnInteractive.inference.remote.serialization import pack_array as client_pack

from evaluation.clicks import simulate_click
from evaluation.metrics import dice
from inference.network import new_model, save_checkpoint
from inference.nnia import NNIAError, pack_array, unpack_array
from inference.predictor import DEFAULT_WEIGHTS, load_predictor
from inference.serve import ServerConfig, ServerThread, bound_socket, make_app
from inference.session import InteractiveSession

ROOT = Path(__file__).resolve().parent.parent
KEY = "test-key"
BUDGET_S = 60.0  # generous per-interaction budget: zoom-outs never depend on the machine's load here


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    save_checkpoint(new_model("tiny"), path)
    return path


@pytest.fixture(scope="module")
def predictor(checkpoint):
    return load_predictor(checkpoint, "cpu")


@pytest.fixture(scope="module")
def sample():
    with np.load(ROOT / "samples" / "CT_TotalSegSmall_example.npz") as d:
        return d["imgs"], d["gts"]


def serving(predictor, **kw):
    app = make_app(predictor, ServerConfig(seconds_per_interaction=BUDGET_S, **kw))
    return app, ServerThread(app)


@pytest.fixture(scope="module")
def server(predictor):
    app, thread = serving(predictor, api_key=KEY)
    with thread as url:
        yield url, app


def _box2d(gt):
    """The half-open 2D box (z, y, x) of an object's middle axial slice, as a viewer user draws it."""
    zs = np.flatnonzero(gt.any(axis=(1, 2)))
    z = int(zs[len(zs) // 2])
    ys, xs = np.nonzero(gt[z])
    return [[z, z + 1], [int(ys.min()), int(ys.max()) + 1], [int(xs.min()), int(xs.max()) + 1]]


def _region(update):
    return None if update.region is None else [[s.start, s.stop] for s in update.region]


def test_real_client_matches_the_in_process_session(server, predictor, sample):
    url, app = server
    img, gts = sample
    gt = gts == 2  # right kidney
    local = InteractiveSession(predictor, BUDGET_S)
    local.set_image(img[None])
    with Client(url, api_key=KEY) as client:
        assert client.supported_interactions["bbox2d"] and client.supports_undo and client.supports_initial_label
        assert client.liveness_timeout_seconds > 0 and client.ping()
        client.set_image(img[None], {"spacing": [3.0, 3.0, 3.0]})
        assert client.original_image_shape == (1, *img.shape)
        buf = np.zeros(img.shape, np.uint8)
        client.set_target_buffer(buf)
        client.set_do_autozoom(True)
        box = _box2d(gt)
        z = box[0][0]
        scribble = np.zeros((1, 4, 5), np.uint8)
        scribble[0, 1:3, 1:4] = 1
        lasso = np.zeros(img.shape, np.uint8)
        lasso[z, box[1][0] + 2:box[1][1] - 2, box[2][0] + 2:box[2][1] - 2] = 1
        scribble_at = [[z, z + 1], [box[1][0] + 3, box[1][0] + 7], [box[2][0] + 3, box[2][0] + 8]]
        steps = [
            (lambda: client.add_bbox_interaction(box, True), lambda: local.add_box(box, True)),
            (lambda: client.add_point_interaction([z, 40.4, 80.6], True), lambda: local.add_point([z, 40.4, 80.6], True)),
            (lambda: client.add_point_interaction([z, 20, 20], False), lambda: local.add_point([z, 20, 20], False)),
            (lambda: client.add_scribble_interaction(scribble, True, interaction_bbox=scribble_at),
             lambda: local.add_scribble(scribble, True, bbox=scribble_at)),
            (lambda: client.add_lasso_interaction(lasso, True), lambda: local.add_lasso(lasso, True)),
            (lambda: client.add_bbox_interaction([[0, 30], [20, 60], [60, 100]], True),
             lambda: local.add_box([[0, 30], [20, 60], [60, 100]], True)),  # a 3D box
        ]
        for remote_call, local_call in steps:
            changed = remote_call()
            assert changed == _region(local_call())
            assert np.array_equal(buf, local.mask)
        local_undone = local.undo()
        assert client.undo() is True and local_undone.ran
        assert client._last_paste_bbox == _region(local_undone)  # the tight box of what changed back
        assert np.array_equal(buf, local.mask)
        assert client.undo() is False  # one level, as nnInteractive
        # queued prompt, then an explicit prediction (2.6 only)
        assert client.add_point_interaction([z, 50, 70], True, run_prediction=False) is None
        local.add_point([z, 50, 70], True, run_prediction=False)
        assert client._predict() == _region(local.predict())
        assert np.array_equal(buf, local.mask)
        assert client._predict() is None  # nothing queued
        # an initial segmentation, refined by the model
        client.add_initial_seg_interaction(gt.astype(np.uint8), run_prediction=True)
        local.set_initial_segmentation(gt.astype(np.uint8), run_prediction=True)
        assert np.array_equal(buf, local.mask)
        client.reset_interactions()
        assert not buf.any() and client.heartbeat() > 0 and client.lease_status()["idle_timeout_seconds"] == 600
        assert len(app.state.registry.leases) == 1
    assert len(app.state.registry.leases) == 0  # close() released the lease


def test_default_model_segments_a_sample_organ_through_the_server(sample):
    """The shipped model, through the real client: a 2D box on the gallbladder's middle slice + 3 clicks."""
    img, gts = sample
    gt = gts == 4
    predictor = load_predictor(DEFAULT_WEIGHTS, "cpu")
    local = InteractiveSession(predictor, BUDGET_S)
    local.set_image(img[None])
    app, thread = serving(predictor)
    with thread as url, Client(url) as client:
        client.set_image(img[None])
        buf = np.zeros(img.shape, np.uint8)
        client.set_target_buffer(buf)
        client.add_bbox_interaction(_box2d(gt), True)
        local.add_box(_box2d(gt), True)
        for _ in range(3):
            (point, kind) = simulate_click(buf, gt)
            client.add_point_interaction(point, kind == "fg")
            local.add_point(point, kind == "fg")
        assert np.array_equal(buf, local.mask)
    assert dice(buf, gt) > 0.25


def _raw(url, lease=None, key=KEY):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    if lease:
        headers["X-Lease-Token"] = lease
    return httpx.Client(base_url=url, headers=headers, timeout=30)


def test_auth_capacity_unknown_leases_and_no_redirects(predictor):
    app, thread = serving(predictor, api_key=KEY, max_sessions=1)
    with thread as url:
        assert httpx.get(url + "/healthz").json() == {"ok": True}  # no key needed
        with pytest.raises(httpx.HTTPStatusError) as err:
            Client(url, api_key="wrong")
        assert err.value.response.status_code == 401 and err.value.response.json()["detail"] == "Invalid bearer token"
        with pytest.raises(httpx.HTTPStatusError):
            Client(url)  # no key
        with Client(url, api_key=KEY) as first:
            with pytest.raises(ServerAtCapacityError):
                Client(url, api_key=KEY)
            r = _raw(url).post("/claim")
            assert r.status_code == 503 and r.headers["retry-after"] == "10" and "capacity" in r.json()["detail"]
            first.heartbeat()
        with _raw(url, lease="0" * 32) as raw:
            assert raw.post("/heartbeat").status_code == 410
            assert raw.post("/release").json() == {"released": True}  # idempotent
        with _raw(url) as raw:
            r = raw.post("/set_do_autozoom", json={"do_autozoom": True})
            assert r.status_code == 410 and r.json()["detail"] == "lease token missing"
            assert raw.post("/claim/").status_code == 404  # never a redirect
        with Client(url, api_key=KEY) as c:  # the slot is free again
            c._lease_token, c._http.headers["X-Lease-Token"] = "f" * 32, "f" * 32
            with pytest.raises(SessionExpiredError):
                c.set_do_autozoom(False)


def test_malformed_requests_get_4xx_details_and_other_sessions_go_on(predictor, sample):
    img, _ = sample
    app, thread = serving(predictor, max_sessions=2, max_upload_bytes=8 << 20)
    with thread as url, Client(url) as good:
        good.set_image(img[None])
        good.set_target_buffer(np.zeros(img.shape, np.uint8))
        lease = _raw(url, key=None).post("/claim").json()["lease_token"]
        with _raw(url, lease=lease, key=None) as raw:
            octet = {"Content-Type": "application/octet-stream"}
            # before set_image
            r = raw.post("/add_point_interaction", json={"coordinates": [1, 2, 3], "include_interaction": True})
            assert r.status_code == 400 and "set_image" in r.json()["detail"]
            bad = [
                raw.post("/set_image", content=b"not an array", headers=octet),
                raw.post("/set_image", content=pack_array(np.zeros((2, 4, 4, 4), np.uint8)), headers=octet),
                raw.post("/set_image", content=pack_array(np.zeros((4, 4), np.uint8)), headers=octet),
                raw.post("/set_image", content=client_pack(np.zeros((1, 4, 4, 4), np.uint8))[:-3], headers=octet),
                raw.post("/set_image", content=pack_array(np.zeros((1, 300, 300, 300), np.uint8)), headers=octet),
                raw.post("/set_image", content=b"x" * (9 << 20), headers=octet),
                raw.post("/set_image", content=pack_array(np.zeros((1, 4, 4, 4))), headers={"X-Meta": "{bad"}),
            ]
            assert [r.status_code for r in bad] == [400, 400, 400, 400, 400, 413, 400]
            assert raw.post("/set_image", content=client_pack(img[None]), headers=octet).status_code == 200
            cases = [
                ("/add_point_interaction", {"coordinates": [1, 2], "include_interaction": True}),
                ("/add_point_interaction", {"coordinates": [1, 2, 3]}),
                ("/add_point_interaction", {"coordinates": [1, 2, 999], "include_interaction": True}),
                ("/add_point_interaction", {"coordinates": ["a", 2, 3], "include_interaction": True}),
                ("/add_point_interaction", {"coordinates": [1, 2, 3], "include_interaction": "yes"}),
                ("/add_bbox_interaction", {"bbox_coords": [[5, 5], [0, 9], [0, 9]], "include_interaction": True}),
                ("/add_bbox_interaction", {"bbox_coords": [[5, 6], [0, 9]], "include_interaction": True}),
                ("/set_target_buffer", {"shape": [30, 101], "dtype": "uint8"}),
                ("/set_target_buffer", {"shape": [30, 101, 122], "dtype": "float32"}),
                ("/set_target_buffer", {"shape": [30, 101, True], "dtype": "uint8"}),
                ("/set_do_autozoom", {}),
            ]
            for path, body in cases:
                r = raw.post(path, json=body)
                assert r.status_code == 400 and isinstance(r.json()["detail"], str), (path, body, r.text)
            r = raw.post("/add_point_interaction", content=b"{not json", headers={"Content-Type": "application/json"})
            assert r.status_code == 400
            r = raw.post("/set_target_buffer", json={"shape": [3000, 3000, 3000], "dtype": "uint8"})
            assert r.status_code == 413
            meta = json.dumps({"include_interaction": True, "interaction_bbox": [[0, 1], [0, 2], [0, 2]]})
            r = raw.post("/add_lasso_interaction", content=pack_array(np.ones((1, 3, 3), np.uint8)),
                         headers={"X-Meta": meta, **octet})
            assert r.status_code == 400 and "bbox size" in r.json()["detail"]
            r = raw.post("/add_initial_seg_interaction", content=pack_array(np.ones((3, 3, 3), np.uint8)),
                         headers={"X-Meta": "{}", **octet})
            assert r.status_code == 400
            assert raw.post("/set_target_buffer", json={"shape": [5, 5, 5], "dtype": "uint8"}).status_code == 200
            r = raw.post("/add_point_interaction", json={"coordinates": [1, 2, 3], "include_interaction": True})
            assert r.status_code == 400 and "target buffer" in r.json()["detail"]
        # the well-behaved session was never disturbed
        assert good.add_point_interaction([15, 50, 60], True) is not None


def test_2_5_x_requests_are_understood(predictor, sample):
    """nninteractive-client 2.5.0 heartbeats without a body and names dtypes 'u1', 'i2' (numpy's short form)."""
    img, _ = sample
    app, thread = serving(predictor)
    with thread as url, _raw(url, key=None) as raw:
        lease = raw.post("/claim").json()["lease_token"]
        raw.headers["X-Lease-Token"] = lease
        assert raw.post("/heartbeat").json()["remaining_seconds"] > 0
        short = client_pack(img[None].astype(np.int16)).replace(b"\x05int16", b"\x02i2", 1)
        r = raw.post("/set_image", content=short, headers={"X-Meta": '{"image_properties":{}}'})
        assert r.json() == {"original_image_shape": [1, *img.shape]}
        r = raw.post("/set_target_buffer", json={"shape": list(img.shape), "dtype": "u1"})
        assert r.status_code == 200
        r = raw.post("/add_bbox_interaction", json={"bbox_coords": [[15, 16], [20, 50], [20, 60]],
                                                   "include_interaction": True, "run_prediction": True,
                                                   "override_capability_checks": False})
        meta = json.loads(r.headers["X-Meta"])
        assert r.status_code == 200 and meta["ran_prediction"] and meta["dtype"] == "uint8"
        block = unpack_array(r.content)
        assert list(block.shape) == [b - a for a, b in meta["bbox"]] == meta["shape"]


CLIENT_250 = Path(os.environ.get("NNI_CLIENT_250_DIR", ROOT / ".cache" / "nninteractive-client-2.5.0"))


@pytest.mark.skipif(not (CLIENT_250 / "nnInteractive").is_dir(), reason="no nninteractive-client 2.5.0 at "
                    f"{CLIENT_250}: pip install --no-deps --target {CLIENT_250} nninteractive-client==2.5.0")
def test_real_2_5_0_client(checkpoint, sample):
    code = (
        "import sys, numpy as np\n"
        "from nnInteractive.inference.remote import nnInteractiveRemoteInferenceSession as C, _protocol\n"
        "assert not hasattr(_protocol, 'PATH_PREDICT')  # the 2.5.0 client, not 2.6.0\n"
        "img = np.load(sys.argv[2])['imgs']\n"
        "with C(sys.argv[1]) as c:\n"
        "    c.set_image(img[None]); buf = np.zeros(img.shape, np.uint8); c.set_target_buffer(buf)\n"
        "    assert c.add_bbox_interaction([[15, 16], [20, 50], [20, 60]], True) is not None\n"
        "    assert c.heartbeat() > 0 and c.undo() and buf.sum() == 0\n"
        "    print('2.5.0 client ok')\n"
    )
    predictor = load_predictor(checkpoint, "cpu")
    app, thread = serving(predictor)
    with thread as url:
        env = dict(os.environ, PYTHONPATH=str(CLIENT_250))
        res = subprocess.run([sys.executable, "-c", code, url, str(ROOT / "samples" / "CT_TotalSegSmall_example.npz")],
                             env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "2.5.0 client ok" in res.stdout, res.stderr


def test_idle_sessions_are_reaped_and_then_get_410(predictor, sample):
    img, _ = sample
    app, thread = serving(predictor, idle_timeout_s=1.0, liveness_timeout_s=0.0, sweep_interval_s=0.1)
    with thread as url:
        client = Client(url)
        client.set_image(img[:4, :8, :8][None])
        assert 0 < client.lease_status()["remaining_seconds"] <= 1.0
        client.heartbeat()  # proves liveness, does not postpone the idle timeout
        time.sleep(1.5)
        assert app.state.registry.leases == {}
        with pytest.raises(SessionExpiredError):
            client.set_do_autozoom(True)
        client.close()  # releasing a reaped lease is fine


def test_silent_clients_are_reaped_after_the_liveness_timeout(predictor):
    app, thread = serving(predictor, idle_timeout_s=600.0, liveness_timeout_s=0.6, sweep_interval_s=0.1)
    with thread as url, _raw(url, key=None) as kept, _raw(url, key=None) as silent:
        kept.headers["X-Lease-Token"] = kept.post("/claim").json()["lease_token"]
        silent.headers["X-Lease-Token"] = silent.post("/claim").json()["lease_token"]
        for _ in range(8):
            time.sleep(0.15)
            assert kept.post("/heartbeat", json={}).status_code == 200
        assert silent.post("/heartbeat", json={}).status_code == 410
        assert kept.get("/lease_status").status_code == 200


def test_nnia_reader_refuses_inconsistent_bodies():
    good = pack_array(np.arange(60, dtype=np.int16).reshape(3, 4, 5))
    assert unpack_array(good).sum() == np.arange(60).sum()
    for bad, message in ((good[:5], "too short"), (b"XXXX" + good[4:], "magic"), (good[:4] + b"\x02" + good[5:], "version"),
                         (good[:5] + b"\x09" + good[6:], "codec"), (good + b"\x00", "unexpected bytes"),
                         (good[:-1], "truncated")):
        with pytest.raises(NNIAError, match=message):
            unpack_array(bad)
    with pytest.raises(NNIAError, match="exceeds"):
        unpack_array(good, max_bytes=100)
    obj = good.replace(b"\x05int16", b"\x02O8", 1)
    with pytest.raises(NNIAError):
        unpack_array(obj)


def test_the_command_line_serves(checkpoint, sample):
    """`python -m inference.serve` as a user starts it (a free port, an API key), then the real client."""
    img, _ = sample
    sock = bound_socket()
    port = sock.getsockname()[1]
    sock.close()
    proc = subprocess.Popen([sys.executable, "-m", "inference.serve", "--port", str(port), "--checkpoint", str(checkpoint),
                             "--api-key", KEY, "--log-level", "warning"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()
            time.sleep(0.2)
        with Client(url, api_key=KEY) as client:
            client.set_image(img[None])
            buf = np.zeros(img.shape, np.uint8)
            client.set_target_buffer(buf)
            assert client.add_point_interaction([15, 50, 60], True) is not None
            assert client.license == "!!MISSING!!"  # not the default weights
    finally:
        proc.terminate()
        proc.wait(timeout=20)
