"""Face detectors behind one small interface, looked up by name in `DETECTORS`.

A detector takes an RGB image at its own resolution and returns face boxes in that image's pixel
coordinates. To add a backend, write a class with `detect(rgb) -> list[Detection]`, `detect_near(rgb, boxes)
-> list[Detection]` (faces around known boxes only, for tracking a face through a video; `WorkingScaleDetector`
gives both from one `_run`) and a short `label` (what `found_by` says for its faces), and register a factory:
`DETECTORS["my-backend"] = MyDetector` (factories take the keyword arguments `max_side` and `min_side`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from realface.errors import RealfaceError


@dataclass(frozen=True)
class Detection:
    """A face box (x0, y0, x1, y1) in pixels of the image given to the detector, and its score."""

    box: tuple[float, float, float, float]
    score: float

    @property
    def area(self) -> float:
        x0, y0, x1, y1 = self.box
        return max(0.0, x1 - x0) * max(0.0, y1 - y0)


class FaceDetector(Protocol):
    """Finds faces in an RGB image."""

    label: str  # short name of the backend in outputs ("hog", "cnn")

    def detect(self, rgb: np.ndarray) -> list[Detection]:
        """rgb: (H, W, 3) uint8. Returns every face found, best score first."""
        ...

    def detect_near(self, rgb: np.ndarray, boxes: list[tuple[float, float, float, float]]) -> list[Detection]:
        """The faces `detect` would find around `boxes` (source pixels), searching only there."""
        ...


def working_scale(height: int, width: int, max_side: int, min_side: int) -> float:
    """Factor that brings an image's longest side into [min_side, max_side] (1.0 when already there)."""
    longest = max(height, width)
    if longest > max_side:
        return max_side / longest
    if longest < min_side:
        return min_side / longest
    return 1.0


def resize_by(rgb: np.ndarray, scale: float) -> np.ndarray:
    """Resize by `scale` (area averaging when shrinking, bilinear when enlarging)."""
    if scale == 1.0:
        return rgb
    h, w = rgb.shape[:2]
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(rgb, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)


class WorkingScaleDetector:
    """A detector run at a bounded working resolution: images are scaled so their longest side lies in
    [min_side, max_side] (big frames shrunk for speed, small crops enlarged because dlib's windows are about 80
    pixels), and boxes are mapped back. Subclasses give `_run(small)`: the faces in the scaled image, in its
    pixels.

    `detect_near` searches windows of the scaled image around known boxes only (about a sixth of the work of a
    640x480 frame for one face). Each window starts on a multiple of `NEAR_GRID` pixels of the scaled image: dlib
    computes 8-pixel HOG cells on a pyramid that shrinks by 5/6 a level, so a window that starts on a multiple of
    48 sees the same cells as the whole image on the pyramid's first two levels (faces up to about 115 pixels at
    the working scale) and nearly the same above (the CNN detector's windows are placed the same way, unmeasured). The boxes then match `detect`'s
    (the scores differ a little: less context at the window's edge); a larger face may come out one pyramid level
    apart (a box 5/6 or 6/5 the size, as HOG's boxes also jump from one frame to the next), and the 68 landmarks
    fitted in either box differ by a few pixels at most (measured on the FF++ sample videos).
    """

    NEAR_GRID = 48
    NEAR_REACH = 1.1  # a window reaches this many face widths beyond the box's centre on each side

    def __init__(self, max_side: int, min_side: int) -> None:
        if not 0 < min_side <= max_side:
            raise RealfaceError(f"detector sizes need 0 < min_side <= max_side, got {min_side}, {max_side}")
        self.max_side = max_side
        self.min_side = min_side

    def _run(self, small: np.ndarray, **options: float) -> list[Detection]:
        raise NotImplementedError

    def _scaled(self, rgb: np.ndarray) -> tuple[np.ndarray, float]:
        h, w = rgb.shape[:2]
        scale = working_scale(h, w, self.max_side, self.min_side)
        return np.ascontiguousarray(resize_by(rgb, scale)), scale

    def detect(self, rgb: np.ndarray, **options: float) -> list[Detection]:
        """Every face in `rgb`, best score first; options go to the backend (HOG: `threshold`)."""
        small, scale = self._scaled(rgb)
        return sorted((shifted(d, 0, 0, scale) for d in self._run(small, **options)), key=lambda d: -d.score)

    def detect_near(self, rgb: np.ndarray, boxes: list[tuple[float, float, float, float]]) -> list[Detection]:
        """Faces in windows around `boxes` (source pixels), best score first; a face two windows share is
        listed once."""
        small, scale = self._scaled(rgb)
        h, w = small.shape[:2]
        found: list[Detection] = []
        for box in boxes:
            x0, y0, x1, y1 = (v * scale for v in box)
            reach = self.NEAR_REACH * max(x1 - x0, y1 - y0)
            cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
            left = int(max(0.0, cx - reach)) // self.NEAR_GRID * self.NEAR_GRID
            top = int(max(0.0, cy - reach)) // self.NEAR_GRID * self.NEAR_GRID
            right, bottom = int(min(w, cx + reach + 1)), int(min(h, cy + reach + 1))
            if right <= left or bottom <= top:
                continue
            window = np.ascontiguousarray(small[top:bottom, left:right])
            for d in self._run(window):
                d = shifted(d, left, top, scale)
                if all(iou(d.box, seen.box) < 0.5 for seen in found):
                    found.append(d)
        return sorted(found, key=lambda d: -d.score)


