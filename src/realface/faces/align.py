"""5-point similarity alignment of a face to a canonical template, and the crop around it.

Template: the ArcFace 112x112 five points (image-left eye centre, image-right eye centre, nose tip,
image-left and image-right mouth corners) divided by 112, i.e. in a unit square where the face fills the
square. With margin m the points are pulled towards the centre, p = 0.5 + (t - 0.5) / m, so the face
occupies 1/m of the crop's side (m = 1.3: the face box scaled by 1.3, as FSFM and DeepfakeBench crop).
Crop pixel coordinates are size * p.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

# (5, 2) x, y in the unit square.
TEMPLATE_5 = (
    np.array(
        [
            [38.2946, 51.6963],
            [73.5318, 51.5014],
            [56.0252, 71.7366],
            [41.5493, 92.3655],
            [70.7299, 92.2041],
        ],
        dtype=np.float64,
    )
    / 112.0
)


TEMPLATES: dict[str, np.ndarray] = {"arcface5": TEMPLATE_5}  # alignment templates by name (unit square)


@dataclass(frozen=True)
class CropSettings:
    """How a face crop is made: what a model's weights expect of their input, saved with preprocessed data
    (preprocess.json) and with every checkpoint, and used again at detection. A model fed crops unlike its
    training crops fails silently (e.g. AUC falls to chance), so every stage carries exactly this."""

    size: int = 224  # side of the square aligned crop, pixels
    margin: float = 1.3  # the face spans 1/margin of the crop side (face box scaled by `margin`)
    detector: str = "dlib-hog"  # face detector backend (realface.faces.detect.DETECTORS)
    template: str = "arcface5"  # 5-point alignment template, a name in TEMPLATES

    def __post_init__(self) -> None:
        from realface.errors import RealfaceError

        if not 32 <= self.size <= 2048:
            raise RealfaceError(f"crop size must be within 32..2048 pixels, got {self.size}")
        if not 0.5 <= self.margin <= 4.0:
            raise RealfaceError(f"margin must be within 0.5..4 (1.3 = face box scaled by 1.3), got {self.margin}")
        if self.template not in TEMPLATES:
            raise RealfaceError(f"unknown alignment template {self.template!r}; choose one of {', '.join(TEMPLATES)}")

    def to_dict(self) -> dict[str, object]:
        return {"size": self.size, "margin": self.margin, "detector": self.detector, "template": self.template}

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> CropSettings:
        from realface.errors import RealfaceError

        unknown = sorted(set(data) - {"size", "margin", "detector", "template"})
        if unknown:
            raise RealfaceError(f"unknown crop settings: {', '.join(unknown)}")
        return cls(**data)  # type: ignore[arg-type]


@dataclass(frozen=True)
class AlignedFace:
    """An aligned crop, the 2x3 matrix taking source pixels to crop pixels, and landmarks in the crop."""

    crop: np.ndarray  # (size, size, 3) uint8 RGB
    matrix: np.ndarray  # (2, 3) float64: crop_xy = matrix @ [x, y, 1]
    landmarks: np.ndarray  # (68, 2) float32, crop pixels


def template_points(size: int, margin: float) -> np.ndarray:
    """The five template points in crop pixels for a crop of `size` with `margin`: (5, 2) float64."""
    if margin <= 0:
        raise ValueError(f"margin must be positive, got {margin}")
    return size * (0.5 + (TEMPLATE_5 - 0.5) / margin)


def five_points(landmarks68: np.ndarray) -> np.ndarray:
    """Eye centres, nose tip and mouth corners from 68 iBUG landmarks: (5, 2) float64, template order."""
    pts = np.asarray(landmarks68, dtype=np.float64)
    if pts.shape != (68, 2):
        raise ValueError(f"expected (68, 2) landmarks, got {pts.shape}")
    return np.stack([pts[36:42].mean(0), pts[42:48].mean(0), pts[30], pts[48], pts[54]])


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation; no reflection) taking src to dst.

    src, dst: (N, 2) with N >= 2. Returns (2, 3) float64. Umeyama's closed form.
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s0, d0 = src - mu_s, dst - mu_d
    var_s = (s0**2).sum() / len(src)
    cov = d0.T @ s0 / len(src)  # (2, 2)
    u, sig, vt = np.linalg.svd(cov)
    sign = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[-1] = -1.0
    rot = u @ np.diag(sign) @ vt
    scale = (sig * sign).sum() / var_s if var_s > 0 else 1.0
    t = mu_d - scale * rot @ mu_s
    return np.concatenate([scale * rot, t[:, None]], axis=1)


def apply_matrix(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Points (N, 2) through a (2, 3) affine matrix: (N, 2) float64."""
    pts = np.asarray(points, dtype=np.float64)
    return pts @ matrix[:, :2].T + matrix[:, 2]


def warp(rgb: np.ndarray, matrix: np.ndarray, size: int) -> np.ndarray:
    """Crop (size, size, 3) from rgb through `matrix`, reflecting at the image border.

    When the crop shrinks the face by more than 2x, the needed region is first shrunk with area averaging
    so the crop is not aliased; the result matches a direct warp up to that low-pass filtering.
    """
    scale = float(np.sqrt(abs(np.linalg.det(matrix[:, :2]))))
    if scale < 0.5:
        inv = cv2.invertAffineTransform(matrix)
        corners = apply_matrix(inv, np.array([[0, 0], [size, 0], [0, size], [size, size]], dtype=np.float64))
        h, w = rgb.shape[:2]
        pad = 2.0 / scale
        x0 = int(np.clip(np.floor(corners[:, 0].min() - pad), 0, w - 1))
        y0 = int(np.clip(np.floor(corners[:, 1].min() - pad), 0, h - 1))
        x1 = int(np.clip(np.ceil(corners[:, 0].max() + pad), x0 + 1, w))
        y1 = int(np.clip(np.ceil(corners[:, 1].max() + pad), y0 + 1, h))
        # Keep the region whole when the crop reaches past the image, so the border reflects as before.
        if corners[:, 0].min() - pad < 0 or corners[:, 1].min() - pad < 0 or corners[:, 0].max() + pad > w or corners[:, 1].max() + pad > h:
            x0, y0, x1, y1 = 0, 0, w, h
        f = min(1.0, 2.0 * scale)  # shrink the region so at most a 2x reduction is left to the warp
        region = rgb[y0:y1, x0:x1]
        rw, rh = max(1, round((x1 - x0) * f)), max(1, round((y1 - y0) * f))
        small = cv2.resize(region, (rw, rh), interpolation=cv2.INTER_AREA)
        fx, fy = rw / (x1 - x0), rh / (y1 - y0)
        # small pixel (u, v) centre <- region pixel ((u + 0.5) / fx - 0.5 + x0, ...)
        to_src = np.array([[1 / fx, 0, 0.5 / fx - 0.5 + x0], [0, 1 / fy, 0.5 / fy - 0.5 + y0]])
        matrix = matrix @ np.vstack([to_src, [0, 0, 1]])
        rgb = small
    return cv2.warpAffine(
        rgb, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101
    )


def align_face(rgb: np.ndarray, landmarks68: np.ndarray, size: int = 224, margin: float = 1.3) -> AlignedFace:
    """Align the face with these landmarks to the template and crop it.

    rgb: (H, W, 3) uint8; landmarks68: (68, 2) pixels of rgb.
    """
    matrix = similarity_transform(five_points(landmarks68), template_points(size, margin))
    crop = warp(rgb, matrix, size)
    landmarks = apply_matrix(matrix, landmarks68).astype(np.float32)
    return AlignedFace(crop, matrix, landmarks)
