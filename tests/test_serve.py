"""`realface serve`: the HTTP API with FastAPI's test client, on real faces, every bad input, the limits,
temporary files, client file names, and a bounded load test on loopback with uvicorn."""

from __future__ import annotations

import base64
import io
import json
import struct
import time
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from realface.model import Model, load_model
from realface.detect import Scanner
from realface.errors import RealfaceError
from realface.faces.media import read_image
from realface.serve import ServeLimits, create_app, public_model_info, safe_filename, serve_in_background

VERDICTS = {"real", "fake", "uncertain"}
FILE_FIELDS = {
    "path": str, "kind": str, "status": str, "message": str, "p_fake": float, "confidence": float, "verdict": str,
    "faces": list, "frames_sampled": int, "frames_without_face": list, "top_frames": list,
}  # fmt: skip
FACE_FIELDS = {"frame": int, "face": int, "bbox": list, "p_fake": float, "confidence": float, "verdict": str}


# -- inputs ----------------------------------------------------------------------------------------


def jpeg(rgb: np.ndarray, quality: int = 90) -> bytes:
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return data.tobytes()


def png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares width x height RGB pixels and holds no image data (a decompression bomb's header)."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    header = chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))  # 8-bit RGB
    return b"\x89PNG\r\n\x1a\n" + header + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    from skimage import data

    return data.astronaut()  # (512, 512, 3) uint8, one real face


@pytest.fixture(scope="module")
def astronaut_jpg(astronaut: np.ndarray) -> bytes:
    return jpeg(astronaut)


@pytest.fixture(scope="module")
def utk_jpg(shared_data: Path) -> bytes:
    return sorted((shared_data / "utkface" / "images").glob("*.jpg"))[0].read_bytes()


@pytest.fixture(scope="module")
def video_519(shared_data: Path) -> Path:
    return shared_data / "ffpp-videos" / "original" / "519.mp4"  # 640x480, 751 frames, 30 s


@pytest.fixture(scope="module")
def bundle(tiny_model: Path) -> Model:
    return load_model(tiny_model, maps=True)


@pytest.fixture(scope="module")
def client(bundle: Model) -> Iterator[TestClient]:
    with TestClient(create_app(bundle, frames=2)) as c:
        yield c


def post(client: TestClient, name: str, data: bytes, heatmap: bool = False, mime: str = "application/octet-stream"):
    return client.post(f"/v1/detect?heatmap={str(heatmap).lower()}", files={"file": (name, data, mime)})


def decode_png(text: str) -> np.ndarray:
    raw = base64.b64decode(text, validate=True)
    assert raw.startswith(b"\x89PNG\r\n\x1a\n")
    image = cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None
    return image[..., ::-1]  # RGB


def assert_one_line_error(response: httpx.Response, status: int, words: str) -> None:
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    assert isinstance(detail, str) and detail and "\n" not in detail
    assert words in detail.lower(), detail
    assert "realface-serve-" not in detail and "/tmp" not in detail  # no server path


def check_schema(body: dict) -> dict:
    assert set(body) == {"model", "result"}
    assert body["model"]["decision"]["threshold"]["value"] == 0.5
    result = body["result"]
    for key, kind in FILE_FIELDS.items():
        if result["status"] == "ok" or key not in ("p_fake", "confidence", "verdict"):
            assert isinstance(result[key], kind), key
    assert result["contact_sheet"] is None  # server paths are never returned
    if result["status"] == "ok":
        assert result["verdict"] in VERDICTS and 0.0 <= result["p_fake"] <= 1.0 and 0.0 <= result["confidence"] <= 1.0
        assert result["faces"]
    for face in result["faces"]:
        for key, kind in FACE_FIELDS.items():
            assert isinstance(face[key], kind), key
        assert len(face["bbox"]) == 4 and all(isinstance(v, float) for v in face["bbox"])
        assert face["verdict"] in VERDICTS
        assert face["heatmap"] is None
    return result


# -- pure parts ------------------------------------------------------------------------------------


def test_limits_are_checked() -> None:
    assert ServeLimits(max_upload_mb=1).max_upload_bytes == 1 << 20
    for bad in ({"max_jobs": 0}, {"max_upload_mb": 0}, {"max_video_seconds": -1}, {"max_jobs": 100}):
        with pytest.raises(RealfaceError, match="must"):
            ServeLimits(**bad)


@pytest.mark.parametrize(
    "name, safe",
    [("../../etc/passwd.jpg", "passwd.jpg"), ("C:\\Users\\me\\face.png", "face.png"), ("", "upload"), ("..", "upload"),
     (None, "upload"), ("a\x00b\nc.jpg", "abc.jpg"), ("x" * 300 + ".jpeg", "x" * 115 + ".jpeg")],
)  # fmt: skip
def test_safe_filename(name: str | None, safe: str) -> None:
    assert safe_filename(name) == safe


def test_public_model_info_hides_server_folders(bundle: Model, tiny_model: Path) -> None:
    info = public_model_info(bundle)
    assert info["source"] == tiny_model.name
    assert str(tiny_model.parent) not in json.dumps(info)


# -- endpoints -------------------------------------------------------------------------------------


def test_health_model_openapi_and_page(client: TestClient, tiny_model: Path) -> None:
    health = client.get("/healthz").json()
    assert health == {"status": "ok", "queue_depth": 0, "jobs_running": 0, "uploads_receiving": 0, "max_jobs": 2,
                      "queue_length": 32}  # fmt: skip
    model = client.get("/v1/model").json()
    assert model["detector"] == "classifier" and model["img_size"] == 64 and model["card"]["name"].startswith("test model")
    assert model["decision"]["band"] == 0.1 and model["service"]["max_jobs"] == 2 and model["service"]["frames"] == 2
    assert str(tiny_model) not in json.dumps(model)
    schema = client.get("/openapi.json").json()
    body = schema["paths"]["/v1/detect"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert body["required"] == ["file"]
    assert {"/healthz", "/v1/model"} <= set(schema["paths"])
    docs = client.get("/docs")  # the Swagger page, its scripts served from the package (works offline)
    assert docs.status_code == 200 and "/docs-assets/swagger-ui-bundle.js" in docs.text and "cdn" not in docs.text
    for page, script in (("/docs", "swagger-ui-bundle.js"), ("/redoc", "redoc.standalone.js")):
        assert f"/docs-assets/{script}" in client.get(page).text
        served = client.get(f"/docs-assets/{script}")
        assert served.status_code == 200 and len(served.content) > 100_000
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for element in ('id="verdict"', 'id="pfake"', 'id="file"', 'id="plot"', "/v1/detect?heatmap=true", "/v1/model"):
        assert element in page.text
    assert "src=\"http" not in page.text and "href=\"http" not in page.text and "@import" not in page.text  # offline
    assert "default-src 'none'" in page.headers["content-security-policy"]


def test_image_with_heatmap(client: TestClient, bundle: Model, astronaut: np.ndarray, astronaut_jpg: bytes,
                            tmp_path: Path) -> None:  # fmt: skip
    response = post(client, "astronaut.jpg", astronaut_jpg, heatmap=True, mime="image/jpeg")
    assert response.status_code == 200, response.text
    result = check_schema(response.json())
    assert result["status"] == "ok" and result["kind"] == "image" and result["path"] == "astronaut.jpg"
    assert result["contact_sheet_png"] is None
    # The same answer as `realface detect` (the shared Scanner) on the same file.
    saved = tmp_path / "astronaut.jpg"
    saved.write_bytes(astronaut_jpg)
    direct = Scanner(bundle, frames=2).scan(saved)
    assert result["p_fake"] == pytest.approx(direct.p_fake, abs=1e-6) and result["verdict"] == direct.verdict
    assert [f["bbox"] for f in result["faces"]] == [f.bbox for f in direct.faces]
    # The heatmap is a PNG of the crop's size, an overlay that differs from the face crop itself.
    crop = client.app.state.service.scanner.pipeline.faces_in_image(read_image(saved))[0].crop
    heat = decode_png(result["faces"][0]["heatmap_png"])
    assert heat.shape == crop.shape == (64, 64, 3)
    assert np.abs(heat.astype(np.int16) - crop.astype(np.int16)).mean() > 5.0
    # Without ?heatmap the answer has no images and the same score.
    plain = post(client, "astronaut.jpg", astronaut_jpg).json()["result"]
    assert plain["faces"][0]["heatmap_png"] is None and plain["p_fake"] == pytest.approx(result["p_fake"], abs=1e-6)


def test_utkface_image(client: TestClient, utk_jpg: bytes) -> None:
    result = check_schema(post(client, "utk.jpg", utk_jpg).json())
    assert result["status"] == "ok" and len(result["faces"]) == 1 and result["faces"][0]["frame"] == -1


def test_video_with_contact_sheet(client: TestClient, video_519: Path) -> None:
    response = post(client, "519.mp4", video_519.read_bytes(), heatmap=True, mime="video/mp4")
    assert response.status_code == 200, response.text
    result = check_schema(response.json())
    assert result["kind"] == "video" and result["status"] == "ok" and result["frames_sampled"] == 2
    assert [f["frame"] for f in result["faces"]] == [0, 750] and all(f["face"] == 0 for f in result["faces"])
    assert set(result["top_frames"]) <= {0, 750}
    assert all(f["heatmap_png"] is None for f in result["faces"])  # videos: one contact sheet instead
    sheet = decode_png(result["contact_sheet_png"])
    assert sheet.shape == (64, 8 * 64, 3)  # one row of 8 tiles of 64 px, 2 of them filled
    assert sheet[:, :128].mean() > 20 and sheet[:, 128:].mean() < 2  # (JPEG-made: near-black, not 0)


@pytest.mark.parametrize("mode", ["L", "RGBA", "I;16"])
def test_grey_rgba_16bit_images_work(client: TestClient, astronaut: np.ndarray, mode: str) -> None:
    rgb = Image.fromarray(astronaut)
    if mode == "L":
        image = rgb.convert("L")
    elif mode == "RGBA":
        image = rgb.convert("RGBA")
        image.putalpha(Image.new("L", rgb.size, 200))
    else:
        grey16 = np.asarray(rgb.convert("L"), np.uint16) * 257  # 0..65535
        image = Image.fromarray(grey16)
    assert image.mode == mode
    data = png(image)
    assert data[24] == (16 if mode == "I;16" else 8)  # the PNG's bit depth (IHDR)
    result = check_schema(post(client, f"face-{mode}.png", data).json())
    assert result["status"] == "ok" and result["faces"]


def test_wrong_extension_is_read_by_content(client: TestClient, astronaut_jpg: bytes) -> None:
    for name in ("photo.mp4", "photo.txt", "photo"):
        result = post(client, name, astronaut_jpg).json()["result"]
        assert result["kind"] == "image" and result["status"] == "ok", name


def test_no_face_is_an_answer(client: TestClient) -> None:
    from skimage import data

    response = post(client, "coffee.jpg", jpeg(data.coffee()))  # 400x600, a cup of coffee
    assert response.status_code == 200
    result = check_schema(response.json())
    assert result["status"] == "no_face" and result["verdict"] is None and result["faces"] == []
    assert "no face" in result["message"]


# -- bad input -------------------------------------------------------------------------------------


def _undecodable_video(path: Path) -> bytes:
    """The video with its whole `mdat` payload replaced by noise: it opens, but no frame decodes."""
    data = bytearray(path.read_bytes())
    start, end = data.find(b"mdat") + 4, data.find(b"moov") - 4
    data[start:end] = np.random.default_rng(0).integers(0, 256, end - start, dtype=np.uint8).tobytes()
    return bytes(data)


def test_bad_inputs(client: TestClient, astronaut_jpg: bytes, video_519: Path) -> None:
    rng = np.random.default_rng(0)
    cases = [
        ("empty.jpg", b"", 422, "empty"),
        ("noise.jpg", rng.integers(0, 256, 5000, dtype=np.uint8).tobytes(), 422, "not a readable image"),
        ("half.jpg", astronaut_jpg[: len(astronaut_jpg) // 2], 422, "truncated"),
        ("notes.txt", b"hello, this is not a picture\n" * 20, 422, "unsupported file type: text"),
        ("anim.gif", b"GIF89a" + bytes(100), 422, "unsupported file type: gif image"),
        ("broken.webm", b"\x1a\x45\xdf\xa3" + bytes(2000), 422, "not a readable video"),
        ("noframes.mp4", _undecodable_video(video_519), 422, "no frame could be decoded"),
        ("bomb.png", png_header_only(30000, 30000), 413, "image too large"),
    ]
    for name, data, status, words in cases:
        assert_one_line_error(post(client, name, data), status, words)


def test_bad_requests(client: TestClient, utk_jpg: bytes) -> None:
    assert_one_line_error(client.post("/v1/detect", files={"image": ("a.jpg", utk_jpg)}), 400, "field named 'file'")
    assert_one_line_error(client.post("/v1/detect", json={"file": "a.jpg"}), 400, "multipart/form-data")
    broken = client.post(
        "/v1/detect", content=b"--xyz\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\nabc",
        headers={"content-type": "multipart/form-data; boundary=xyz"},
    )  # fmt: skip
    assert broken.status_code in (400, 422) and "\n" not in broken.json()["detail"]
    bad_flag = client.post("/v1/detect?heatmap=maybe", files={"file": ("a.jpg", utk_jpg)})
    assert_one_line_error(bad_flag, 422, "bad request parameter query.heatmap")


def test_upload_limit_while_streaming(bundle: Model, astronaut_jpg: bytes) -> None:
    limits = ServeLimits(max_upload_mb=0.02)  # 20 KiB
    with TestClient(create_app(bundle, limits=limits, frames=2)) as c:
        assert len(astronaut_jpg) > 40_000
        assert_one_line_error(post(c, "big.jpg", astronaut_jpg), 413, "upload too large")

        def chunks() -> Iterator[bytes]:  # no Content-Length: the limit must hold on the stream itself
            yield b'--b0\r\nContent-Disposition: form-data; name="file"; filename="big.jpg"\r\n\r\n'
            for i in range(0, len(astronaut_jpg), 4096):
                yield astronaut_jpg[i : i + 4096]
            yield b"\r\n--b0--\r\n"

        streamed = c.post("/v1/detect", content=chunks(), headers={"content-type": "multipart/form-data; boundary=b0"})
        assert "content-length" not in streamed.request.headers
        assert_one_line_error(streamed, 413, "upload too large")
        small = png(Image.new("L", (32, 32), 128))
        assert post(c, "small.png", small).json()["result"]["status"] == "no_face"  # under the limit: answered


def test_pixel_and_video_length_limits(bundle: Model, shared_data: Path) -> None:
    limits = ServeLimits(max_image_megapixels=1.0, max_video_seconds=10.0)
    with TestClient(create_app(bundle, limits=limits, frames=2)) as c:
        assert_one_line_error(post(c, "wide.png", png(Image.new("L", (1500, 1000)))), 413, "1500x1000")
        video = shared_data / "ffpp-videos" / "original" / "004.mp4"  # 309 frames at 25 fps: 12.4 s
        assert_one_line_error(post(c, "004.mp4", video.read_bytes()), 413, "video too long: 12.4 s")


def test_busy_gives_503_not_a_hang(bundle: Model, utk_jpg: bytes, hold_scans) -> None:
    app = create_app(bundle, limits=ServeLimits(max_jobs=1, queue_length=0, retry_after_s=3), frames=2)
    held = hold_scans(app)
    started, release = held.started, held.release
    with TestClient(app) as c, ThreadPoolExecutor(1) as pool:
        first = pool.submit(post, c, "first.jpg", utk_jpg)
        assert started.wait(30)
        t0 = time.monotonic()
        second = post(c, "second.jpg", utk_jpg)
        assert time.monotonic() - t0 < 5.0
        assert_one_line_error(second, 503, "busy")
        assert second.headers["retry-after"] == "3"
        assert c.get("/healthz").status_code == 200  # the service answers while the job is held
        release.set()
        assert first.result(timeout=30).status_code == 200
        assert post(c, "third.jpg", utk_jpg).status_code == 200  # the slot was given back


def test_temporary_files_always_removed(bundle: Model, astronaut_jpg: bytes, video_519: Path, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    import tempfile

    root = tmp_path / "tmp"
    root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(root))
    app = create_app(bundle, limits=ServeLimits(max_upload_mb=1, max_jobs=1), frames=2)
    seen: list[list[str]] = []
    real_run = app.state.service.run

    def spying_run(raw: Path, *args):
        seen.append(sorted(p.name for p in raw.parent.iterdir()))
        assert raw.parent.parent == root
        return real_run(raw, *args)

    monkeypatch.setattr(app.state.service, "run", spying_run)
    with TestClient(app, raise_server_exceptions=False) as c:
        requests = [
            ("../../etc/passwd.jpg", astronaut_jpg, True, 200),
            ("v.mp4", video_519.read_bytes(), True, 413),  # 2.3 MB: over the 1 MiB limit while streaming
            ("half.jpg", astronaut_jpg[:3000], False, 422),
            ("empty.png", b"", False, 422),
        ]
        for name, data, heatmap, status in requests:
            response = post(c, name, data, heatmap=heatmap)
            assert response.status_code == status, (name, response.text)
            assert list(root.iterdir()) == [], name
        # An unexpected failure inside the scan: a JSON 500, the folder removed, the job slot given back.
        monkeypatch.setattr(app.state.service.scanner, "scan_content", lambda *a, **k: 1 / 0)
        failed = post(c, "x.jpg", astronaut_jpg)
        assert failed.status_code == 500 and "ZeroDivisionError" in failed.json()["detail"]
        assert list(root.iterdir()) == []
        monkeypatch.undo()
        assert post(c, "again.jpg", astronaut_jpg).status_code == 200
    assert seen[0] == ["upload.bin"]  # the server's name, never the client's


def test_client_path_never_used_on_disk(client: TestClient, astronaut_jpg: bytes,
                                        monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    scanner = client.app.state.service.scanner
    used: list[tuple[Path, list[str]]] = []
    real_scan = scanner.scan_content

    def spying_scan(path: Path, *args):
        used.append((path, sorted(p.name for p in path.parent.iterdir())))
        return real_scan(path, *args)

    monkeypatch.setattr(scanner, "scan_content", spying_scan)
    response = post(client, "../../etc/passwd.jpg", astronaut_jpg)
    assert response.status_code == 200
    path, names = used[0]
    assert path.name == "upload.jpg" and names == ["upload.jpg"] and "etc" not in path.parts
    assert response.json()["result"]["path"] == "passwd.jpg"
    assert "../" not in response.text and "etc/passwd" not in response.text


# -- load on loopback ------------------------------------------------------------------------------


def test_load_on_loopback(bundle: Model, utk_jpg: bytes) -> None:
    """12 concurrent uploads from 4 threads to a real uvicorn: only 200s and 503s, and /healthz answers."""
    app = create_app(bundle, limits=ServeLimits(max_jobs=2, retry_after_s=1), frames=2)
    t0 = time.monotonic()
    with serve_in_background(app) as url:

        def upload(i: int) -> int:
            with httpx.Client(base_url=url, timeout=60) as http:
                return http.post("/v1/detect", files={"file": (f"face{i}.jpg", utk_jpg, "image/jpeg")}).status_code

        with ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(upload, i) for i in range(12)]
            health = []
            with httpx.Client(base_url=url, timeout=10) as http:
                while not all(f.done() for f in futures) or not health:
                    health.append(http.get("/healthz").status_code)
                    time.sleep(0.05)
            codes = [f.result(timeout=60) for f in futures]
    assert set(codes) <= {200, 503}, codes
    assert codes.count(200) >= 2, codes
    assert health and set(health) == {200}
    assert time.monotonic() - t0 < 30