def shifted(d: Detection, left: float, top: float, scale: float) -> Detection:
    """A box found in a window at (left, top) of an image scaled by `scale`, in source pixels."""
    x0, y0, x1, y1 = d.box
    return Detection(((x0 + left) / scale, (y0 + top) / scale, (x1 + left) / scale, (y1 + top) / scale), d.score)


def _rect_box(r) -> tuple[float, float, float, float]:  # dlib.rectangle -> half-open box
    return (float(r.left()), float(r.top()), float(r.right() + 1), float(r.bottom() + 1))


# dlib's frontal face detector as `dlib.get_frontal_face_detector().save(...)` writes it: the same five HOG filters,
# read from this file in milliseconds where building it from dlib's embedded copy takes about a second.
FRONTAL_FILE = Path(__file__).with_name("data") / "frontal_face_detector.svm"


class DlibHogDetector(WorkingScaleDetector):
    """dlib's HOG + linear SVM frontal face detector, run at a bounded working resolution (see
    `WorkingScaleDetector`). Faces narrower than about 80 / scale source pixels are missed.
    """

    label = "hog"

    def __init__(self, max_side: int = 640, min_side: int = 320) -> None:
        import dlib

        super().__init__(max_side, min_side)
        self._detector = dlib.fhog_object_detector(str(FRONTAL_FILE))

    def _run(self, small: np.ndarray, threshold: float = 0.0) -> list[Detection]:
        """threshold: least SVM score kept (dlib's `adjust_threshold`); below 0 also returns near misses."""
        rects, scores, _ = self._detector.run(small, 0, threshold)
        return [Detection(_rect_box(r), float(s)) for r, s in zip(rects, scores)]


class DlibCnnDetector(WorkingScaleDetector):
    """dlib's CNN face detector (max-margin object detection, `mmod_human_face_detector.dat` from the
    `face_recognition_models` package), run at a bounded working resolution (see `WorkingScaleDetector`).

    Slower than HOG (about 0.5 s for a 224-pixel crop on one CPU core) but it finds faces HOG misses: turned,
    dark, blurred or cut by the image border. Its window is about 80 pixels, so `min_side` can be lower than
    HOG's. Scores are the network's confidences (detections at or above 0).
    """

    label = "cnn"

    def __init__(self, max_side: int = 640, min_side: int = 160) -> None:
        import dlib

        from realface.faces.landmarks import model_path

        super().__init__(max_side, min_side)
        self._detector = dlib.cnn_face_detection_model_v1(str(model_path("mmod_human_face_detector.dat")))

    def _run(self, small: np.ndarray) -> list[Detection]:
        return [Detection(_rect_box(d.rect), float(d.confidence)) for d in self._detector(small, 0)]


DETECTORS: dict[str, Callable[..., FaceDetector]] = {
    "dlib-hog": DlibHogDetector,
    "dlib-cnn": DlibCnnDetector,
}


def make_detector(name: str, *, max_side: int = 640, min_side: int = 320) -> FaceDetector:
    """The detector registered as `name`."""
    try:
        factory = DETECTORS[name]
    except KeyError:
        raise RealfaceError(f"unknown detector {name!r}; choose one of {', '.join(sorted(DETECTORS))}") from None
    return factory(max_side=max_side, min_side=min_side)


def iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    """Intersection over union of two (x0, y0, x1, y1) boxes."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0
