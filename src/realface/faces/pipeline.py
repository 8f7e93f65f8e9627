"""The face pipeline shared by `realface preprocess` (training data) and detection: detect, find 68
landmarks, align to the 5-point template, crop. Using one `FacePipeline` for both keeps the crops a model
sees at detection time identical to those it was trained on.

A picture that is itself a face (a tight crop, as in DFDC) often defeats the frontal detector, whose window
needs some context around the face. `FacePipeline.faces_in_image` therefore tries, each step only when the
ones before found nothing (the `found_by` of each face names the step):
1. "hog": the configured detector (dlib's HOG by default);
2. "hog-padded": the same detector on the image padded by reflection, then by replication (boxes mapped back);
3. "cnn": dlib's CNN face detector (`DlibCnnDetector`), then "cnn-equalized": the same on the image with
   its lightness equalized (`equalize`), for dark, low-contrast and blurred faces;
4. "whole-image": the whole image as the face box, only for a crop-like image (small, near-square) whose
   68-landmark fit passes `whole_image_fit` (the landmarks stay on the image's features when the box moves,
   and HOG nearly detects a face there);
5. "assumed": with `assume_cropped`, the whole image without any check (as before this fallback chain).
"""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import cv2
import numpy as np

from realface.errors import InputError, RealfaceError
from realface.faces.align import CropSettings, align_face
from realface.faces.detect import DETECTORS, DlibCnnDetector, DlibHogDetector, Detection, iou, make_detector
from realface.faces.landmarks import find_landmarks
from realface.faces.media import DEFAULT_LIMITS, probe_video, read_frames, sample_frames
from realface.limits import DecodeLimits

# dlib HOG scores are >= 0; a whole-image box taken under `assume_cropped` gets this score instead.
ASSUMED_SCORE = -1.0
# What found a face, in the order they are tried (with the default HOG detector); see the module docstring.
FOUND_BY: tuple[str, ...] = ("hog", "hog-padded", "cnn", "cnn-equalized", "whole-image", "assumed")
PAD_FRACTION = 0.3  # padding on each side, as a fraction of the image's longest side
PAD_BORDERS = (cv2.BORDER_REFLECT_101, cv2.BORDER_REPLICATE)  # tried in this order
CNN_MIN_SIDE = 160  # the CNN fallback enlarges smaller images to this (its window is about 80 pixels)
VIDEO_PROBE_FRAMES = 4  # a video without any face: fallbacks first on this many frames, all only if they find one
VIDEO_WORKERS = min(4, os.cpu_count() or 1)  # threads finding faces in a video's frames (dlib releases the GIL)
FRAMES_IN_FLIGHT = 4  # decoded frames the face search holds at once (besides the decoder's queue; see limits)
SEARCH_EVERY = 4  # every 4th sampled frame is searched whole; those between near the faces of the frame before

T = TypeVar("T")
R = TypeVar("R")


def map_threads(fn: Callable[[T], R], items: Iterable[T], workers: int, in_flight: int | None = None) -> Iterator[R]:
    """fn over items in `workers` threads, results in order, at most `in_flight` items (default 2 x workers)
    submitted and not yet yielded (memory stays bounded for long inputs); with one worker, in the calling thread."""
    if workers <= 1:
        yield from map(fn, items)
        return
    limit = max(1, in_flight or 2 * workers)
    with ThreadPoolExecutor(workers, thread_name_prefix="realface-faces") as pool:
        pending: deque = deque()
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= limit:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


class Chain:
    """The result of the item before, for `map_threads` items that need it (a face tracked from one frame to
    the next): `link(items)` pairs each item with a `Chain` whose `before()` waits for the previous item's
    result. Items are submitted in order, so the one waited for is always running or done: no deadlock."""

    def __init__(self) -> None:
        self._done = threading.Event()
        self._value: object = None
        self._previous: Chain | None = None

    def before(self) -> object:
        """The previous item's result (None for the first item, or when it failed)."""
        if self._previous is None:
            return None
        self._previous._done.wait()
        return self._previous._value

    def set(self, value: object) -> None:
        self._value = value
        self._done.set()

    @staticmethod
    def link(items: Iterable[T]) -> Iterator[tuple[T, "Chain"]]:
        previous = None
        for item in items:
            chain = Chain()
            chain._previous = previous
            previous = chain
            yield item, chain


