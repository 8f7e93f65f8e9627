"""`realface serve`: the detector behind an HTTP API (FastAPI + uvicorn) and a small web page.

Endpoints:
- `GET /`: the web page (one self-contained file, `realface/web/index.html`).
- `GET /healthz`: `{"status": "ok", ...}` while the process answers, with the jobs running, the requests
  queued for a job and the uploads being received.
- `GET /metrics`: request counts by status code and latency quantiles of `/v1/detect`, queue gauges, in the
  Prometheus text format.
- `GET /v1/model`: what `Model.info()` says (model card, threshold, band), without server paths, plus the
  service's limits.
- `POST /v1/detect`: one image or video as the multipart field `file`; `?heatmap=true` adds heatmaps.
- `GET /openapi.json`, `GET /docs`: FastAPI's schema and its Swagger page, whose scripts and styles come from
  the `fastapi-offline` package (under `/docs-assets`), so the page works offline; `GET /redoc` likewise.

`/v1/detect` answers what `realface detect --json` prints for one file, with `result` for `results`:
`{"model": {...}, "result": FileResult.to_dict()}`, with three changes so no server path leaks out:
`result.path` is the client's file name reduced to a safe base name; `heatmap` (per face) and `contact_sheet`
are always null; with `?heatmap=true`, `heatmap_png` (per face of an image) and `contact_sheet_png` (a video)
hold base64 PNG data instead (the overlays `detect --heatmap` writes, encoded from the scan's arrays).

Status codes: 200 for every file that was read, including status "no_face": finding no face is an answer
about the file, not a failure of the request. 400: no multipart body, or no `file` field. 401: an API key is
set and the request does not carry it. 408: the upload arrived too slowly (see below). 413: the upload, an
image's or video frame's pixel count, the memory decoding it needs, the video's length, or the processing
time is over its limit. 422: empty, corrupt, truncated or unsupported content, or a video whose frames cannot
be decoded. 503 with `Retry-After`: the queue is full, or a request waited in it longer than `queue_wait_s`.
Every error is JSON `{"detail": "one line"}`.

Concurrency: one model (and one face pipeline, whose dlib models are not thread-safe) serves all requests. A
request takes a place on arrival (at most `max_jobs + queue_length` places; beyond, 503 at once), receives its
upload, then waits up to `queue_wait_s` for one of `max_jobs` job slots (else 503); a job checks its file and
scans it in a worker thread, holding a lock while the model runs. Places and slots are given back on every
path: success, error, timeout, client disconnect.

Time limits, so that no client holds a place by being slow: a request's headers must arrive within
`header_timeout_s` of the connection (or of its previous response); its upload may pause at most
`upload_idle_s` and must average `min_upload_kib_s` after a grace of `upload_idle_s` (else 408, connection
closed); a job may scan for at most `max_processing_s` (checked between video frames; else 413).

Uploads are streamed into a fresh temporary folder under a name the server chooses (its suffix from the
bytes' content, `realface.faces.sniff`, as `realface detect` reads files), checked as they arrive against
the size limit, and removed when the request ends, whatever happened.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import re
import socket
import tempfile
import threading
import time
from collections import Counter, deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from realface.detect import FileResult, Scanner
from realface.errors import InputError, RealfaceError
from realface.faces.media import probe_video
from realface.faces.sniff import HEAD_BYTES, sniff, unsupported_message
from realface.limits import API_KEY_ENV, MIB, DecodeLimits, LimitError, ServeLimits  # noqa: F401 (re-exported)
from realface.model import Model

MULTIPART_OVERHEAD = 64 * 1024  # bytes of multipart framing and small fields allowed beyond the file itself
SAFE_NAME_LENGTH = 120  # longest client file name echoed back, in characters
RAW_NAME = "upload.bin"  # the server's name for an upload until its type is known
DOCS_ASSETS = "/docs-assets"  # the packaged Swagger UI and ReDoc files behind /docs and /redoc
LATENCY_WINDOW = 1024  # latencies kept for the quantiles on /metrics (the most recent requests)
DISCONNECTED = 499  # status recorded for a request whose client went away (nginx's convention; never sent)


# ---------------------------------------------------------------------------------------------
# small pure helpers


def safe_filename(name: str | None) -> str:
    """The client's file name as a bare base name for display: no folders, no control characters.

    "../../etc/passwd.jpg" -> "passwd.jpg"; an empty or all-dots name -> "upload". Never used on disk.
    """
    base = re.split(r"[\\/]", name or "")[-1]
    base = "".join(ch for ch in base if ch.isprintable()).strip()
    if set(base) <= {"."}:  # "", ".", ".."
        base = ""
    if len(base) > SAFE_NAME_LENGTH:
        suffix = Path(base).suffix[:10]
        base = base[: SAFE_NAME_LENGTH - len(suffix)] + suffix
    return base or "upload"


def public_model_info(model: Model) -> dict[str, Any]:
    """`model.info()` with the server's folders reduced to their last component."""
    info = model.info()
    info["source"] = Path(info["source"]).name
    card = dict(info.get("card") or {})
    if isinstance(card.get("run"), str):
        card["run"] = Path(card["run"]).name
    info["card"] = card
    return info


