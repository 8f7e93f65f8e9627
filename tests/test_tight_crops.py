"""Faces in tight crops: the face pipeline's fallbacks find the face in DFDC crops the HOG detector misses,
invent none in pictures without a face, say which path found each face, and `detect` and `evaluate` agree."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from skimage import data

from realface.cli import main
from realface.faces.align import five_points, template_points
from realface.faces.media import read_image
from realface.faces.pipeline import VIDEO_PROBE_FRAMES, FacePipeline, PipelineConfig, whole_image_fit

# DFDC crops (224x224) where dlib's HOG detector finds no face, and the step of the chain that does.
TIGHT_CROPS = {
    "faces/sdgeniwnvt.jpg": "hog-padded",
    "faces/lfvvzweczk.jpg": "cnn",
    "faces/aaivbtdyjn.jpg": "cnn-equalized",
    "faces/kqcjqltrql.jpg": "whole-image",
}


def _nonfaces() -> dict[str, np.ndarray]:
    """Small pictures without a face: photo crops and textures, shaped like face crops."""
    rng = np.random.default_rng(0)
    checker = ((np.arange(200)[:, None] // 25 + np.arange(200)[None, :] // 25) % 2 * 255).astype(np.uint8)
    noise = cv2.resize(rng.integers(0, 256, (50, 50, 3), dtype=np.uint8), (200, 200), interpolation=cv2.INTER_CUBIC)
    return {
        "brick": np.repeat(data.brick()[100:300, 100:300, None], 3, axis=2),
        "coffee": cv2.resize(data.coffee()[0:400, 100:500], (200, 200), interpolation=cv2.INTER_AREA),
        "checkerboard": np.repeat(checker[..., None], 3, axis=2),
        "noise": noise,
    }


@pytest.fixture(scope="module")
def pipeline() -> FacePipeline:
    return FacePipeline(PipelineConfig(crop_size=224, frames=8))


@pytest.mark.parametrize("name", sorted(TIGHT_CROPS))
def test_fallbacks_find_the_face_hog_misses(pipeline: FacePipeline, shared_data: Path, name: str) -> None:
    rgb = read_image(shared_data / "dfdc" / name)
    assert pipeline.detect(rgb) == []  # the frontal detector alone misses it
    faces = pipeline.faces_in_image(rgb)
    assert len(faces) == 1 and faces[0].found_by == TIGHT_CROPS[name]
    face = faces[0]
    x0, y0, x1, y1 = face.bbox
    assert (x1 - x0) > 0.6 * rgb.shape[1] and (y1 - y0) > 0.6 * rgb.shape[0]  # the face fills the crop
    # Landmarks that align like a face: eyes, nose tip and mouth corners near the template.
    error = np.linalg.norm(five_points(face.landmarks) - template_points(224, 1.3), axis=1)
    assert error.max() < 0.1 * 224, error
    lm = face.landmarks
    assert lm[36:48, 1].mean() < lm[30, 1] < lm[48:60, 1].mean()
    # Without the fallbacks, no face: the chain is what finds it.
    assert FacePipeline(PipelineConfig(fallbacks=False)).faces_in_image(rgb) == []


@pytest.mark.parametrize("name", sorted(_nonfaces()))
def test_no_face_invented_in_pictures_without_one(pipeline: FacePipeline, name: str) -> None:
    rgb = _nonfaces()[name]
    assert pipeline.faces_in_image(rgb) == []
    assert not whole_image_fit(rgb).ok


def test_whole_image_fit_measures_a_face_and_a_texture(shared_data: Path) -> None:
    face = whole_image_fit(read_image(shared_data / "dfdc" / "faces" / "kqcjqltrql.jpg"))
    brick = whole_image_fit(_nonfaces()["brick"])
    assert face.ok and not brick.ok
    assert face.hog_score > brick.hog_score
    # On the face the landmarks stay on its features when the box moves; on the brick wall they follow the box.
    assert face.drift < 0.6 < 0.8 < brick.drift
    assert face.landmarks.shape == (68, 2)


def _write_video(path: Path, frame: np.ndarray, count: int) -> Path:
    """`count` copies of an RGB frame as an MPEG-4 video."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = frame.shape[1], frame.shape[0], "yuv420p"
        for _ in range(count):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return path


