"""`realface serve`: the detector behind an HTTP API (FastAPI + uvicorn) and a small web page.

Endpoints:
- `GET /`: the web page (one self-contained file, `realface/web/index.html`).
- `GET /healthz`: `{"status": "ok"}` while the process answers.
- `GET /v1/model`: what `Bundle.info()` says (model card, threshold, band), without server paths, plus the
  service's limits.
- `POST /v1/detect`: one image or video as the multipart field `file`; `?heatmap=true` adds heatmaps.
- `GET /openapi.json`, `GET /docs`: FastAPI's schema and its Swagger page, whose scripts and styles come from
  the `fastapi-offline` package (under `/docs-assets`), so the page works offline; `GET /redoc` likewise.

`/v1/detect` answers what `realface detect --json` prints for one file, with `result` for `results`:
`{"model": {...}, "result": FileResult.to_dict()}`, with three changes so no server path leaks out:
`result.path` is the client's file name reduced to a safe base name; `heatmap` (per face) and `contact_sheet`
are always null; with `?heatmap=true`, `heatmap_png` (per face of an image) and `contact_sheet_png` (a video)
hold base64 PNG data instead (the overlays `detect --heatmap` writes, re-encoded from its JPEG files).

Status codes: 200 for every file that was read, including status "no_face": finding no face is an answer
about the file, not a failure of the request. 400: no multipart body, or no `file` field. 413: the upload, the
image's pixel count or the video's length is over the limit. 422: empty, corrupt, truncated or unsupported
content, or a video whose frames cannot be decoded. 503 with `Retry-After`: `max_jobs` jobs are already
admitted. Every error is JSON `{"detail": "one line"}`.

Concurrency: one model (and one face pipeline, whose dlib models are not thread-safe) serves all requests;
a job runs in a worker thread and holds a lock while it scans, so jobs scan one at a time and up to
`max_jobs` are admitted (receiving their upload, or waiting for the lock). A request beyond that is
refused at once with 503, never queued without bound.

Uploads are streamed into a fresh temporary folder under a name the server chooses (its suffix from the
bytes' magic number, else from the client's file name when that is a known media suffix), checked as they
arrive against the size limit, and removed when the request ends, whatever happened.
"""

from __future__ import annotations

import base64
import re
import socket
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from realface.bundle import Bundle
from realface.detect import FileResult, Scanner, sniff_suffix
from realface.errors import InputError, RealfaceError
from realface.faces.media import IMAGE_SUFFIXES, MEDIA_SUFFIXES, VIDEO_SUFFIXES, media_kind, probe_video

MIB = 1 << 20
MULTIPART_OVERHEAD = 64 * 1024  # bytes of multipart framing and small fields allowed beyond the file itself
SAFE_NAME_LENGTH = 120  # longest client file name echoed back, in characters
RAW_NAME = "upload.bin"  # the server's name for an upload until its type is known
DOCS_ASSETS = "/docs-assets"  # the packaged Swagger UI and ReDoc files behind /docs and /redoc


@dataclass(frozen=True)
class ServeLimits:
    """What one request may cost the service."""

    max_upload_mb: float = 50.0  # largest uploaded file, MiB (checked while it streams in)
    max_video_seconds: float = 300.0  # longest video accepted, seconds (from its packets, before decoding)
    max_image_megapixels: float = 50.0  # largest image accepted, in millions of pixels (from its header)
    max_jobs: int = 2  # requests admitted at once (scanning, or receiving/waiting); more get 503
    retry_after_s: int = 5  # the Retry-After header sent with a 503

    def __post_init__(self) -> None:
        if not self.max_upload_mb > 0:
            raise RealfaceError(f"--max-upload-mb must be positive, got {self.max_upload_mb}")
        if not self.max_video_seconds > 0:
            raise RealfaceError(f"--max-video-seconds must be positive, got {self.max_video_seconds}")
        if not self.max_image_megapixels > 0:
            raise RealfaceError(f"max_image_megapixels must be positive, got {self.max_image_megapixels}")
        if not 1 <= self.max_jobs <= 32:
            raise RealfaceError(f"--max-jobs must be within 1..32 (one model serves them in turn), got {self.max_jobs}")
        if self.retry_after_s < 1:
            raise RealfaceError(f"retry_after_s must be at least 1 second, got {self.retry_after_s}")

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * MIB)


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


def choose_suffix(head: bytes, client_name: str | None) -> str:
    """A suffix for the stored upload: from the bytes' magic number, else the client name's media suffix, else ''."""
    sniffed = sniff_suffix(head)
    if sniffed:
        return sniffed
    suffix = Path(safe_filename(client_name)).suffix.lower()
    return suffix if suffix in MEDIA_SUFFIXES else ""


