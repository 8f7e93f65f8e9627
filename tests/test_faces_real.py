"""The face pipeline on real files: UTKFace and DFDC crops, FF++ video frames, skimage's astronaut."""

from __future__ import annotations

import threading
from pathlib import Path

import av
import numpy as np
import pytest
from skimage import data

from realface.errors import InputError, RealfaceError
from realface.faces.align import five_points, template_points
from realface.faces.detect import DETECTORS, iou, make_detector
from realface.faces.media import prefetch, probe_video, read_frames, read_image, sample_frames, sample_indices
from realface.faces.pipeline import ASSUMED_SCORE, FacePipeline, PipelineConfig, no_face_message

UTKFACE = ["images/100_0_0_20170112213500903.jpg", "images/32_1_0_20170117134801098.jpg", "images/58_0_3_20170119211539872.jpg"]
DFDC = ["faces/aabqyygbaa.jpg", "faces/gmgyplntat.jpg"]
DFDC_UNDETECTED = "faces/aaivbtdyjn.jpg"  # HOG finds no face here, even with the border extended
VIDEOS = ["original/519.mp4", "NeuralTextures/004_982.mp4"]  # 640x480 and 1280x720


@pytest.fixture(scope="module")
def pipeline() -> FacePipeline:
    return FacePipeline(PipelineConfig(crop_size=224, margin=1.3, frames=4))


def _check_face(face, size: int = 224) -> None:
    assert face.crop.shape == (size, size, 3) and face.crop.dtype == np.uint8
    assert face.landmarks.shape == (68, 2) and face.source_landmarks.shape == (68, 2)
    # Alignment puts the eyes, nose tip and mouth corners near the template (faces differ in shape).
    error = np.linalg.norm(five_points(face.landmarks) - template_points(size, 1.3), axis=1)
    assert error.max() < 0.08 * size, error
    lm = face.landmarks
    assert lm[36:48, 1].mean() < lm[30, 1] < lm[48:60, 1].mean()  # eyes above nose above mouth
    assert 0.5 * face.crop.std() > 0 and face.crop.mean() > 10  # a picture, not an empty border


def test_astronaut(pipeline: FacePipeline) -> None:
    faces = pipeline.faces_in_image(data.astronaut())
    assert len(faces) == 1
    face = faces[0]
    _check_face(face)
    x0, y0, x1, y1 = face.bbox
    assert 150 < x0 < x1 < 300 and 50 < y0 < y1 < 200 and face.score > 0
    # Source landmarks inside the box's neighbourhood, and mapped to the crop by the matrix.
    assert np.all((face.source_landmarks >= [x0 - 20, y0 - 40]) & (face.source_landmarks <= [x1 + 20, y1 + 20]))


@pytest.mark.parametrize("name", UTKFACE)
def test_utkface_crops(pipeline: FacePipeline, shared_data: Path, name: str) -> None:
    rgb = read_image(shared_data / "utkface" / name)
    assert rgb.shape == (200, 200, 3)
    faces = pipeline.faces_in_image(rgb)
    assert len(faces) >= 1 and faces[0].score >= 0 and faces[0].found_by in {"hog", "hog-padded"}
    _check_face(faces[0])


@pytest.mark.parametrize("name", DFDC)
def test_dfdc_crops(pipeline: FacePipeline, shared_data: Path, name: str) -> None:
    faces = pipeline.faces_in_image(read_image(shared_data / "dfdc" / name))
    assert len(faces) >= 1
    _check_face(faces[0])


def test_assume_cropped(shared_data: Path) -> None:
    rgb = read_image(shared_data / "dfdc" / DFDC_UNDETECTED)
    plain = PipelineConfig(frames=4, fallbacks=False)
    assert FacePipeline(plain).faces_in_image(rgb) == []
    assert "--assume-cropped" in no_face_message(*rgb.shape[:2], plain)
    assumed = FacePipeline(PipelineConfig(frames=4, assume_cropped=True, fallbacks=False)).faces_in_image(rgb)
    assert len(assumed) == 1 and assumed[0].score == ASSUMED_SCORE and assumed[0].found_by == "assumed"
    assert assumed[0].bbox == (0.0, 0.0, float(rgb.shape[1]), float(rgb.shape[0]))
    _check_face(assumed[0])
    # A big landscape image without a face is not mistaken for a crop.
    assert "--assume-cropped" not in no_face_message(1080, 1920, plain)


