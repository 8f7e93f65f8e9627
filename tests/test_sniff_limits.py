"""Content sniffing and decode limits: what a file holds by its bytes, pixel limits from headers (images,
video containers, each video frame), the memory ceiling, the deadline; and the same answer for the same bytes
under any name from `realface detect` and `realface serve`."""

from __future__ import annotations

import io
import json
import struct
import sys
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient
from skimage import data as skdata

from realface.model import load_model
from realface.cli import main
from realface.faces.media import probe_video, read_frames, read_image, sample_frames
from realface.faces.sniff import sniff, sniff_file
from realface.limits import MIB, DecodeLimits, LimitError, TimeLimitError
from realface.serve import ServeLimits, create_app


def jpeg(rgb: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert ok
    return data.tobytes()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares width x height RGB pixels and holds no image data."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)) + chunk(b"IEND", b"")


def write_video(path: Path, frames: list[np.ndarray], fourcc: str, fps: float = 10.0) -> Path:
    """RGB frames (all the same size) as a video file written by OpenCV."""
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (w, h))
    assert writer.isOpened(), fourcc
    for frame in frames:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    return path


@pytest.fixture(scope="module")
def face_mp4(tmp_path_factory) -> Path:
    """A 1 s MP4 (MPEG-4 part 2) of the astronaut's face, 12 frames at 12 fps."""
    frame = np.ascontiguousarray(skdata.astronaut()[:256, 96:352])
    return write_video(tmp_path_factory.mktemp("video") / "face.mp4", [frame] * 12, "mp4v", fps=12)


@pytest.fixture(scope="module")
def big_mjpeg(tmp_path_factory) -> Path:
    """An MJPEG .avi whose 3 frames are 1600x1000 (1.6 megapixels) but whose file is small."""
    frame = np.zeros((1000, 1600, 3), np.uint8)
    frame[::8] = 255
    return write_video(tmp_path_factory.mktemp("mjpeg") / "big.avi", [frame] * 3, "MJPG")


# -- sniffing --------------------------------------------------------------------------------------


def test_sniff_by_content_then_name(face_mp4: Path, big_mjpeg: Path) -> None:
    astronaut = jpeg(skdata.astronaut())
    assert sniff(astronaut[:64], "photo.gif") == sniff(astronaut[:64]) and sniff(astronaut[:64]).kind == "image"
    assert (sniff(face_mp4.read_bytes()[:64], "x.jpg").kind, sniff(face_mp4.read_bytes()[:64]).suffix) == ("video", ".mp4")
    assert sniff(big_mjpeg.read_bytes()[:64], "x.webp").suffix == ".avi"
    assert sniff(png_header_only(4, 4)).suffix == ".png"
    assert sniff(b"GIF89a" + bytes(20), "a.jpg").name == "GIF image"
    assert sniff(b"II*\x00" + bytes(20), "a.jpg").name == "TIFF image"
    assert sniff(b"hello world\n", "notes.jpg").name == "text"  # text is text whatever its name
    assert sniff("héllo".encode()[:2], None).name == "text"  # a cut multi-byte character at the end
    noise = np.random.default_rng(0).integers(0, 256, 64, dtype=np.uint8).tobytes()
    assert sniff(noise, "x.jpg").kind == "image"  # unknown bytes: the name picks the decoder that reports them
    assert sniff(noise, "x.bin").kind == "unsupported" and sniff(noise).name == "unknown"


def test_sniff_file_missing_and_empty(tmp_path: Path) -> None:
    (tmp_path / "empty.jpg").write_bytes(b"")
    for name, words in (("empty.jpg", "empty file"), ("nope.jpg", "file not found")):
        with pytest.raises(Exception, match=words):
            sniff_file(tmp_path / name)


def test_content_and_extension_matrix_cli_equals_service(tiny_model: Path, face_mp4: Path, tmp_path: Path,
                                                         capsys) -> None:  # fmt: skip
    """The same bytes under misleading names: `detect` and `serve` read them by content and agree."""
    contents = {"jpeg": jpeg(skdata.astronaut()), "mp4": face_mp4.read_bytes(), "text": b"just some notes\n" * 8}
    names = (".jpg", ".gif", ".tiff", ".mp4", "")
    files = []
    for kind, data in contents.items():
        for suffix in names:
            path = tmp_path / f"{kind}_as{suffix or '_none'}"
            path = path.with_name(path.name + suffix)
            path.write_bytes(data)
            files.append(path)
    code = main(["detect", *map(str, files), "--model", str(tiny_model), "--frames", "2", "--json", "--no-progress"])
    assert code == 1  # the text files cannot be read
    cli = {Path(r["path"]).name: r for r in json.loads(capsys.readouterr().out)["results"]}
    with TestClient(create_app(load_model(tiny_model), frames=2)) as client:
        for path in files:
            got = cli[path.name]
            response = client.post("/v1/detect", files={"file": (path.name, path.read_bytes())})
            kind = path.name.split("_as")[0]
            if kind == "text":
                assert got["status"] == "error" and got["message"].startswith("unsupported file type: text")
                assert response.status_code == 422 and response.json()["detail"] == got["message"]
                continue
            assert response.status_code == 200, (path.name, response.text)
            served = response.json()["result"]
            assert got["kind"] == served["kind"] == ("image" if kind == "jpeg" else "video"), path.name
            assert got["status"] == served["status"] == "ok", path.name
            assert got["p_fake"] == pytest.approx(served["p_fake"], abs=1e-6)


