"""`realface serve` under attack and load: slow headers, stalled and trickling uploads, client disconnects,
bursts through the queue, the queue's wait limit, /metrics, the API key. Real uvicorn on loopback with short
limits (every wait here is a limit under test, well under a second or two)."""

from __future__ import annotations

import logging
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from realface.model import Model, load_model
from realface.cli import main
from realface.serve import JobSlots, Metrics, ServeLimits, UploadClock, create_app, quantile, serve_in_background

SHORT = dict(header_timeout_s=0.5, upload_idle_s=0.5, min_upload_kib_s=64.0)  # limits for the slow-client tests


@pytest.fixture(scope="module")
def bundle(tiny_model: Path) -> Model:
    return load_model(tiny_model, maps=True)


@pytest.fixture(scope="module")
def utk_jpg(shared_data: Path) -> bytes:
    return sorted((shared_data / "utkface" / "images").glob("*.jpg"))[0].read_bytes()


def upload(url: str, data: bytes, name: str = "face.jpg", **headers: str) -> httpx.Response:
    with httpx.Client(base_url=url, timeout=30) as http:
        return http.post("/v1/detect", files={"file": (name, data, "image/jpeg")}, headers=headers)


def partial_upload(url: str, body: bytes, declared: int) -> socket.socket:
    """A connection that sends a request's headers (declaring `declared` body bytes) and `body`, then waits."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=5)
    head = (
        f"POST /v1/detect HTTP/1.1\r\nHost: {host}\r\nContent-Type: multipart/form-data; boundary=b0\r\n"
        f"Content-Length: {declared}\r\n\r\n"
    )
    sock.sendall(head.encode() + body)
    return sock


def read_response(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (the socket's 5 s timeout bounds it)."""
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


MULTIPART_HEAD = b'--b0\r\nContent-Disposition: form-data; name="file"; filename="slow.jpg"\r\n\r\n'


# -- pure parts ------------------------------------------------------------------------------------


def test_upload_clock_by_hand() -> None:
    clock = UploadClock(start=100.0, idle_s=2.0, min_rate=1000.0)
    assert clock.wait_s(0, 100.0) == 2.0  # idle limit
    assert clock.wait_s(0, 101.5) == 0.5  # the grace runs out at 102 with nothing received
    assert clock.wait_s(5000, 103.0) == 2.0  # 5000 B at 1000 B/s covers until 107: the idle limit is shorter
    assert clock.wait_s(5000, 106.0) == 1.0  # ... until 107
    assert clock.wait_s(5000, 107.5) == -0.5  # too slow already


def test_quantiles_and_metrics_text_by_hand() -> None:
    assert quantile([4.0, 1.0, 3.0, 2.0], 0.5) == 2.5 and quantile([1.0, 2.0, 3.0, 4.0, 5.0], 0.95) == pytest.approx(4.8)
    metrics = Metrics(window=3)
    for status, seconds in ((200, 1.0), (200, 3.0), (503, 0.5), (200, 2.0)):
        metrics.observe(status, seconds)
    text = metrics.render({"realface_queue_depth": ("help", 2)})
    lines = text.splitlines()
    assert 'realface_requests_total{code="200"} 3' in lines and 'realface_requests_total{code="503"} 1' in lines
    assert 'realface_request_seconds{quantile="0.5"} 2.000000' in lines  # median of the last 3: 3.0, 0.5, 2.0
    assert "realface_request_seconds_sum 6.500000" in lines and "realface_request_seconds_count 4" in lines
    assert "# TYPE realface_queue_depth gauge" in lines and "realface_queue_depth 2" in lines
    assert text.endswith("\n")


def test_job_slots_first_come_first_served_and_time_out() -> None:
    import asyncio

    async def scenario() -> list[str]:
        slots, order = JobSlots(1), []
        assert await slots.acquire(0.01)

        async def waiter(name: str, timeout: float) -> None:
            if await slots.acquire(timeout):
                order.append(name)
                slots.release()
            else:
                order.append(f"{name} timed out")

        tasks = [asyncio.create_task(waiter(n, t)) for n, t in (("a", 5.0), ("b", 0.05), ("c", 5.0))]
        await asyncio.sleep(0.2)  # b gives up while the slot is held
        assert slots.waiting == 2 and slots.running == 1
        slots.release()
        await asyncio.gather(*tasks)
        assert slots.running == 0 and slots.free == 1
        return order

    assert asyncio.run(scenario()) == ["b timed out", "a", "c"]


# -- slow clients ----------------------------------------------------------------------------------