# The whole-image fit (see WholeImageFit for the measured numbers behind these).
DRIFT_SHIFT = 0.1  # box shift for the drift measure, as a fraction of the image's longest side
WHOLE_IMAGE_DRIFT_WEIGHT = 2.0  # weight of drift against hog_score in the fit's score
WHOLE_IMAGE_MIN_SCORE = -2.1  # least score of a whole-image fit taken as a face


@dataclass(frozen=True)
class PipelineConfig:
    """How faces are found and cropped. Saved with preprocessed data and with every detector checkpoint."""

    crop_size: int = 224  # side of the square aligned crop, pixels
    margin: float = 1.3  # the face spans 1/margin of the crop side (face box scaled by `margin`)
    frames: int = 32  # frames sampled uniformly per video
    detector: str = "dlib-hog"  # a name in realface.faces.detect.DETECTORS
    assume_cropped: bool = False  # image with no detected face: use the whole image as the face box
    detect_max_side: int = 640  # longest side the detector sees; larger images and frames are shrunk
    detect_min_side: int = 320  # shorter images are enlarged to this for detection (80 px HOG window)
    track_iou: float = 0.2  # least IoU that links boxes of consecutive sampled frames into one track
    crop_like_side: int = 512  # a near-square image at most this big with no face "looks like a face crop"
    fallbacks: bool = True  # when the detector misses: padded retry, CNN detector, whole-image fit (module doc)

    @property
    def crop(self) -> CropSettings:
        """The crop part of these settings: what a model trained on the faces expects at detection."""
        return CropSettings(size=self.crop_size, margin=self.margin, detector=self.detector)

    @classmethod
    def for_crop(cls, crop: CropSettings, **rest: object) -> PipelineConfig:
        """Settings that crop faces exactly as `crop` says (the rest: frames, assume_cropped, ...)."""
        return cls(crop_size=crop.size, margin=crop.margin, detector=crop.detector, **rest)  # type: ignore[arg-type]

    def __post_init__(self) -> None:
        if not 32 <= self.crop_size <= 2048:
            raise RealfaceError(f"crop size must be within 32..2048 pixels, got {self.crop_size}")
        if not 0.5 <= self.margin <= 4.0:
            raise RealfaceError(f"margin must be within 0.5..4 (1.3 = face box scaled by 1.3), got {self.margin}")
        if self.frames < 1:
            raise RealfaceError(f"frames per video must be at least 1, got {self.frames}")
        if self.detector not in DETECTORS:
            raise RealfaceError(f"unknown detector {self.detector!r}; choose one of {', '.join(sorted(DETECTORS))}")
        if not 0 < self.detect_min_side <= self.detect_max_side:
            raise RealfaceError(
                f"need 0 < detect_min_side <= detect_max_side, got {self.detect_min_side}, {self.detect_max_side}"
            )
        if not 0.0 < self.track_iou < 1.0:
            raise RealfaceError(f"track_iou must be within (0, 1), got {self.track_iou}")


@dataclass(frozen=True)
class Face:
    """One aligned face."""

    crop: np.ndarray  # (S, S, 3) uint8 RGB, S = crop_size
    landmarks: np.ndarray  # (68, 2) float32, crop pixels
    bbox: tuple[float, float, float, float]  # x0, y0, x1, y1 in source pixels (detector box)
    score: float  # detector score; whole-image: the fit's HOG score; ASSUMED_SCORE under assume_cropped
    source_landmarks: np.ndarray  # (68, 2) float32, source pixels
    matrix: np.ndarray  # (2, 3) float64, source pixels -> crop pixels
    found_by: str = "hog"  # which step found the face: one of FOUND_BY (or the detector's label)


@dataclass(frozen=True)
class FrameFaces:
    """The main face in one sampled video frame, or None with the reason in `note`."""

    frame: int  # frame index in presentation order
    face: Face | None
    note: str = ""  # why face is None: "no face detected", "main face not detected", "frame not decodable"


