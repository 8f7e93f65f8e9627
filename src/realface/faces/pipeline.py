"""The face pipeline shared by `realface preprocess` (training data) and detection: detect, find 68
landmarks, align to the 5-point template, crop. Using one `FacePipeline` for both keeps the crops a model
sees at detection time identical to those it was trained on.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from realface.errors import InputError, RealfaceError
from realface.faces.align import CropSettings, align_face
from realface.faces.detect import DETECTORS, Detection, iou, make_detector
from realface.faces.landmarks import find_landmarks
from realface.faces.media import DEFAULT_LIMITS, sample_frames
from realface.limits import DecodeLimits

# dlib HOG scores are >= 0; a whole-image box taken under `assume_cropped` gets this score instead.
ASSUMED_SCORE = -1.0


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
    score: float  # detector score; ASSUMED_SCORE for a whole-image box under assume_cropped
    source_landmarks: np.ndarray  # (68, 2) float32, source pixels
    matrix: np.ndarray  # (2, 3) float64, source pixels -> crop pixels


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
        return f"no face found; the image ({width}x{height}) looks like a face crop: try --assume-cropped"
    return f"no face found in the {width}x{height} image"


def _pad_for_detection(rgb: np.ndarray, fraction: float = 0.3) -> tuple[np.ndarray, int]:
    """Replicate the border by `fraction` of the longest side, so a face that fills the image has context."""
    pad = int(round(fraction * max(rgb.shape[:2])))
    return cv2.copyMakeBorder(rgb, pad, pad, pad, pad, cv2.BORDER_REPLICATE), pad


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


class FacePipeline:
    """Detect, landmark, align and crop faces in images and videos, as `config` says.

    Models load on first use, once per process.
    """

    def __init__(self, config: PipelineConfig | None = None) -> None:
        self.config = config or PipelineConfig()
        self._detector = None

    @property
    def detector(self):  # -> FaceDetector
        if self._detector is None:
            c = self.config
            self._detector = make_detector(c.detector, max_side=c.detect_max_side, min_side=c.detect_min_side)
        return self._detector

    def face_from_box(self, rgb: np.ndarray, detection: Detection) -> Face:
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
        )

    def detect(self, rgb: np.ndarray) -> list[Detection]:
        """Face boxes in source pixels, best first."""
        return self.detector.detect(rgb)

    def faces_in_image(self, rgb: np.ndarray) -> list[Face]:
        """Every face in an image, largest first; [] when none (see `no_face_message`).

        An image that looks like a face crop is searched again with its border extended (the detector needs
        some context around a face). With `assume_cropped`, an image where still no face is found becomes
        one face whose box is the whole image.
        """
        h, w = rgb.shape[:2]
        detections = self.detect(rgb)
        if not detections and looks_like_face_crop(h, w, self.config.crop_like_side):
            padded, pad = _pad_for_detection(rgb)
            detections = [
                Detection((x0 - pad, y0 - pad, x1 - pad, y1 - pad), d.score)
                for d in self.detect(padded)
                for x0, y0, x1, y1 in [d.box]
            ]
        if not detections and self.config.assume_cropped:
            detections = [Detection((0.0, 0.0, float(w), float(h)), ASSUMED_SCORE)]
        detections = sorted(detections, key=lambda d: -d.area)
        return [self.face_from_box(rgb, d) for d in detections]

    def faces_in_video(self, path: Path, limits: DecodeLimits = DEFAULT_LIMITS) -> list[FrameFaces]:
        """The main face (largest face that persists) in each of `config.frames` uniformly sampled frames.

        Every sampled frame is reported; frames without the main face have face None and a note.
        Raises InputError when the file is not a readable video or no frame decodes, LimitError for frames
        over `limits` (frame size, memory, deadline).
        """
        indices, frames = sample_frames(Path(path), self.config.frames, limits)
        faces: dict[int, list[Face]] = {}
        for index, rgb in frames:
            faces[index] = [self.face_from_box(rgb, d) for d in self.detect(rgb)]
        if not faces:
            raise InputError(f"no frame could be decoded (of {len(indices)} sampled)")
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