@pytest.mark.parametrize("name", VIDEOS)
def test_video_main_track(pipeline: FacePipeline, shared_data: Path, name: str) -> None:
    path = shared_data / "ffpp-videos" / name
    info = probe_video(path)
    frames = pipeline.faces_in_video(path)
    assert [f.frame for f in frames] == sample_indices(info.count, 4)  # every sampled frame reported
    assert all(f.face is not None for f in frames), [f.note for f in frames]
    for f in frames:
        _check_face(f.face)
        x0, y0, x1, y1 = f.face.bbox
        assert 0 <= x0 < x1 <= info.width and 0 <= y0 < y1 <= info.height
    centres = np.array([[(f.face.bbox[0] + f.face.bbox[2]) / 2, (f.face.bbox[1] + f.face.bbox[3]) / 2] for f in frames])
    assert np.ptp(centres, axis=0).max() < 0.25 * info.width  # one person, one track


def test_read_frames_match_sequential_decoding(shared_data: Path) -> None:
    path = shared_data / "ffpp-videos" / "original" / "634.mp4"
    wanted = [0, 3, 200, 251, 337]
    got = dict(read_frames(path, wanted))
    assert sorted(got) == wanted
    with av.open(str(path)) as container:
        for index, frame in enumerate(container.decode(video=0)):
            if index in got:
                np.testing.assert_array_equal(got[index], frame.to_ndarray(format="rgb24"))
            if index >= 251:
                break


def test_sampled_frames_decode_ahead_and_match_direct_decoding(shared_data: Path) -> None:
    path = shared_data / "ffpp-videos" / "Deepfakes" / "519_515.mp4"
    indices, frames = sample_frames(path, 6)  # decoded ahead in a thread, with FFmpeg's own threads
    ahead = list(frames)
    assert [i for i, _ in ahead] == indices
    for (i, frame), (j, direct) in zip(ahead, read_frames(path, indices), strict=True):
        assert i == j
        np.testing.assert_array_equal(frame, direct)


def test_prefetch_keeps_order_raises_in_place_and_stops_early() -> None:
    assert list(prefetch(iter(range(50)), depth=3)) == list(range(50))

    def failing():
        yield 1
        yield 2
        raise InputError("broken at 3")

    got = []
    with pytest.raises(InputError, match="broken at 3"):
        for item in prefetch(failing()):
            got.append(item)
    assert got == [1, 2]

    closed = []

    def endless():
        try:
            n = 0
            while True:
                yield n
                n += 1
        finally:
            closed.append(threading.current_thread().name)

    stream = prefetch(endless(), depth=2)
    assert [next(stream) for _ in range(5)] == [0, 1, 2, 3, 4]
    stream.close()  # stops the producer thread, which closes the generator it runs
    assert closed == ["realface-prefetch"]
    assert not any(t.name == "realface-prefetch" for t in threading.enumerate())


def test_bad_inputs_raise_one_line(tmp_path: Path) -> None:
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(np.random.default_rng(0).bytes(5000))
    pipe = FacePipeline(PipelineConfig(frames=2))
    for path in (empty, junk):
        with pytest.raises(InputError) as err:
            pipe.faces_in_video(path)
        assert "\n" not in str(err.value)
    with pytest.raises(RealfaceError, match="unknown detector"):
        PipelineConfig(detector="nope")
    assert "dlib-hog" in DETECTORS and make_detector("dlib-hog").detect(np.zeros((50, 80, 3), np.uint8)) == []