def test_video_fallbacks_run_only_without_any_face_and_stay_bounded(
    pipeline: FacePipeline, shared_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    find = FacePipeline.find
    monkeypatch.setattr(FacePipeline, "find", lambda self, rgb: calls.append(1) or find(self, rgb))

    crop = read_image(shared_data / "dfdc" / "faces" / "lfvvzweczk.jpg")
    frames = pipeline.faces_in_video(_write_video(tmp_path / "crop.mp4", crop, 8))
    assert len(frames) == 8 and all(f.face is not None and f.face.found_by == "cnn" for f in frames)
    assert len(calls) == 8

    calls.clear()
    frames = pipeline.faces_in_video(_write_video(tmp_path / "brick.mp4", _nonfaces()["brick"], 8))
    assert len(frames) == 8 and all(f.face is None for f in frames)
    assert len(calls) == VIDEO_PROBE_FRAMES  # no face in the probe frames: the others are not searched


def test_detect_says_which_path_found_the_face(tiny_model, shared_data: Path, capsys) -> None:
    files = [str(shared_data / "dfdc" / name) for name in sorted(TIGHT_CROPS)]
    assert main(["detect", *files, "--model", str(tiny_model), "--json", "--no-progress"]) == 0
    results = json.loads(capsys.readouterr().out)["results"]
    assert [r["faces"][0]["found_by"] for r in results] == [TIGHT_CROPS[n] for n in sorted(TIGHT_CROPS)]
    padded = str(shared_data / "dfdc" / "faces" / "sdgeniwnvt.jpg")  # the quickest of them: found by step 2
    assert main(["detect", padded, "--model", str(tiny_model), "--csv", "--no-progress"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert len(rows) == 1 and rows[0]["found_by"] == "hog-padded"
    assert main(["detect", padded, "--model", str(tiny_model), "--no-progress"]) == 0
    header, line = capsys.readouterr().out.splitlines()[:2]
    assert "found by" in header and "hog-padded" in line


def test_detect_and_evaluate_agree_on_the_same_files(tiny_model, shared_data: Path, tmp_path: Path, capsys) -> None:
    brick = tmp_path / "brick.png"
    cv2.imwrite(str(brick), _nonfaces()["brick"])
    labels = {"faces/aaivbtdyjn.jpg": "real", "faces/kqcjqltrql.jpg": "fake", "faces/sdgeniwnvt.jpg": "real"}
    files = {str(shared_data / "dfdc" / name): label for name, label in labels.items()}
    files[str(brick)] = "fake"
    manifest = tmp_path / "test.csv"
    manifest.write_text("path,label\n" + "".join(f"{p},{label}\n" for p, label in files.items()))

    assert main(["detect", *files, "--model", str(tiny_model), "--json", "--no-progress"]) == 0
    detected = {r["path"]: r for r in json.loads(capsys.readouterr().out)["results"]}
    report = tmp_path / "report"
    args = ["evaluate", "--model", str(tiny_model), "--data", str(manifest), "--out", str(report),
            "--bootstrap", "20", "--no-progress"]  # fmt: skip
    assert main(args) == 0
    with (report / "scores.csv").open(newline="") as fh:
        scored = {row["path"]: float(row["score"]) for row in csv.DictReader(fh)}

    assert detected[str(brick)]["status"] == "no_face"
    assert str(brick) not in scored and str(brick) in (report / "unscored.txt").read_text()
    faces = {p: r for p, r in detected.items() if p != str(brick)}
    assert all(r["status"] == "ok" for r in faces.values())
    assert set(scored) == set(faces)
    assert len({round(v, 5) for v in scored.values()}) == len(scored)  # scores tell these crops apart, so ...
    for path, result in faces.items():  # ... equal scores mean the same face, found and cropped the same way
        assert scored[path] == pytest.approx(result["p_fake"], abs=1e-6), path