def png_base64(rgb: np.ndarray) -> str:
    """An RGB image (H, W, 3) uint8 as PNG, in base64 text (what `heatmap_png` holds)."""
    import cv2

    ok, data = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise RealfaceError("could not encode a heatmap as PNG")
    return base64.b64encode(data.tobytes()).decode("ascii")


def video_seconds(path: Path, count: int, pts: tuple[int, ...] | None) -> float | None:
    """Length of the first video stream in seconds: from its packet timestamps, else its frame rate."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate
        if pts and len(pts) > 1 and stream.time_base:
            frame = 1.0 / float(rate) if rate else 0.0
            return float((pts[-1] - pts[0]) * stream.time_base) + frame
        if rate:
            return count / float(rate)
        if container.duration:
            return container.duration / 1_000_000
    return None


def _error(status: int, detail: str, headers: dict[str, str] | None = None) -> HTTPException:
    return HTTPException(status_code=status, detail=" ".join(detail.split()), headers=headers)


@dataclass(frozen=True)
class UploadClock:
    """How long an upload may wait for its next chunk: at most `idle_s` after the last one, and never so
    long that its average rate since `start`, after a grace of `idle_s`, falls below `min_rate` bytes/s."""

    start: float  # when the upload began, in the clock's seconds
    idle_s: float
    min_rate: float  # bytes per second

    def wait_s(self, received: int, now: float) -> float:
        """Seconds the next chunk may take (<= 0: too late already), `received` bytes in at time `now`."""
        by_rate = self.start + self.idle_s + received / self.min_rate
        return min(now + self.idle_s, by_rate) - now


def quantile(values: list[float], q: float) -> float:
    """The q-quantile of `values` (linear interpolation between order statistics, numpy's default)."""
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


class Metrics:
    """Request counts by status code and latencies of `/v1/detect`, rendered in the Prometheus text format."""

    QUANTILES = (0.5, 0.9, 0.95, 0.99)

    def __init__(self, window: int = LATENCY_WINDOW) -> None:
        self.counts: Counter[int] = Counter()
        self.latencies: deque[float] = deque(maxlen=window)  # seconds, the most recent requests
        self.total_seconds = 0.0
        self._lock = threading.Lock()

    def observe(self, status: int, seconds: float) -> None:
        with self._lock:
            self.counts[status] += 1
            self.latencies.append(seconds)
            self.total_seconds += seconds

    def render(self, gauges: dict[str, tuple[str, float]]) -> str:
        """The text format: counters, a latency summary, and `gauges` ({name: (help, value)})."""
        with self._lock:
            counts, latencies, total = dict(self.counts), list(self.latencies), self.total_seconds
        lines = [
            "# HELP realface_requests_total Requests to /v1/detect, by HTTP status code (499: client went away).",
            "# TYPE realface_requests_total counter",
            *(f'realface_requests_total{{code="{code}"}} {n}' for code, n in sorted(counts.items())),
            f"# HELP realface_request_seconds Time from request to response of /v1/detect; quantiles over the "
            f"last {self.latencies.maxlen} requests.",
            "# TYPE realface_request_seconds summary",
        ]
        if latencies:
            lines += [f'realface_request_seconds{{quantile="{q:g}"}} {quantile(latencies, q):.6f}' for q in self.QUANTILES]
        lines += [f"realface_request_seconds_sum {total:.6f}", f"realface_request_seconds_count {sum(counts.values())}"]
        for name, (text, value) in gauges.items():
            lines += [f"# HELP {name} {text}", f"# TYPE {name} gauge", f"{name} {value:g}"]
        return "\n".join(lines) + "\n"


class JobSlots:
    """`slots` job slots handed out in arrival order; a waiter gives up after a timeout.

    Used from the event loop's thread only (no lock needed); a waiter's future belongs to the loop it waits in.
    """

    def __init__(self, slots: int) -> None:
        self.free = slots
        self.running = 0
        self._waiters: deque[asyncio.Future] = deque()

    @property
    def waiting(self) -> int:
        return sum(not f.done() for f in self._waiters)

    async def acquire(self, timeout: float) -> bool:
        """Take a slot, waiting at most `timeout` seconds; False when none came."""
        if self.free > 0 and not self.waiting:
            self.free -= 1
            self.running += 1
            return True
        future = asyncio.get_running_loop().create_future()
        self._waiters.append(future)
        try:
            await asyncio.wait_for(asyncio.shield(future), timeout)
        except asyncio.TimeoutError:
            if not future.done():
                self._give_up(future)
                return False
            # handed a slot just as the wait ended: keep it
        except asyncio.CancelledError:
            if future.done():  # handed a slot nobody will use: pass it on
                self.running += 1
                self.release()
            else:
                self._give_up(future)
            raise
        self.running += 1
        return True

    def _give_up(self, future: asyncio.Future) -> None:
        future.cancel()
        self._waiters.remove(future)

    def release(self) -> None:
        """Give a slot back: to the longest waiter, else to the pool."""
        self.running -= 1
        while self._waiters:
            future = self._waiters.popleft()
            if not future.done():
                future.set_result(None)
                return
        self.free += 1


# ---------------------------------------------------------------------------------------------
# receiving an upload


class _TooLarge(Exception):
    pass


class _MultipartSink:
    """python-multipart callbacks that stream the first part named `file` into `dest`, counting its bytes."""

    def __init__(self, dest: Path, limit: int) -> None:
        self.dest = dest
        self.limit = limit
        self.size = 0
        self.found = False
        self.filename: str | None = None
        self.head = b""  # first bytes of the file, for what it holds (sniff)
        self._field = b""
        self._value = b""
        self._disposition = b""
        self._file = None

    def callbacks(self) -> dict[str, Any]:
        return {
            "on_part_begin": self.on_part_begin,
            "on_header_field": self.on_header_field,
            "on_header_value": self.on_header_value,
            "on_header_end": self.on_header_end,
            "on_headers_finished": self.on_headers_finished,
            "on_part_data": self.on_part_data,
            "on_part_end": self.on_part_end,
        }

    def on_part_begin(self) -> None:
        self._disposition = b""

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def on_header_end(self) -> None:
        if self._field.strip().lower() == b"content-disposition":
            self._disposition = self._value
        self._field = self._value = b""

    def on_headers_finished(self) -> None:
        from python_multipart.multipart import parse_options_header

        _, options = parse_options_header(self._disposition)
        if options.get(b"name") == b"file" and not self.found:
            self.found = True
            self.filename = options.get(b"filename", b"").decode("utf-8", "replace")
            self._file = self.dest.open("wb")

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._file is None:
            return
        self.size += end - start
        if self.size > self.limit:
            raise _TooLarge
        if len(self.head) < HEAD_BYTES:
            self.head += data[start : min(end, start + HEAD_BYTES - len(self.head))]
        self._file.write(data[start:end])

    def on_part_end(self) -> None:
        self.close()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class _TooSlow(Exception):
    pass


class _Disconnected(Exception):
    pass


async def _chunks(request: Request, limits: ServeLimits) -> Any:
    """The body of `request` chunk by chunk, each within the time its UploadClock allows (else _TooSlow);
    _Disconnected when the client goes away."""
    loop = asyncio.get_running_loop()
    clock = UploadClock(loop.time(), limits.upload_idle_s, limits.min_upload_kib_s * 1024)
    stream = request.stream().__aiter__()
    received = 0
    while True:
        wait = clock.wait_s(received, loop.time())
        if wait <= 0:
            raise _TooSlow
        try:
            chunk = await asyncio.wait_for(stream.__anext__(), wait)
        except StopAsyncIteration:
            return
        except asyncio.TimeoutError:
            raise _TooSlow from None
        except ClientDisconnect:
            raise _Disconnected from None
        received += len(chunk)
        yield chunk


def _too_slow(limits: ServeLimits) -> HTTPException:
    return _error(
        408,
        f"upload too slow: it may pause at most {limits.upload_idle_s:g} s and must average "
        f"{limits.min_upload_kib_s:g} KiB/s",
        headers={"Connection": "close"},
    )


async def receive_upload(request: Request, folder: Path, limits: ServeLimits) -> tuple[Path, str | None, bytes]:
    """Stream the multipart field `file` into `folder`/RAW_NAME; returns (path, client file name, first bytes).

    Raises 400 for a body that is not multipart or has no `file` field, 413 as soon as the file passes the
    size limit, 408 when it arrives too slowly, _Disconnected when the client goes away.
    """
    from python_multipart.exceptions import MultipartParseError
    from python_multipart.multipart import MultipartParser, parse_options_header

    limit = limits.max_upload_bytes
    content_type, params = parse_options_header(request.headers.get("content-type", ""))
    if content_type != b"multipart/form-data" or not params.get(b"boundary"):
        raise _error(400, "send the image or video as multipart/form-data in a field named 'file'")
    too_large = _error(413, f"upload too large: the limit is {limit / MIB:g} MiB", headers={"Connection": "close"})
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit + MULTIPART_OVERHEAD:
        raise too_large
    sink = _MultipartSink(folder / RAW_NAME, limit)
    parser = MultipartParser(params[b"boundary"], sink.callbacks())
    received = 0
    try:
        async for chunk in _chunks(request, limits):
            received += len(chunk)
            if received > limit + MULTIPART_OVERHEAD:
                raise _TooLarge
            parser.write(chunk)
        parser.finalize()
    except _TooLarge:
        raise too_large from None
    except _TooSlow:
        raise _too_slow(limits) from None
    except MultipartParseError as err:
        raise _error(400, f"malformed multipart body: {err}") from None
    finally:
        sink.close()
    if not sink.found:
        raise _error(400, "no file: send the image or video in a multipart field named 'file'")
    return sink.dest, sink.filename, sink.head


async def drain(request: Request, limits: ServeLimits) -> None:
    """Read and drop the request body (within the upload's size and time limits), so that a refused client
    can read its answer; stops quietly at a limit or a disconnect."""
    received = 0
    try:
        async for chunk in _chunks(request, limits):
            received += len(chunk)
            if received > limits.max_upload_bytes + MULTIPART_OVERHEAD:
                return
    except (_TooSlow, _Disconnected):
        return


# ---------------------------------------------------------------------------------------------
# the work of one request


class DetectService:
    """One loaded model shared by all requests: admission, the queue, checks, scanning under a lock, encoding."""

    def __init__(self, model: Model, limits: ServeLimits, frames: int, api_key: str | None = None) -> None:
        if frames < 1:
            raise RealfaceError(f"--frames must be at least 1, got {frames}")
        if api_key is not None and not api_key.strip():
            raise RealfaceError("the API key must not be empty")
        self.model = model
        self.limits = limits
        self.frames = frames
        self.scanner = Scanner(model, frames=frames)
        self.model_info = public_model_info(model)
        self.metrics = Metrics()
        self.slots = JobSlots(limits.max_jobs)
        self.places = 0  # requests admitted and not finished (receiving, queued or running); event loop only
        self._api_key = api_key.encode() if api_key else None
        self._model_lock = threading.Lock()

    # -- admission (event loop thread) ---------------------------------------------------------

    def authorized(self, request: Request) -> bool:
        """True without an API key; else the request must carry it (`Authorization: Bearer KEY` or `X-API-Key`)."""
        if self._api_key is None:
            return True
        given = request.headers.get("x-api-key", "")
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer":
            given = given or token.strip()
        return hmac.compare_digest(given.encode(), self._api_key)

    def try_admit(self) -> bool:
        """Take a place if one is free (never waits): max_jobs + queue_length requests at once."""
        if self.places >= self.limits.max_jobs + self.limits.queue_length:
            return False
        self.places += 1
        return True

    def leave(self) -> None:
        self.places -= 1

    def busy_error(self, why: str) -> HTTPException:
        return _error(
            503,
            f"busy: {why}; retry in {self.limits.retry_after_s} s",
            headers={"Retry-After": str(self.limits.retry_after_s)},
        )

    def load(self) -> dict[str, int]:
        """What /healthz reports: jobs running, requests queued for a job, uploads being received."""
        running, queued = self.slots.running, self.slots.waiting
        return {"running": running, "queued": queued, "receiving": max(0, self.places - running - queued)}

    # -- one job (worker thread) ---------------------------------------------------------------

    def _check_video(self, path: Path, limits: DecodeLimits) -> None:
        """413 for a video over the frame size or length limit, 422 for one that is not readable (no decoding)."""
        try:
            info = probe_video(path, limits)
            if info.count == 0:
                raise InputError("video has no frames")
            seconds = video_seconds(path, info.count, info.pts)
        except LimitError as err:
            raise _error(413, str(err)) from None
        except InputError as err:
            raise _error(422, str(err)) from None
        except Exception as err:  # PyAV errors past the probe: the file is not usable
            raise _error(422, f"not a readable video: {type(err).__name__}") from None
        if seconds is None:
            raise _error(422, "cannot tell the video's length (no timestamps and no frame rate)")
        if seconds > self.limits.max_video_seconds:
            raise _error(
                413, f"video too long: {seconds:.1f} s is over the limit of {self.limits.max_video_seconds:g} s"
            )

    def _scan(self, path: Path, content: Any, heatmap: bool) -> FileResult:
        scanner = self.scanner
        if heatmap:  # same model and face pipeline, drawing overlays in memory
            scanner = Scanner(self.model, frames=self.frames, heatmaps=True)
            scanner.pipeline = self.scanner.pipeline
        with self._model_lock:
            limits = self.limits.decode_limits()  # the processing time counts from here
            return scanner.scan_content(path, path.name, content, limits)

    def run(self, raw: Path, client_name: str | None, head: bytes, heatmap: bool) -> dict[str, Any]:
        """Check, scan and encode one upload saved at `raw` (in the request's temporary folder); blocking."""
        display = safe_filename(client_name)
        if raw.stat().st_size == 0:
            raise _error(422, "empty file (0 bytes)")
        content = sniff(head, display)
        if content.kind == "unsupported":
            raise _error(422, unsupported_message(content))
        path = raw.rename(raw.with_name("upload" + content.suffix))
        if content.kind == "video":
            self._check_video(path, self.limits.decode_limits())
        try:
            result = self._scan(path, content, heatmap)
        except LimitError as err:
            raise _error(413, str(err)) from None
        except RealfaceError as err:
            raise _error(422, str(err).replace(str(path.parent), "upload")) from None
        if result.status == "error":
            message = result.message.replace(str(path.parent), "upload")
            raise _error(422, message or "the file could not be read")
        return {"model": self.model_info, "result": self._public_result(result, display, heatmap)}

    @staticmethod
    def _public_result(result: FileResult, display: str, heatmap: bool) -> dict[str, Any]:
        """FileResult.to_dict() with the client's name as `path` and heatmaps inline instead of server paths."""
        out = result.to_dict()
        out["path"] = display
        for face, face_out in zip(result.faces, out["faces"]):
            face_out["heatmap"] = None
            face_out["heatmap_png"] = (
                png_base64(face.overlay) if heatmap and face.overlay is not None and result.kind == "image" else None
            )
        out["contact_sheet"] = None
        out["contact_sheet_png"] = png_base64(result.sheet) if heatmap and result.sheet is not None else None
        return out

    async def handle(self, request: Request, heatmap: bool) -> dict[str, Any] | Response:
        """One `/v1/detect` request through admission, upload, queue and job; places and slots always given back."""
        if not self.authorized(request):
            raise _error(401, "missing or wrong API key: send it as 'Authorization: Bearer KEY' or 'X-API-Key: KEY'",
                         headers={"WWW-Authenticate": "Bearer", "Connection": "close"})  # fmt: skip
        if not self.try_admit():
            await drain(request, self.limits)
            raise self.busy_error(f"{self.limits.max_jobs} jobs running and {self.limits.queue_length} waiting")
        try:
            with tempfile.TemporaryDirectory(prefix="realface-serve-") as tmp:
                try:
                    raw, client_name, head = await receive_upload(request, Path(tmp), self.limits)
                except _Disconnected:
                    return Response(status_code=DISCONNECTED)  # nobody reads it; counted on /metrics
                if not await self.slots.acquire(self.limits.queue_wait_s):
                    raise self.busy_error(f"no job slot came free within {self.limits.queue_wait_s:g} s")
                try:
                    if await request.is_disconnected():  # gave up while queued: its job slot goes to the next
                        return Response(status_code=DISCONNECTED)
                    return await run_in_threadpool(self.run, raw, client_name, head, heatmap)
                finally:
                    self.slots.release()
        finally:
            self.leave()


class MeteredApp:
    """ASGI middleware: the status and latency of every `/v1/detect` request into `metrics`."""

    def __init__(self, app: Any, metrics: Metrics, path: str = "/v1/detect") -> None:
        self.app = app
        self.metrics = metrics
        self.path = path

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] != self.path:
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_status(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            self.metrics.observe(status, time.perf_counter() - start)


# ---------------------------------------------------------------------------------------------
# the app


def _page() -> str:
    return (resources.files("realface") / "web" / "index.html").read_text(encoding="utf-8")


# The page loads nothing from elsewhere: the service must work offline.
PAGE_CSP = (
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src 'self' data: blob:; "
    "media-src blob:; connect-src 'self'; base-uri 'none'; form-action 'none'"
)

DETECT_DESCRIPTION = (
    "Returns `{model, result}`: `result` is what `realface detect --json` gives for one file, with `path` the "
    "client's base file name, `heatmap`/`contact_sheet` null, and with `?heatmap=true` base64 PNG overlays in "
    "`faces[].heatmap_png` (images) and `contact_sheet_png` (videos). A file with no face is a 200 with status "
    "`no_face`. Errors: 400 no `file` field, 401 API key missing or wrong (when the service has one), 408 upload "
    "too slow, 413 over a limit, 422 unreadable or unsupported content, 503 busy (queue full or waited too long; "
    "see Retry-After); all as `{detail}`."
)

_ERROR_SCHEMA = {"content": {"application/json": {"example": {"detail": "one line saying what went wrong"}}}}

_UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {"file": {"type": "string", "format": "binary", "description": "image or video"}},
                }
            }
        },
    }
}


