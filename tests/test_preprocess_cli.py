"""`realface preprocess` end to end on real files: outputs, resume, shards, webdataset, bad inputs."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from skimage import data

from realface.cli import main
from realface.faces.manifest import read_face_manifest
from realface.faces.media import read_image
from realface.faces.pipeline import FacePipeline, PipelineConfig

FILES = [
    ("utkface/images/100_0_0_20170112213500903.jpg", "real", "u1"),
    ("dfdc/faces/gmgyplntat.jpg", "fake", "d1"),
    ("dfdc/faces/aaivbtdyjn.jpg", "real", "d2"),  # a dark tight crop: found by the CNN once equalized
    ("ffpp-videos/original/519.mp4", "real", "v1"),
]


def _rows(path: Path) -> list[dict]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture()
def manifest(tmp_path: Path, shared_data: Path) -> Path:
    """A manifest with paths relative to its own folder and an extra column."""
    path = tmp_path / "in" / "list.csv"
    path.parent.mkdir()
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "label", "group"])
        for rel, label, group in FILES:
            writer.writerow([os.path.relpath(shared_data / rel, path.parent), label, group])
    return path


def _run(*args: object) -> int:
    return main(["preprocess", *map(str, args), "--frames", "4", "--no-progress"])


def test_end_to_end_resume_and_interruption(manifest: Path, tmp_path: Path, shared_data: Path) -> None:
    full = tmp_path / "full"
    assert _run(manifest, "--out", full) == 0
    rows = _rows(full / "manifest.csv")
    assert list(rows[0])[:12] == [
        "path", "source", "frame", "face", "x0", "y0", "x1", "y1", "score", "landmarks", "label", "found_by",
    ]  # fmt: skip
    assert "group" in rows[0]
    by_group: dict[str, list[dict]] = {}
    for row in rows:
        by_group.setdefault(row["group"], []).append(row)
    assert set(by_group) == {"u1", "d1", "d2", "v1"}
    assert sorted(int(r["frame"]) for r in by_group["v1"]) == [0, 250, 500, 750]
    assert by_group["d2"][0]["found_by"] == "cnn-equalized" and by_group["d1"][0]["label"] == "fake"
    assert {r["found_by"] for r in by_group["v1"]} == {"hog"} and by_group["u1"][0]["found_by"] == "hog"
    assert _rows(full / "errors.csv") == [] and _rows(full / "no_face.csv") == []

    # Training reads crops and landmarks back without detecting; they equal what detection-time code makes.
    records = read_face_manifest(full)
    assert len(records) == len(rows)
    record = next(r for r in records if r.extra["group"] == "u1")
    crop = read_image(record.path)
    assert crop.shape == (224, 224, 3) and record.landmarks.shape == (68, 2) and record.label == "real"
    face = FacePipeline(PipelineConfig(frames=4)).faces_in_image(read_image(Path(record.source)))[0]
    np.testing.assert_allclose(record.landmarks, face.landmarks, atol=0.051)
    assert np.abs(crop.astype(float) - face.crop).mean() < 2.0  # JPEG quality 95

    # Resume: a limited run, then the rest; nothing is redone and the result equals the single full run.
    resumed = tmp_path / "resumed"
    assert _run(manifest, "--out", resumed, "--limit", "2") == 0
    first = {p: p.stat().st_mtime_ns for p in (resumed / "crops").rglob("*.jpg")}
    assert len(_rows(resumed / "manifest.csv")) < len(rows)
    assert _run(manifest, "--out", resumed) == 0
    assert all(p.stat().st_mtime_ns == t for p, t in first.items())
    assert len((resumed / "journal.jsonl").read_text().splitlines()) == len(FILES)
    assert (resumed / "manifest.csv").read_bytes() == (full / "manifest.csv").read_bytes()

    # Interrupted while writing the journal: the torn line's input is redone, nothing else.
    journal = resumed / "journal.jsonl"
    lines = journal.read_text().splitlines(keepends=True)
    journal.write_text("".join(lines[:-1]) + lines[-1][: len(lines[-1]) // 2])
    (resumed / "manifest.csv").unlink()
    assert _run(manifest, "--out", resumed) == 0
    assert (resumed / "manifest.csv").read_bytes() == (full / "manifest.csv").read_bytes()

    # Other settings into the same folder are refused rather than mixed.
    assert _run(manifest, "--out", resumed, "--size", "112") == 2


def _bad_inputs(folder: Path, shared_data: Path) -> dict[str, str | None]:
    """Write every awkward input; returns name -> expected words of its error (None: faces expected)."""
    folder.mkdir()
    astronaut = data.astronaut()
    jpeg = cv2.imencode(".jpg", cv2.cvtColor(astronaut, cv2.COLOR_RGB2BGR))[1].tobytes()
    (folder / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0" + np.random.default_rng(0).bytes(4000))
    (folder / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (folder / "zero.png").write_bytes(b"")
    Image.fromarray(astronaut).save(folder / "unsupported.gif")
    (folder / "notes.txt").write_text("not a picture")
    Image.fromarray(astronaut).save(folder / "gif_inside.png", format="GIF")
    smooth = cv2.resize(np.random.default_rng(1).integers(0, 255, (12, 16, 3), dtype=np.uint8), (640, 480))
    Image.fromarray(smooth).save(folder / "nonface.png")
    grey = cv2.cvtColor(astronaut, cv2.COLOR_RGB2GRAY)
    Image.fromarray(grey).save(folder / "grey.png")
    Image.fromarray(np.dstack([astronaut, np.full(grey.shape, 128, np.uint8)])).save(folder / "rgba.png")
    cv2.imwrite(str(folder / "grey16.png"), grey.astype(np.uint16) * 257)
    big = cv2.resize(cv2.cvtColor(astronaut, cv2.COLOR_RGB2BGR), (8000, 8000), interpolation=cv2.INTER_LINEAR)
    cv2.imwrite(str(folder / "huge.jpg"), big, [cv2.IMWRITE_JPEG_QUALITY, 80])
    video = shared_data / "ffpp-videos" / "original" / "519.mp4"
    (folder / "truncated.mp4").write_bytes(video.read_bytes()[:3000])
    return {
        "corrupt.jpg": "corrupt",
        "truncated.jpg": "truncated",
        "zero.png": "empty",
        "unsupported.gif": "unsupported",
        "notes.txt": "unsupported",
        "gif_inside.png": "unsupported image format GIF",
        "nonface.png": "no face",
        "truncated.mp4": "video",
        "grey.png": None,
        "rgba.png": None,
        "grey16.png": None,
        "huge.jpg": None,
    }


def test_bad_inputs_go_to_errors_and_the_run_goes_on(tmp_path: Path, shared_data: Path) -> None:
    expected = _bad_inputs(tmp_path / "bad", shared_data)
    out = tmp_path / "out"
    files = [tmp_path / "bad" / name for name in expected]
    assert _run(*files, "--out", out, "--workers", "2") == 0
    errors = {Path(r["source"]).name: r["message"] for r in _rows(out / "errors.csv")}
    assert set(errors) == {name for name, words in expected.items() if words}
    for name, message in errors.items():
        assert expected[name] in message and "\n" not in message and len(message) < 200, (name, message)
    rows = _rows(out / "manifest.csv")
    found = {Path(r["source"]).name: r for r in rows}
    assert set(found) == {name for name, words in expected.items() if words is None}
    # The 8000x8000 image: the box is in its own pixels, about 8000/512 times the astronaut's.
    x0, x1 = float(found["huge.jpg"]["x0"]), float(found["huge.jpg"]["x1"])
    assert 150 * 15.6 < x0 < x1 < 300 * 15.6
    for row in rows:
        assert cv2.imread(str(out / row["path"])).shape == (224, 224, 3)


def test_nothing_processed_exits_nonzero(tmp_path: Path) -> None:
    bad = tmp_path / "corrupt.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 100)
    result = subprocess.run(
        [sys.executable, "-m", "realface", "preprocess", str(bad), "--out", str(tmp_path / "o"), "--no-progress"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1, result.stderr
    assert "nothing could be processed" in result.stdout
    assert _rows(tmp_path / "o" / "errors.csv")[0]["source"] == str(bad)
    assert _run(tmp_path / "missing.jpg", "--out", tmp_path / "o2") == 2


def test_shards_and_webdataset(tmp_path: Path, shared_data: Path) -> None:
    images = [shared_data / "utkface" / "images" / n for n in ("100_0_0_20170112213500903.jpg", "32_1_0_20170117134801098.jpg", "58_0_3_20170119211539872.jpg")]  # fmt: skip
    out = tmp_path / "out"
    for i in range(2):
        assert _run(*images, "--out", out, "--shard", f"{i}/2", "--format", "webdataset") == 0
    shard_rows = [_rows(out / f"manifest.shard{i}of2.csv") for i in range(2)]
    sources = [{r["source"] for r in rows} for rows in shard_rows]
    assert not sources[0] & sources[1] and sources[0] | sources[1] == {str(p) for p in images}
    assert len(read_face_manifest(out)) == sum(map(len, shard_rows))  # a folder merges its shards
    with tarfile.open(out / "faces.shard0of2-000000.tar") as tar:
        names = tar.getnames()
        assert len(names) == 2 * len(shard_rows[0])
        key = shard_rows[0][0]["path"][: -len(".jpg")]
        meta = json.loads(tar.extractfile(f"{key}.json").read())
        crop = cv2.imdecode(np.frombuffer(tar.extractfile(f"{key}.jpg").read(), np.uint8), cv2.IMREAD_COLOR)
    assert crop.shape == (224, 224, 3) and len(meta["landmarks"]) == 136 and meta["source"] == shard_rows[0][0]["source"]