def public_model_info(bundle: Bundle) -> dict[str, Any]:
    """`bundle.info()` with the server's folders reduced to their last component."""
    info = bundle.info()
    info["source"] = Path(info["source"]).name
    card = dict(info.get("card") or {})
    if isinstance(card.get("run"), str):
        card["run"] = Path(card["run"]).name
    info["card"] = card
    return info


def png_base64(path: Path) -> str:
    """The image at `path` re-encoded as PNG, as base64 text (what `heatmap_png` holds)."""
    import cv2

    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise RealfaceError("could not read back a heatmap")
    ok, data = cv2.imencode(".png", image)
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
        self.head = b""  # first bytes of the file, for its magic number
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
        if len(self.head) < 16:
            self.head += data[start : min(end, start + 16)]
        self._file.write(data[start:end])

    def on_part_end(self) -> None:
        self.close()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


async def receive_upload(request: Request, folder: Path, limit: int) -> tuple[Path, str | None, bytes]:
    """Stream the multipart field `file` into `folder`/RAW_NAME; returns (path, client file name, first bytes).

    Raises 400 for a body that is not multipart or has no `file` field, 413 as soon as the file passes `limit`.
    """
    from python_multipart.exceptions import MultipartParseError
    from python_multipart.multipart import MultipartParser, parse_options_header

    content_type, params = parse_options_header(request.headers.get("content-type", ""))
    if content_type != b"multipart/form-data" or not params.get(b"boundary"):
        raise _error(400, "send the image or video as multipart/form-data in a field named 'file'")
    too_large = _error(413, f"upload too large: the limit is {limit / MIB:g} MiB")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit + MULTIPART_OVERHEAD:
        raise too_large
    sink = _MultipartSink(folder / RAW_NAME, limit)
    parser = MultipartParser(params[b"boundary"], sink.callbacks())
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > limit + MULTIPART_OVERHEAD:
                raise _TooLarge
            parser.write(chunk)
        parser.finalize()
    except _TooLarge:
        raise too_large from None
    except MultipartParseError as err:
        raise _error(400, f"malformed multipart body: {err}") from None
    finally:
        sink.close()
    if not sink.found:
        raise _error(400, "no file: send the image or video in a multipart field named 'file'")
    return sink.dest, sink.filename, sink.head


async def drain(request: Request, limit: int) -> None:
    """Read and drop the request body (up to `limit` bytes), so a refused client can read its answer."""
    received = 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > limit:
            break


# ---------------------------------------------------------------------------------------------
# the work of one request