def test_shipped_frontal_detector_file_is_dlibs_detector(shared_data: Path) -> None:
    """The HOG detector read from the package's file (milliseconds) finds exactly what dlib's built-in copy
    (about a second to build) finds, with the same scores, near misses included."""
    import dlib

    from realface.faces.detect import FRONTAL_FILE

    shipped, builtin = dlib.fhog_object_detector(str(FRONTAL_FILE)), dlib.get_frontal_face_detector()
    frame = next(read_frames(shared_data / "ffpp-videos" / VIDEOS[0], [10]))[1]
    images = [read_image(shared_data / "utkface" / p) for p in UTKFACE] + [data.astronaut(), frame]
    for image in images:
        a, b = shipped.run(image, 1, -0.5), builtin.run(image, 1, -0.5)
        assert [str(r) for r in a[0]] == [str(r) for r in b[0]] and a[1] == b[1] and a[2] == b[2]
    assert sum(len(shipped.run(image, 1, 0.0)[0]) for image in images) >= len(images)  # it does find faces


def test_detect_near_finds_the_boxes_detect_finds(shared_data: Path) -> None:
    """Searching only around known faces, on windows aligned to the detector's grid, gives `detect`'s boxes:
    exactly for faces on the HOG pyramid's first levels, and nothing where there is no face."""
    detector = make_detector("dlib-hog")
    frames = [rgb for _, rgb in read_frames(shared_data / "ffpp-videos" / VIDEOS[0], [0, 300, 600])]
    for rgb in frames:
        whole = detector.detect(rgb)
        assert whole and whole[0].box[2] - whole[0].box[0] < 115  # small faces: the exact case
        near = detector.detect_near(rgb, [d.box for d in whole])
        assert [d.box for d in near] == [d.box for d in whole]  # scores differ a little: less context
    assert detector.detect_near(frames[0], [(0.0, 0.0, 60.0, 60.0)]) == []  # the top-left corner: no face


def test_tracked_video_faces_match_searching_every_frame(shared_data: Path, monkeypatch) -> None:
    """Frames between whole searches are searched near the faces before: the same frames have a face and the
    landmarks in the crop move by a few pixels at most. (HOG boxes themselves jump by a pyramid level, 5/6 in
    size, from one frame to the next either way; the 68 landmarks fitted in them are what the crop follows.)"""
    import realface.faces.pipeline as pipeline_module

    config = PipelineConfig(crop_size=112, frames=12)
    for video in ["original/634.mp4", "Deepfakes/519_515.mp4"]:  # the largest differences of the FF++ samples
        monkeypatch.setattr(pipeline_module, "SEARCH_EVERY", 1)
        every = FacePipeline(config).faces_in_video(shared_data / "ffpp-videos" / video)
        monkeypatch.setattr(pipeline_module, "SEARCH_EVERY", 4)
        tracked = FacePipeline(config).faces_in_video(shared_data / "ffpp-videos" / video)
        assert [r.face is None for r in tracked] == [r.face is None for r in every]
        pairs = [(a.face, b.face) for a, b in zip(every, tracked) if a.face is not None]
        assert len(pairs) == 12
        assert min(iou(a.bbox, b.bbox) for a, b in pairs) > 0.6  # one pyramid level apart at most
        assert max(np.abs(a.landmarks - b.landmarks).max() for a, b in pairs) < 5.0  # of 112 pixels
        assert sum(a.bbox == b.bbox for a, b in pairs) >= 3  # whole-searched frames at least


def test_video_frames_searched_in_threads_give_the_one_thread_crops(shared_data: Path, monkeypatch) -> None:
    """Frames are searched in several threads, each with its own detector (dlib's keeps its image pyramid
    inside it): the same faces and crops as one thread, run after run."""
    import realface.faces.pipeline as pipeline_module

    video = shared_data / "ffpp-videos" / VIDEOS[0]
    config = PipelineConfig(crop_size=112, frames=12)
    runs = []
    for workers in (1, 4, 4):
        monkeypatch.setattr(pipeline_module, "VIDEO_WORKERS", workers)
        runs.append(FacePipeline(config).faces_in_video(video))
    for run in runs[1:]:
        assert [r.frame for r in run] == [r.frame for r in runs[0]]
        for a, b in zip(runs[0], run):
            assert (a.face is None) == (b.face is None)
            assert a.face is None or (np.array_equal(a.face.crop, b.face.crop) and a.face.bbox == b.face.bbox)
    assert sum(r.face is not None for r in runs[0]) >= 10
