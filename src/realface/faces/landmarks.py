"""Facial landmarks with dlib's shape predictors: 68 points (iBUG 300-W order) and 5 points.

The model files ship in the `face_recognition_models` package (as does dlib's CNN face detector). We locate
them without importing that package (its `__init__` needs `pkg_resources`). Each predictor is loaded once per
process.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import numpy as np

from realface.errors import RealfaceError

PREDICTOR_FILE = "shape_predictor_68_face_landmarks.dat"
PREDICTOR_5_FILE = "shape_predictor_5_face_landmarks.dat"
# dlib's 5 points as 68-point indices: outer and inner corner of the image-right eye, outer and inner corner
# of the image-left eye, the base of the nose.
FIVE_IN_68 = (45, 42, 36, 39, 33)


def model_path(filename: str) -> Path:
    """Path of a model file inside the installed `face_recognition_models` package."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise RealfaceError("face_recognition_models is not installed: pip install face-recognition-models")
    for location in spec.submodule_search_locations:
        path = Path(location) / "models" / filename
        if path.is_file():
            return path
    raise RealfaceError(f"{filename} not found in the face_recognition_models package")


def predictor_path() -> Path:
    """Path of dlib's 68-point model inside the installed `face_recognition_models` package."""
    return model_path(PREDICTOR_FILE)


@functools.lru_cache(maxsize=2)
def _predictor(filename: str):  # -> dlib.shape_predictor
    import dlib

    return dlib.shape_predictor(str(model_path(filename)))


def _fit(filename: str, rgb: np.ndarray, box: tuple[float, float, float, float]) -> np.ndarray:
    import dlib

    x0, y0, x1, y1 = (int(round(v)) for v in box)
    shape = _predictor(filename)(np.ascontiguousarray(rgb), dlib.rectangle(x0, y0, x1 - 1, y1 - 1))
    return np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float32)


def find_landmarks(rgb: np.ndarray, box: tuple[float, float, float, float]) -> np.ndarray:
    """68 landmarks of the face in `box` (x0, y0, x1, y1 pixels): (68, 2) float32 x, y in pixels of `rgb`.

    rgb: (H, W, 3) uint8. The box may extend past the image.
    """
    return _fit(PREDICTOR_FILE, rgb, box)


def find_five_landmarks(rgb: np.ndarray, box: tuple[float, float, float, float]) -> np.ndarray:
    """dlib's 5 landmarks (eye corners, nose base; the 68-point indices `FIVE_IN_68`): (5, 2) float32 pixels.

    A second, independently trained predictor: where it agrees with the 68-point one, a face is in the box.
    """
    return _fit(PREDICTOR_5_FILE, rgb, box)