class DetectService:
    """One loaded model shared by all requests: admission, checks, scanning under a lock, encoding."""

    def __init__(self, bundle: Bundle, limits: ServeLimits, frames: int) -> None:
        if frames < 1:
            raise RealfaceError(f"--frames must be at least 1, got {frames}")
        self.bundle = bundle
        self.limits = limits
        self.frames = frames
        self.scanner = Scanner(bundle, frames=frames)
        self.model_info = public_model_info(bundle)
        self._slots = threading.BoundedSemaphore(limits.max_jobs)
        self._model_lock = threading.Lock()

    def try_admit(self) -> bool:
        """Take a job slot if one is free (never waits)."""
        return self._slots.acquire(blocking=False)

    def release(self) -> None:
        self._slots.release()

    def busy_error(self) -> HTTPException:
        n = self.limits.max_jobs
        return _error(
            503,
            f"busy: {n} job{'s' if n > 1 else ''} already running; retry in {self.limits.retry_after_s} s",
            headers={"Retry-After": str(self.limits.retry_after_s)},
        )

    def _check_image(self, path: Path) -> None:
        """413 for an image over the pixel limit, from its header; decoding problems are left to the scan."""
        import warnings

        from PIL import Image

        max_pixels = self.limits.max_image_megapixels * 1e6
        too_large = f"image too large: the limit is {self.limits.max_image_megapixels:g} megapixels"
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                with Image.open(path) as img:
                    w, h = img.size
        except Image.DecompressionBombError:
            raise _error(413, too_large) from None
        except Exception:  # unreadable: the scan reports it with its own message
            return
        if w * h > max_pixels:
            raise _error(413, f"image too large: {w}x{h} is over {self.limits.max_image_megapixels:g} megapixels")

    def _check_video(self, path: Path) -> None:
        """422 for a file that is not a readable video, 413 for one over the length limit (no decoding)."""
        try:
            info = probe_video(path)
            if info.count == 0:
                raise InputError("video has no frames")
            seconds = video_seconds(path, info.count, info.pts)
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

    def _scan(self, path: Path, heat_dir: Path | None) -> FileResult:
        scanner = self.scanner
        if heat_dir is not None:  # same model and face pipeline, writing overlays into the request's folder
            scanner = Scanner(self.bundle, frames=self.frames, heatmap_dir=heat_dir)
            scanner.pipeline = self.scanner.pipeline
        with self._model_lock:
            return scanner.scan(path, display_name=path.name)

    def run(self, raw: Path, client_name: str | None, head: bytes, heatmap: bool) -> dict[str, Any]:
        """Check, scan and encode one upload saved at `raw` (in the request's temporary folder); blocking."""
        display = safe_filename(client_name)
        if raw.stat().st_size == 0:
            raise _error(422, "empty file (0 bytes)")
        suffix = choose_suffix(head, client_name)
        kind = media_kind(Path("upload" + suffix))
        if kind == "unsupported":
            shown = suffix or Path(display).suffix or "(unknown)"
            raise _error(
                422,
                f"unsupported file type {shown}: send an image ({', '.join(sorted(IMAGE_SUFFIXES))}) "
                f"or a video ({', '.join(sorted(VIDEO_SUFFIXES))})",
            )
        path = raw.rename(raw.with_name("upload" + suffix))
        if kind == "image":
            self._check_image(path)
        else:
            self._check_video(path)
        heat_dir = path.parent / "heat" if heatmap else None
        try:
            result = self._scan(path, heat_dir)
        except RealfaceError as err:
            raise _error(422, str(err)) from None
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
                png_base64(Path(face.heatmap)) if heatmap and face.heatmap and result.kind == "image" else None
            )
        out["contact_sheet"] = None
        out["contact_sheet_png"] = png_base64(Path(result.contact_sheet)) if heatmap and result.contact_sheet else None
        return out


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
    "`no_face`. Errors: 400 no `file` field, 413 over a limit, 422 unreadable or unsupported content, "
    "503 busy (see Retry-After); all as `{detail}`."
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


def create_app(bundle: Bundle, *, limits: ServeLimits | None = None, frames: int = 32) -> FastAPI:
    """The service for one loaded model (`load_bundle(...)`), which all requests share.

    frames: frames sampled per video. `app.state.service` is the `DetectService` doing the work.
    """
    from realface import __version__

    limits = limits or ServeLimits()
    service = DetectService(bundle, limits, frames)
    page = _page()
    app = FastAPI(
        title="realface",
        version=__version__,
        description="Is this face real or forged? Upload an image or a video to `/v1/detect`.",
        docs_url=None,  # both pages are served below from packaged files: FastAPI's defaults load them from a CDN
        redoc_url=None,
    )
    app.state.service = service
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

    @app.get("/healthz", summary="liveness")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/model", summary="the model: card, threshold, confidence band; and the service's limits")
    async def model() -> dict[str, Any]:
        return {**service.model_info, "service": {**asdict(limits), "frames": frames}}

    @app.post(
        "/v1/detect",
        summary="real or fake? one image or video in the multipart field 'file'",
        description=DETECT_DESCRIPTION,
        openapi_extra=_UPLOAD_BODY,
        responses={code: _ERROR_SCHEMA for code in (400, 413, 422, 503)},
    )
    async def detect(
        request: Request, heatmap: bool = Query(False, description="add heatmaps as base64 PNG")
    ) -> dict[str, Any]:
        if not service.try_admit():
            await drain(request, limits.max_upload_bytes + MULTIPART_OVERHEAD)
            raise service.busy_error()
        try:
            with tempfile.TemporaryDirectory(prefix="realface-serve-") as tmp:
                raw, client_name, head = await receive_upload(request, Path(tmp), limits.max_upload_bytes)
                return await run_in_threadpool(service.run, raw, client_name, head, heatmap)
        finally:
            service.release()

    return app


def run_server(
    bundle: Bundle,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    limits: ServeLimits | None = None,
    frames: int = 32,
    log_level: str = "info",
) -> None:
    """Serve `create_app(bundle, ...)` with uvicorn in this process (one process: one model in memory)."""
    import uvicorn

    app = create_app(bundle, limits=limits, frames=frames)
    uvicorn.run(app, host=host, port=port, log_level=log_level, workers=1)


@contextmanager
def serve_in_background(app: FastAPI, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Run `app` with uvicorn in a daemon thread (tests, benchmarks); yields its base URL, stops it on exit.

    port 0 picks a free port.
    """
    import time

    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
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