def test_stalled_uploads_are_cut_and_do_not_lock_others_out(bundle: Model, utk_jpg: bytes) -> None:
    """The issue's attack: two uploads that stall after part of their body fill every place; they are cut with
    408 after the idle limit, and the service answers others again."""
    app = create_app(bundle, limits=ServeLimits(max_jobs=1, queue_length=1, **SHORT), frames=2)
    with serve_in_background(app) as url:
        body = MULTIPART_HEAD + utk_jpg[:2000]
        stalled = [partial_upload(url, body, declared=len(body) + 50_000) for _ in range(2)]
        time.sleep(0.1)
        refused = upload(url, utk_jpg)
        assert refused.status_code == 503 and "retry-after" in refused.headers  # both places are taken
        t0 = time.monotonic()
        for sock in stalled:
            answer = read_response(sock)  # the server answers, then closes the connection
            assert answer.startswith(b"HTTP/1.1 408") and b"upload too slow" in answer
            sock.close()
        assert time.monotonic() - t0 < 3.0
        assert upload(url, utk_jpg).status_code == 200
        health = httpx.get(f"{url}/healthz").json()
        assert health["uploads_receiving"] == 0 and health["jobs_running"] == 0


def test_trickling_upload_is_cut_by_its_rate(bundle: Model, utk_jpg: bytes) -> None:
    """Never idle for long, but far below the minimum rate: cut once the grace is over."""
    app = create_app(bundle, limits=ServeLimits(max_jobs=1, queue_length=0, **SHORT), frames=2)
    with serve_in_background(app) as url:
        sock = partial_upload(url, MULTIPART_HEAD, declared=len(MULTIPART_HEAD) + 50_000)
        t0 = time.monotonic()
        answer = b""
        with pytest.raises(OSError):  # until the server cuts it: then the send fails (reset) or the answer came
            for _ in range(40):  # 100 bytes every 0.1 s: 1 KB/s, under the 64 KiB/s minimum, never idle 0.5 s
                sock.sendall(b"x" * 100)
                sock.settimeout(0.1)
                try:
                    answer += sock.recv(65536)
                except TimeoutError:
                    continue
                if answer:
                    raise OSError("answered")
        assert time.monotonic() - t0 < 2.0
        assert answer == b"" or answer.startswith(b"HTTP/1.1 408")
        sock.close()
        assert upload(url, utk_jpg).status_code == 200


def test_slow_headers_are_cut(bundle: Model) -> None:
    app = create_app(bundle, limits=ServeLimits(**SHORT), frames=2)
    with serve_in_background(app) as url:
        host, port = url.removeprefix("http://").split(":")
        sock = socket.create_connection((host, int(port)), timeout=5)
        sock.sendall(b"POST /v1/detect HTTP/1.1\r\nHost: x\r\n")  # and never the rest of the headers
        t0 = time.monotonic()
        assert read_response(sock) == b""  # closed without an answer
        assert time.monotonic() - t0 < 2.0
        sock.close()
        # A keep-alive connection gets the same limit again for its next request's headers.
        with httpx.Client(base_url=url, timeout=5) as http:
            assert http.get("/healthz").status_code == 200
            assert http.get("/healthz").status_code == 200