def create_app(
    model: Model, *, limits: ServeLimits | None = None, frames: int = 32, api_key: str | None = None
) -> FastAPI:
    """The service for one loaded model (`realface.model.load_model(...)`), which all requests share.

    frames: frames sampled per video; api_key: required on /v1/* and /metrics when given.
    `app.state.service` is the `DetectService` doing the work.
    """
    from realface import __version__

    limits = limits or ServeLimits()
    service = DetectService(model, limits, frames, api_key)
    page = _page()
    app = FastAPI(
        title="realface",
        version=__version__,
        description="Is this face real or forged? Upload an image or a video to `/v1/detect`.",
        docs_url=None,  # both pages are served below from packaged files: FastAPI's defaults load them from a CDN
        redoc_url=None,
    )
    app.state.service = service
    app.add_middleware(MeteredApp, metrics=service.metrics)
    app.mount(DOCS_ASSETS, StaticFiles(directory=resources.files("fastapi_offline") / "static"), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url, title="realface API", swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css", swagger_favicon_url=f"{DOCS_ASSETS}/favicon.png",
        )  # fmt: skip

    @app.get("/redoc", include_in_schema=False)
    async def redoc() -> HTMLResponse:
        return get_redoc_html(
            openapi_url=app.openapi_url, title="realface API", redoc_js_url=f"{DOCS_ASSETS}/redoc.standalone.js",
            redoc_favicon_url=f"{DOCS_ASSETS}/favicon.png", with_google_fonts=False,
        )  # fmt: skip

    @app.exception_handler(RequestValidationError)
    async def bad_parameter(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(part) for part in first.get("loc", ()))
        return JSONResponse({"detail": f"bad request parameter {where}: {first.get('msg', 'invalid')}"}, 422)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        # A bug, not bad input: uvicorn logs the traceback; the client gets one line.
        return JSONResponse({"detail": f"internal error: {type(exc).__name__} (see the server log)"}, 500)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page, headers={"Content-Security-Policy": PAGE_CSP})

    def require_key(request: Request) -> None:
        if not service.authorized(request):
            raise _error(401, "missing or wrong API key: send it as 'Authorization: Bearer KEY' or 'X-API-Key: KEY'",
                         headers={"WWW-Authenticate": "Bearer"})  # fmt: skip

    @app.get("/healthz", summary="liveness, and how loaded the service is")
    async def healthz() -> dict[str, Any]:
        load = service.load()
        return {"status": "ok", "queue_depth": load["queued"], "jobs_running": load["running"],
                "uploads_receiving": load["receiving"], "max_jobs": limits.max_jobs,
                "queue_length": limits.queue_length}  # fmt: skip

    @app.get("/metrics", summary="request counts and latency of /v1/detect (Prometheus text format)")
    async def metrics(request: Request) -> PlainTextResponse:
        require_key(request)
        load = service.load()
        gauges = {
            "realface_queue_depth": ("Requests whose upload is in, waiting for a job slot.", load["queued"]),
            "realface_jobs_running": ("Jobs checking or scanning an upload.", load["running"]),
            "realface_uploads_receiving": ("Admitted requests still receiving their upload.", load["receiving"]),
            "realface_max_jobs": ("Job slots.", limits.max_jobs),
            "realface_queue_length": ("Places beyond the job slots; past them, 503.", limits.queue_length),
        }
        return PlainTextResponse(service.metrics.render(gauges), media_type="text/plain; version=0.0.4")

    @app.get("/v1/model", summary="the model: card, threshold, confidence band; and the service's limits")
    async def model(request: Request) -> dict[str, Any]:
        require_key(request)
        return {**service.model_info, "service": {**asdict(limits), "frames": frames, "api_key": api_key is not None}}

    @app.post(
        "/v1/detect",
        summary="real or fake? one image or video in the multipart field 'file'",
        description=DETECT_DESCRIPTION,
        openapi_extra=_UPLOAD_BODY,
        responses={code: _ERROR_SCHEMA for code in (400, 401, 408, 413, 422, 503)},
    )
    async def detect(
        request: Request, heatmap: bool = Query(False, description="add heatmaps as base64 PNG")
    ) -> Any:
        return await service.handle(request, heatmap)

    return app