def looks_like_face_crop(height: int, width: int, max_side: int = 512) -> bool:
    """A small, near-square image: probably a face crop (as in UTKFace or DFDC)."""
    return max(height, width) <= max_side and 0.7 <= width / height <= 1.4


def no_face_message(height: int, width: int, config: PipelineConfig) -> str:
    """One line saying no face was found, suggesting --assume-cropped when the image looks like a crop."""
    if looks_like_face_crop(height, width, config.crop_like_side) and not config.assume_cropped:
        return (
            f"no face found, not even by the fallbacks for tight crops; if the image ({width}x{height}) is a "
            "face crop, --assume-cropped takes it whole"
        )
    return f"no face found in the {width}x{height} image"


def equalize(rgb: np.ndarray) -> np.ndarray:
    """rgb (H, W, 3) uint8 with its lightness (L of CIELAB) equalized by CLAHE (clip 2, 4x4 tiles)."""
    lab = cv2.cvtColor(rgb, cv2.COLOR_RGB2LAB)
    lab[..., 0] = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(4, 4)).apply(lab[..., 0])
    return cv2.cvtColor(lab, cv2.COLOR_LAB2RGB)


def pad_for_detection(rgb: np.ndarray, border: int, fraction: float = PAD_FRACTION) -> tuple[np.ndarray, int]:
    """Extend the image by `fraction` of its longest side on each side (cv2 border mode `border`), so a face
    that fills the image has context around it. Returns the padded image and the padding in pixels."""
    pad = int(round(fraction * max(rgb.shape[:2])))
    return cv2.copyMakeBorder(rgb, pad, pad, pad, pad, border), pad


def detect_padded(detector, rgb: np.ndarray, border: int, **kwargs) -> list[Detection]:
    """Faces found in the padded image, in pixels of `rgb`; boxes centred in the padding (mirror images of
    a face near the border) are dropped. kwargs go to `detector.detect`."""
    h, w = rgb.shape[:2]
    padded, pad = pad_for_detection(rgb, border)
    found = []
    for d in detector.detect(padded, **kwargs):
        x0, y0, x1, y1 = (v - pad for v in d.box)
        if 0 <= (x0 + x1) / 2 < w and 0 <= (y0 + y1) / 2 < h:
            found.append(Detection((x0, y0, x1, y1), d.score))
    return found


def link_tracks(boxes: list[list[tuple[float, float, float, float]]], min_iou: float) -> list[dict[int, int]]:
    """Link boxes across sampled frames into tracks by IoU with each track's last box (gaps allowed).

    boxes[t] are the boxes of sampled frame t. Returns tracks as {t: index into boxes[t]}.
    Greedy: in each frame, the pairs (track, box) of highest IoU are linked first.
    """
    tracks: list[dict[int, int]] = []
    last: list[tuple[float, float, float, float]] = []
    for t, frame_boxes in enumerate(boxes):
        pairs = sorted(
            ((iou(last[k], b), k, j) for k in range(len(tracks)) for j, b in enumerate(frame_boxes)),
            reverse=True,
        )
        used_tracks: set[int] = set()
        used_boxes: set[int] = set()
        for overlap, k, j in pairs:
            if overlap < min_iou:
                break
            if k in used_tracks or j in used_boxes:
                continue
            tracks[k][t] = j
            last[k] = frame_boxes[j]
            used_tracks.add(k)
            used_boxes.add(j)
        for j, b in enumerate(frame_boxes):
            if j not in used_boxes:
                tracks.append({t: j})
                last.append(b)
    return tracks


def main_track(tracks: list[dict[int, int]], boxes: list[list[tuple[float, float, float, float]]]) -> dict[int, int]:
    """The track of the largest face that persists: most total face size (sum of sqrt(area)) over frames."""

    def weight(track: dict[int, int]) -> float:
        total = 0.0
        for t, j in track.items():
            x0, y0, x1, y1 = boxes[t][j]
            total += float(np.sqrt(max(0.0, x1 - x0) * max(0.0, y1 - y0)))
        return total

    return max(tracks, key=weight, default={})