def test_disconnect_mid_upload_is_quiet_and_gives_everything_back(bundle: Model, utk_jpg: bytes, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("uvicorn.error")
    logger.addHandler(handler)
    app = create_app(bundle, limits=ServeLimits(max_jobs=1, queue_length=0), frames=2)
    try:
        with serve_in_background(app) as url:
            sock = partial_upload(url, MULTIPART_HEAD + utk_jpg[:3000], declared=200_000)
            time.sleep(0.2)
            sock.close()  # gone mid-upload
            deadline = time.monotonic() + 5
            while 'code="499"' not in (text := httpx.get(f"{url}/metrics").text) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert 'realface_requests_total{code="499"} 1' in text
            assert upload(url, utk_jpg).status_code == 200  # its place was given back (one place in all)
    finally:
        logger.removeHandler(handler)
    assert not [r for r in records if r.levelno >= logging.ERROR], [r.getMessage() for r in records]
    assert list(tmp_path.iterdir()) == []


# -- bursts and the queue --------------------------------------------------------------------------


def test_burst_within_capacity_is_served(bundle: Model, utk_jpg: bytes) -> None:
    """20 simultaneous uploads, 2 jobs at once and a queue of 18: all served (the issue saw 18 of 20 refused)."""
    app = create_app(bundle, limits=ServeLimits(max_jobs=2, queue_length=18), frames=2)
    with serve_in_background(app) as url, ThreadPoolExecutor(20) as pool:
        codes = list(pool.map(lambda i: upload(url, utk_jpg, f"f{i}.jpg").status_code, range(20)))
        metrics = httpx.get(f"{url}/metrics").text
    assert codes == [200] * 20
    assert 'realface_requests_total{code="200"} 20' in metrics and 'quantile="0.95"' in metrics


def test_queue_depth_wait_limit_and_overflow(bundle: Model, utk_jpg: bytes, hold_scans) -> None:
    app = create_app(bundle, limits=ServeLimits(max_jobs=1, queue_length=2, queue_wait_s=30, retry_after_s=2), frames=2)
    held = hold_scans(app)
    started, release = held.started, held.release
    with TestClient(app) as client, ThreadPoolExecutor(3) as pool:
        post = lambda name: client.post("/v1/detect", files={"file": (name, utk_jpg)})  # noqa: E731
        first = pool.submit(post, "first.jpg")
        assert started.wait(30)
        queued = [pool.submit(post, f"q{i}.jpg") for i in range(2)]
        deadline = time.monotonic() + 10
        while client.get("/healthz").json()["queue_depth"] < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert client.get("/healthz").json()["queue_depth"] == 2
        overflow = post("overflow.jpg")  # 1 running + 2 queued: no place left
        assert overflow.status_code == 503 and overflow.headers["retry-after"] == "2"
        assert "1 jobs running and 2 waiting" in overflow.json()["detail"]
        release.set()
        assert [f.result(timeout=30).status_code for f in [first, *queued]] == [200, 200, 200]
        assert client.get("/healthz").json()["queue_depth"] == 0
    # A request that waits longer than queue_wait_s for a job slot gets 503 (and its place back).
    app = create_app(bundle, limits=ServeLimits(max_jobs=1, queue_length=1, queue_wait_s=0.3), frames=2)
    held = hold_scans(app)
    started, release = held.started, held.release
    with TestClient(app) as client, ThreadPoolExecutor(1) as pool:
        post = lambda name: client.post("/v1/detect", files={"file": (name, utk_jpg)})  # noqa: E731
        first = pool.submit(post, "first.jpg")
        assert started.wait(30)
        waited = post("waits.jpg")
        assert waited.status_code == 503 and "no job slot came free within 0.3 s" in waited.json()["detail"]
        release.set()
        assert first.result(timeout=30).status_code == 200
        assert client.get("/healthz").json() | {"status": "ok"} == client.get("/healthz").json()
        assert client.get("/healthz").json()["uploads_receiving"] == 0


def test_a_queued_client_that_leaves_is_not_scanned(bundle: Model, utk_jpg: bytes, hold_scans) -> None:
    app = create_app(bundle, limits=ServeLimits(max_jobs=1, queue_length=2, queue_wait_s=30), frames=2)
    held = hold_scans(app)
    started, release, scanned = held.started, held.release, held.calls
    with serve_in_background(app) as url, ThreadPoolExecutor(1) as pool:
        first = pool.submit(upload, url, utk_jpg)
        assert started.wait(30)
        body = MULTIPART_HEAD + utk_jpg + b"\r\n--b0--\r\n"
        sock = partial_upload(url, body, declared=len(body))  # a whole upload, then it waits in the queue...
        deadline = time.monotonic() + 5
        while httpx.get(f"{url}/healthz").json()["queue_depth"] != 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        sock.close()  # ...and leaves before its turn
        release.set()
        assert first.result(timeout=30).status_code == 200
        deadline = time.monotonic() + 5
        while 'code="499"' not in (text := httpx.get(f"{url}/metrics").text) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert 'realface_requests_total{code="499"} 1' in text and len(scanned) == 1  # never scanned


# -- API key ---------------------------------------------------------------------------------------


def test_api_key(bundle: Model, utk_jpg: bytes) -> None:
    with TestClient(create_app(bundle, frames=2, api_key="s3cret")) as client:
        post = lambda **headers: client.post("/v1/detect", files={"file": ("a.jpg", utk_jpg)}, headers=headers)  # noqa: E731
        assert post().status_code == 401 and "API key" in post().json()["detail"]
        assert post(authorization="Bearer wrong").status_code == 401
        assert post(authorization="Bearer s3cret").status_code == 200
        assert post(**{"x-api-key": "s3cret"}).status_code == 200
        assert client.get("/v1/model").status_code == 401 and client.get("/metrics").status_code == 401
        assert client.get("/v1/model", headers={"x-api-key": "s3cret"}).json()["service"]["api_key"] is True
        assert client.get("/healthz").status_code == 200  # liveness stays open
        assert 'code="401"' in client.get("/metrics", headers={"x-api-key": "s3cret"}).text


def test_serve_options_checked_before_loading(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setenv("REALFACE_API_KEY", "")
    for args, words in ((["--api-key", " "], "--api-key must not be empty"), (["--queue", "-1"], "--queue must be"),
                        (["--header-timeout", "0"], "--header-timeout must be positive")):  # fmt: skip
        assert main(["serve", "--model", "/nonexistent", *args]) == 2
        err = capsys.readouterr().err
        assert words in err and err.count("\n") == 1