def test_stdin_text_is_reported_as_text(tiny_model: Path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"not a picture, just words\n")))
    assert main(["detect", "-", "--model", str(tiny_model), "--json", "--no-progress"]) == 1
    result = json.loads(capsys.readouterr().out)["results"][0]
    assert result["path"] == "-" and result["status"] == "error"
    assert result["message"].startswith("unsupported file type: text") and ".bin" not in result["message"]


# -- images ----------------------------------------------------------------------------------------


def test_cli_pixel_limit_comes_before_pillows_own(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_header_only(15000, 14000))  # 210 MP: over our 200 MP and over Pillow's 179 MP
    with pytest.raises(LimitError, match=r"image too large: 15000x14000 is over 200 megapixels") as err:
        read_image(bomb)
    assert "decompression bomb" not in str(err.value).lower()


def test_image_memory_ceiling_and_pixels(tmp_path: Path) -> None:
    path = tmp_path / "a.jpg"
    path.write_bytes(jpeg(skdata.astronaut()))  # 512x512
    assert read_image(path, DecodeLimits(max_pixels=512 * 512)).shape == (512, 512, 3)
    with pytest.raises(LimitError, match="512x512 is over 0.26 megapixels"):
        read_image(path, DecodeLimits(max_pixels=260_000))
    with pytest.raises(LimitError, match=r"needs about 3 MiB, over the 2 MiB"):  # 512 * 512 * 12 B = 3 MiB
        read_image(path, DecodeLimits(max_bytes=2 * MIB))


# -- videos ----------------------------------------------------------------------------------------


def test_video_frame_size_from_the_container(big_mjpeg: Path) -> None:
    assert probe_video(big_mjpeg).width == 1600
    with pytest.raises(LimitError, match="over 1 megapixels"):
        probe_video(big_mjpeg, DecodeLimits(max_pixels=1_000_000))
    # The memory ceiling lowers the frame size accepted: 40 MiB / 39 B per pixel = 1.075 MP < 1.6 MP.
    with pytest.raises(LimitError, match="memory a request may use|over 1.07"):
        sample_frames(big_mjpeg, 2, DecodeLimits(max_bytes=40 * MIB))
    assert DecodeLimits(max_bytes=40 * MIB).frame_pixels() == 40 * MIB // 39


def test_each_frame_checked_before_decoding(big_mjpeg: Path) -> None:
    """A container that understates its frames (here: probed without limits) cannot get a large frame
    decoded: FFmpeg refuses it from its own header."""
    info = probe_video(big_mjpeg)
    assert [i for i, _ in read_frames(big_mjpeg, [0, 2], info)] == [0, 2]
    with pytest.raises(LimitError, match="over 1 megapixels"):
        list(read_frames(big_mjpeg, [0, 2], info, DecodeLimits(max_pixels=1_000_000)))


def test_deadline_stops_decoding(face_mp4: Path) -> None:
    expired = DecodeLimits(deadline=0.0, time_limit_s=0.5)
    with pytest.raises(TimeLimitError, match="longer than the limit of 0.5 s"):
        list(read_frames(face_mp4, [0, 5], None, expired))


def test_service_refuses_large_frame_video(tiny_model: Path, big_mjpeg: Path) -> None:
    bundle = load_model(tiny_model)
    for limits in (ServeLimits(max_image_megapixels=1.0), ServeLimits(max_request_mb=40)):
        with TestClient(create_app(bundle, limits=limits, frames=2)) as client:
            response = client.post("/v1/detect", files={"file": ("big.avi", big_mjpeg.read_bytes())})
            assert response.status_code == 413, response.text
            assert "video frame" in response.json()["detail"]
    with TestClient(create_app(bundle, frames=2)) as client:  # under the default limits: read (no face in it)
        response = client.post("/v1/detect", files={"file": ("big.avi", big_mjpeg.read_bytes())})
        assert response.status_code == 200 and response.json()["result"]["status"] == "no_face"


def test_service_processing_time_limit(tiny_model: Path, face_mp4: Path) -> None:
    limits = ServeLimits(max_processing_s=0.001)
    with TestClient(create_app(load_model(tiny_model), limits=limits, frames=2)) as client:
        response = client.post("/v1/detect", files={"file": ("face.mp4", face_mp4.read_bytes())})
    assert response.status_code == 413 and "longer than the limit of 0.001 s" in response.json()["detail"]