@dataclass(frozen=True)
class WholeImageFit:
    """Whether the whole image is one face, judged from a 68-landmark fit in the whole-image box.

    Two measures, neither from the landmark fit's own confidence (a shape predictor always returns a shape):
    - hog_score: dlib's HOG SVM score of the best window overlapping the whole-image box (IoU >= 0.3) on the
      image padded by reflection, with the threshold lowered to see near misses (-inf when no window is near).
      A detection needs >= 0, so every image that reaches this step scores below 0; faces stay near it.
    - drift: how far the 68 landmarks move when the box moves. The box is shifted by DRIFT_SHIFT of the
      image's longest side left, right, up and down and the landmarks fitted again; drift is their mean
      displacement over the shift. On a face the landmarks stay on the eyes, nose and mouth (drift well
      below 1); on a texture they follow the box (about 1).
    The fit passes when hog_score - WHOLE_IMAGE_DRIFT_WEIGHT * drift >= WHOLE_IMAGE_MIN_SCORE.

    Measured by `benchmarks/bench_tight_crops.py` on three seeded samples (each 500 DFDC crops, 500 UTKFace
    crops, 100 non-faces; BENCHMARKS.md, 2026-12-03), score of the pictures that reach this step:
    - faces taken: -1.72, -1.78, -1.94, -2.07 (dark, blurred or turned DFDC crops, one blurred UTKFace photo);
    - crops refused: -2.37 (a DFDC "face" crop that shows a logo, rightly refused) and -2.42 (a blurred half
      face, a miss);
    - non-faces, the highest of each sample: -2.48, -2.33, -2.24 (the rest down to -inf).
    The threshold, -2.1, was set from the first two samples (midway between the lowest face then, -1.94, and
    the highest non-face, -2.33); the third was held out: no face invented, one crop missed. The two classes
    overlap near -2.3, so the threshold leans to refusing: a missed crop says "no face found" (and
    `--assume-cropped` remains), an invented face would be scored as if it were one.
    The agreement of dlib's 5-point and 68-point predictors was measured too and left out: on the crops
    that reach this step it spans 0.03-0.20 inter-ocular distances, on the non-faces that HOG nearly takes
    0.11-0.21.
    """

    hog_score: float
    drift: float
    landmarks: np.ndarray  # (68, 2) float32, the 68-point fit in the whole-image box

    @property
    def score(self) -> float:
        return self.hog_score - WHOLE_IMAGE_DRIFT_WEIGHT * self.drift

    @property
    def measures(self) -> dict[str, float]:
        return {"hog_score": self.hog_score, "drift": self.drift, "score": self.score}

    @property
    def ok(self) -> bool:
        return self.score >= WHOLE_IMAGE_MIN_SCORE


def landmark_drift(rgb: np.ndarray, box: tuple[float, float, float, float], landmarks: np.ndarray) -> float:
    """Mean landmark displacement over the box shift when `box` moves by DRIFT_SHIFT (4 directions)."""
    shift = DRIFT_SHIFT * max(rgb.shape[:2])
    x0, y0, x1, y1 = box
    moves = []
    for dx, dy in ((shift, 0.0), (-shift, 0.0), (0.0, shift), (0.0, -shift)):
        moved = find_landmarks(rgb, (x0 + dx, y0 + dy, x1 + dx, y1 + dy))
        moves.append(float(np.linalg.norm(moved - landmarks, axis=1).mean()) / shift)
    return float(np.mean(moves))


def whole_image_fit(rgb: np.ndarray, hog: DlibHogDetector | None = None) -> WholeImageFit:
    """Fit 68 landmarks in the whole-image box of `rgb` (H, W, 3) uint8 and measure how face-like it is."""
    h, w = rgb.shape[:2]
    box = (0.0, 0.0, float(w), float(h))
    landmarks = find_landmarks(rgb, box)
    near = detect_padded(hog or DlibHogDetector(), rgb, cv2.BORDER_REFLECT_101, threshold=-3.0)
    hog_score = max((d.score for d in near if iou(d.box, box) >= 0.3), default=float("-inf"))
    return WholeImageFit(hog_score=hog_score, drift=landmark_drift(rgb, box, landmarks), landmarks=landmarks)


