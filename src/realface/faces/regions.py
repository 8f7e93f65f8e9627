"""Facial regions from the 68 iBUG landmarks, as a per-pixel label map and per-patch fractions.

No face-parsing model ships offline, so regions are drawn from landmarks: the face hull (jaw plus a
forehead raised above the eyebrows), a band along its outline (the face boundary), and filled polygons
for the eyebrows, eyes, nose and mouth. Labels are disjoint by construction: later regions are painted
over earlier ones.
"""

from __future__ import annotations

import cv2
import numpy as np

# Label values of the map; index = label. "rest" is hair, neck and background.
REGIONS: tuple[str, ...] = ("rest", "skin", "boundary", "eyebrows", "eyes", "nose", "mouth")
REST, SKIN, BOUNDARY, EYEBROWS, EYES, NOSE, MOUTH = range(len(REGIONS))
# The regions CRFR-P may choose to mask whole (everything but "rest").
FACIAL_REGIONS: tuple[int, ...] = (SKIN, BOUNDARY, EYEBROWS, EYES, NOSE, MOUTH)

# 68-point index ranges (iBUG 300-W convention, as dlib's predictor outputs them).
JAW = slice(0, 17)
BROW_R, BROW_L = slice(17, 22), slice(22, 27)
NOSE_PTS = slice(27, 36)
EYE_R, EYE_L = slice(36, 42), slice(42, 48)
MOUTH_OUTER = slice(48, 60)


def face_hull(landmarks: np.ndarray) -> np.ndarray:
    """Polygon of the face including the forehead: (K, 2) float points.

    landmarks: (68, 2) x, y in pixels. The forehead is the eyebrows raised by 0.3 of the
    brow-to-chin distance along the face's vertical axis.
    """
    pts = np.asarray(landmarks, dtype=np.float64)
    brows = np.concatenate([pts[BROW_R], pts[BROW_L]])
    chin = pts[8]
    brow_mid = brows.mean(axis=0)
    up = brow_mid - chin  # from chin to brows
    forehead = brows + 0.3 * up
    hull = cv2.convexHull(np.concatenate([pts[JAW], forehead]).astype(np.float32))
    return hull.reshape(-1, 2)


def _scale_about_centroid(pts: np.ndarray, factor: float) -> np.ndarray:
    c = pts.mean(axis=0)
    return c + (pts - c) * factor


def region_label_map(landmarks: np.ndarray, height: int, width: int) -> np.ndarray:
    """Per-pixel region labels: (height, width) uint8 with values indexing `REGIONS`.

    landmarks: (68, 2) x, y in pixels of the same image. Points may lie outside the image;
    the map is clipped to it.
    """
    pts = np.asarray(landmarks, dtype=np.float64)
    if pts.shape != (68, 2):
        raise ValueError(f"expected (68, 2) landmarks, got {pts.shape}")
    face_w = float(np.linalg.norm(pts[16] - pts[0])) or 1.0
    label = np.zeros((height, width), np.uint8)
    shift = 4  # sub-pixel precision for cv2 drawing
    scale = 1 << shift

    def fill(poly: np.ndarray, value: int) -> None:
        cv2.fillPoly(label, [np.round(poly * scale).astype(np.int32)], value, cv2.LINE_8, shift)

    def stroke(line: np.ndarray, value: int, width_px: float, closed: bool) -> None:
        thickness = max(1, int(round(width_px)))
        cv2.polylines(label, [np.round(line * scale).astype(np.int32)], closed, value, thickness, cv2.LINE_8, shift)

    hull = face_hull(pts)
    fill(hull, SKIN)
    stroke(hull, BOUNDARY, 0.08 * face_w, closed=True)
    nose = cv2.convexHull(pts[NOSE_PTS].astype(np.float32)).reshape(-1, 2)
    fill(_scale_about_centroid(nose, 1.15), NOSE)
    for brow in (pts[BROW_R], pts[BROW_L]):
        stroke(brow, EYEBROWS, 0.05 * face_w, closed=False)
    for eye in (pts[EYE_R], pts[EYE_L]):
        fill(_scale_about_centroid(eye, 1.4), EYES)
    fill(_scale_about_centroid(pts[MOUTH_OUTER], 1.1), MOUTH)
    return label


def patch_region_fractions(label_map: np.ndarray, patch_size: int) -> np.ndarray:
    """Fraction of each patch covered by each region: (H/p, W/p, len(REGIONS)) float32, rows sum to 1.

    label_map: (H, W) integer labels; H and W must be multiples of `patch_size` (resize the map with
    nearest-neighbour interpolation to the model's input size first).
    """
    h, w = label_map.shape
    if h % patch_size or w % patch_size:
        raise ValueError(f"label map {h}x{w} is not a multiple of patch size {patch_size}")
    gh, gw = h // patch_size, w // patch_size
    one_hot = np.eye(len(REGIONS), dtype=np.float32)[label_map]  # (H, W, R)
    return one_hot.reshape(gh, patch_size, gw, patch_size, -1).mean(axis=(1, 3))


def colorize(label_map: np.ndarray) -> np.ndarray:
    """RGB picture of a label map, for looking at regions: (H, W, 3) uint8."""
    palette = np.array(
        [[0, 0, 0], [230, 180, 150], [255, 255, 0], [120, 60, 20], [0, 120, 255], [0, 200, 0], [220, 0, 60]],
        np.uint8,
    )
    return palette[label_map]
