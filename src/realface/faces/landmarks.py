"""68-point facial landmarks (iBUG 300-W order) with dlib's shape predictor.

The model file ships in the `face_recognition_models` package (as does dlib's CNN face detector). We locate
it without importing that package (its `__init__` needs `pkg_resources`). The predictor is loaded once per
process.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import numpy as np

from realface.errors import RealfaceError

PREDICTOR_FILE = "shape_predictor_68_face_landmarks.dat"


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


@functools.lru_cache(maxsize=1)
def _predictor():  # -> dlib.shape_predictor
    import dlib

    return dlib.shape_predictor(str(predictor_path()))


def find_landmarks(rgb: np.ndarray, box: tuple[float, float, float, float]) -> np.ndarray:
    """68 landmarks of the face in `box` (x0, y0, x1, y1 pixels): (68, 2) float32 x, y in pixels of `rgb`.

    rgb: (H, W, 3) uint8. The box may extend past the image.
    """
    import dlib

    x0, y0, x1, y1 = (int(round(v)) for v in box)
    shape = _predictor()(np.ascontiguousarray(rgb), dlib.rectangle(x0, y0, x1 - 1, y1 - 1))
    return np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float32)