class FacePipeline:
    """Detect, landmark, align and crop faces in images and videos, as `config` says.

    Models load on first use, once per process.
    """

    def __init__(self, config: PipelineConfig | None = None) -> None:
        self.config = config or PipelineConfig()
        self._detector = None
        self._cnn = None
        self._hog = None

    @property
    def detector(self):  # -> FaceDetector
        if self._detector is None:
            self._detector = self.new_detector()
        return self._detector

    def new_detector(self):  # -> FaceDetector
        """A detector as the config says (one per thread: dlib's keeps its image pyramid inside it)."""
        c = self.config
        return make_detector(c.detector, max_side=c.detect_max_side, min_side=c.detect_min_side)

    @property
    def cnn(self) -> DlibCnnDetector:
        """The CNN detector of the fallback chain (loaded on first use)."""
        if self._cnn is None:
            self._cnn = DlibCnnDetector(max_side=self.config.detect_max_side, min_side=CNN_MIN_SIDE)
        return self._cnn

    @property
    def hog(self) -> DlibHogDetector:
        """The HOG detector that scores whole-image fits (whatever the configured detector)."""
        if self._hog is None:
            self._hog = DlibHogDetector(max_side=self.config.detect_max_side, min_side=self.config.detect_min_side)
        return self._hog

    def face_from_box(self, rgb: np.ndarray, detection: Detection, found_by: str | None = None) -> Face:
        """Landmarks in the box at full resolution, then alignment and crop."""
        source_landmarks = find_landmarks(rgb, detection.box)
        aligned = align_face(rgb, source_landmarks, self.config.crop_size, self.config.margin)
        return Face(
            crop=aligned.crop,
            landmarks=aligned.landmarks,
            bbox=tuple(float(v) for v in detection.box),
            score=detection.score,
            source_landmarks=source_landmarks,
            matrix=aligned.matrix,
            found_by=found_by or self.detector.label,
        )

    def detect(self, rgb: np.ndarray) -> list[Detection]:
        """Face boxes in source pixels, best first (the configured detector only)."""
        return self.detector.detect(rgb)

    def find(self, rgb: np.ndarray) -> tuple[list[Detection], str]:
        """Face boxes in source pixels and the step that found them, trying the steps of the module docstring
        in order until one finds a face; ([], "") when none does."""
        detections = self.detect(rgb)
        if detections or not self.config.fallbacks:
            return detections, self.detector.label
        for border in PAD_BORDERS:
            detections = detect_padded(self.detector, rgb, border)
            if detections:
                return detections, f"{self.detector.label}-padded"
        if self.detector.label != DlibCnnDetector.label:  # already tried when the CNN is the detector
            detections = self.cnn.detect(rgb)
            if detections:
                return detections, self.cnn.label
        detections = self.cnn.detect(equalize(rgb))
        if detections:
            return detections, f"{self.cnn.label}-equalized"
        h, w = rgb.shape[:2]
        if looks_like_face_crop(h, w, self.config.crop_like_side):
            fit = whole_image_fit(rgb, self.hog)
            if fit.ok:
                return [Detection((0.0, 0.0, float(w), float(h)), fit.hog_score)], "whole-image"
        return [], ""

    def faces_in_image(self, rgb: np.ndarray) -> list[Face]:
        """Every face in an image, largest first; [] when none (see `no_face_message`).

        Steps of the module docstring, each only when the ones before found nothing. With `assume_cropped`,
        an image where still no face is found becomes one face whose box is the whole image.
        """
        h, w = rgb.shape[:2]
        detections, found_by = self.find(rgb)
        if not detections and self.config.assume_cropped:
            detections, found_by = [Detection((0.0, 0.0, float(w), float(h)), ASSUMED_SCORE)], "assumed"
        detections = sorted(detections, key=lambda d: -d.area)
        return [self.face_from_box(rgb, d, found_by) for d in detections]

    def faces_in_video(
        self, path: Path, limits: DecodeLimits = DEFAULT_LIMITS, found: Callable[[list[Face]], None] | None = None
    ) -> list[FrameFaces]:
        """The main face (largest face that persists) in each of `config.frames` uniformly sampled frames.

        Every sampled frame is reported; frames without the main face have face None and a note. `found`, when
        given, is called with each frame's faces as soon as they are found, in frame order, while later frames
        are still being decoded and searched (a scanner scores them meanwhile); the main faces are among them.
        Raises InputError when the file is not a readable video or no frame decodes, LimitError for frames
        over `limits` (frame size, memory, deadline).

        Faces are tracked: every `SEARCH_EVERY`-th sampled frame is searched whole; a frame between is searched
        only near the faces of the frame before (`detect_near`), and whole when one of them is not found again
        there (a face that left, turned or moved far). That costs about a third of searching every frame whole;
        the boxes are the same or a HOG pyramid level apart, and the landmarks the crop follows move by a few
        pixels at most (see `WorkingScaleDetector`; tested on the FF++ samples). Frames are
        searched in `VIDEO_WORKERS` threads at once (dlib releases the GIL while it detects), each with its own
        detector; a tracked frame waits for the frame before it.
        Fallbacks stay bounded: only when the detector finds no face in any sampled frame, the fallback
        steps run on `VIDEO_PROBE_FRAMES` frames spread over the video, and on all frames only if they find
        a face there.
        """
        indices, frames = sample_frames(Path(path), self.config.frames, limits)
        own = threading.local()  # a detector keeps its image pyramid inside it: one per thread

        def frame_faces(item: tuple[tuple[int, tuple[int, np.ndarray]], Chain]) -> tuple[int, list[Face]]:
            (t, (index, rgb)), chain = item
            try:
                if not hasattr(own, "detector"):
                    own.detector = self.new_detector()
                before = chain.before() if t % SEARCH_EVERY else None
                boxes = [f.bbox for f in before[1]] if before else []
                detections = own.detector.detect_near(rgb, boxes) if boxes else []
                if len(detections) < len(boxes) or not boxes:
                    detections = own.detector.detect(rgb)
                result = index, [self.face_from_box(rgb, d) for d in detections]
            except BaseException:
                chain.set(None)
                raise
            chain.set(result)
            return result

        items = Chain.link(enumerate(frames))
        faces: dict[int, list[Face]] = {}
        for index, in_frame in map_threads(frame_faces, items, VIDEO_WORKERS, FRAMES_IN_FLIGHT):
            faces[index] = in_frame
            if found is not None and in_frame:
                found(in_frame)
        if not faces:
            raise InputError(f"no frame could be decoded (of {len(indices)} sampled)")
        if self.config.fallbacks and not any(faces.values()):
            faces = self._fallback_frames(Path(path), sorted(faces), limits)
            if found is not None:
                for in_frame in faces.values():
                    found(in_frame)
        decoded = [i for i in indices if i in faces]
        boxes = [[f.bbox for f in faces[i]] for i in decoded]
        main = main_track(link_tracks(boxes, self.config.track_iou), boxes)
        result = []
        for t, index in enumerate(decoded):
            if t in main:
                result.append(FrameFaces(index, faces[index][main[t]]))
            else:
                note = "main face not detected" if faces[index] else "no face detected"
                result.append(FrameFaces(index, None, note))
        result.extend(FrameFaces(i, None, "frame not decodable") for i in indices if i not in faces)
        return sorted(result, key=lambda r: r.frame)

    def _fallback_frames(
        self, path: Path, decoded: list[int], limits: DecodeLimits = DEFAULT_LIMITS
    ) -> dict[int, list[Face]]:
        """Faces of the `decoded` frames (sorted indices) by the fallback chain, decoding them again (a video
        without faces is rare; keeping every frame in memory for it is not worth it): probe frames first, the
        rest only when a probe frame has a face."""
        spread = np.linspace(0, len(decoded) - 1, min(VIDEO_PROBE_FRAMES, len(decoded)))
        probes = sorted({decoded[round(k)] for k in spread})
        rest = [i for i in decoded if i not in probes]
        faces: dict[int, list[Face]] = {i: [] for i in decoded}
        info = probe_video(path, limits)
        for batch in (probes, rest):
            if batch is rest and not any(faces.values()):
                break
            for index, rgb in read_frames(path, batch, info, limits):
                detections, found_by = self.find(rgb)
                faces[index] = [self.face_from_box(rgb, d, found_by) for d in detections]
        return faces