class _HeaderTimeoutProtocol:
    """Mixed into uvicorn's h11 protocol: a connection whose request headers are not all in within
    `header_timeout_s` of its start, or of its previous response, is closed (no slow-header client holds it)."""

    header_timeout_s = 10.0

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        self._arm_header_timer()

    def _arm_header_timer(self) -> None:
        self._headers_of = self.cycle  # headers are complete once uvicorn starts another request cycle
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._on_header_timeout)

    def _cancel_header_timer(self) -> None:
        timer = getattr(self, "_header_timer", None)
        if timer is not None:
            timer.cancel()
            self._header_timer = None

    def _on_header_timeout(self) -> None:
        self._header_timer = None
        if self.cycle is self._headers_of and not self.transport.is_closing():
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)  # type: ignore[misc]
        if self.cycle is not self._headers_of:
            self._cancel_header_timer()

    def on_response_complete(self) -> None:
        super().on_response_complete()  # type: ignore[misc]
        if not self.transport.is_closing() and getattr(self, "_header_timer", None) is None:
            self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)  # type: ignore[misc]


def uvicorn_config(app: FastAPI, **options: Any) -> Any:
    """uvicorn's config for `app`: h11 with the service's header timeout, one worker; `options` passed on."""
    import uvicorn
    from uvicorn.protocols.http.h11_impl import H11Protocol

    seconds = app.state.service.limits.header_timeout_s
    protocol = type("RealfaceH11Protocol", (_HeaderTimeoutProtocol, H11Protocol), {"header_timeout_s": seconds})
    return uvicorn.Config(app, http=protocol, workers=1, **options)


def run_server(app: FastAPI, *, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info") -> None:
    """Serve `app` (`create_app(...)`) with uvicorn in this process (one process: one model in memory)."""
    import uvicorn

    uvicorn.Server(uvicorn_config(app, host=host, port=port, log_level=log_level)).run()


@contextmanager
def serve_in_background(app: FastAPI, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Run `app` with uvicorn in a daemon thread (tests, benchmarks); yields its base URL, stops it on exit.

    port 0 picks a free port.
    """
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    server = uvicorn.Server(uvicorn_config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True, name="realface-serve")
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RealfaceError("the server did not start")
            time.sleep(0.02)
        yield f"http://{host}:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()
