"""Where a fake face was forged: pixel maps that supervise a detector's per-patch head.

A single bit per face ("fake") is a weak signal: the detector must find on its own which pixels made the
face fake. Where the forged region is known, a per-patch target tells it (as Face X-ray and SBI's blending
masks do); the detector then learns faster, and its patch head gives a heatmap that was trained to say
where the forgery is.

- real faces: nothing is forged, the map is 0 everywhere;
- SBI pseudo-fakes: the blend weight of the source (`data.sbi.SBIResult.mask`);
- labelled fakes made from a real video that is in the data too (the manifest's `group`: DFDC's fakes are
  face swaps of the real video of their group, FaceForensics++'s of their original): the difference between
  the fake and its real, after aligning the real onto the fake by their 68 landmarks, blurred, inside the
  fake's (slightly grown) landmark hull, mapped linearly from DIFF_NOISE grey levels (0: what resampling two
  crops and JPEG leave on identical faces) to DIFF_FULL (1). Measured on the recipe's 112 px crops
  (`python benchmarks/forgery_mask_levels.py --faces runs/recipe-cpu/faces`): on a face against a moved copy of
  itself, 99% of the median face's pixels differ by under 6 grey levels; a DFDC fake differs from its real by 8
  at the median pixel of the median pair, by 15 at its 90th percentile pixel, by 30 at that of the 90th
  percentile pair.

Maps are (H, W) float32 in [0, 1] on the crop; `patch_targets` averages them over the encoder's patches.
"""

from __future__ import annotations

import cv2
import numpy as np

from realface.faces.align import similarity_transform

HULL_GROWTH = 0.1  # the landmark hull is dilated by this fraction of the face size (swaps reach its edge)
DIFF_BLUR = 1 / 32  # Gaussian blur of the difference, sigma as a fraction of the crop side
DIFF_NOISE = 6.0  # grey levels (0-255): a blurred difference up to this is resampling and compression, not forgery
DIFF_FULL = 18.0  # grey levels: a blurred difference from this on counts as fully forged


def face_hull_mask(landmarks: np.ndarray, shape: tuple[int, int], growth: float = HULL_GROWTH) -> np.ndarray:
    """(H, W) float32 in {0, 1}: the convex hull of the 68 landmarks, dilated by `growth` of the face size."""
    pts = np.asarray(landmarks, dtype=np.float32)
    mask = np.zeros(shape, np.uint8)
    cv2.fillConvexPoly(mask, cv2.convexHull(pts).astype(np.int32), 1)
    size = float(np.ptp(pts, axis=0).max())
    radius = int(round(growth * size))
    if radius > 0:
        mask = cv2.dilate(mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1)))
    return mask.astype(np.float32)


def pair_difference_map(
    fake: np.ndarray, fake_landmarks: np.ndarray, real: np.ndarray, real_landmarks: np.ndarray
) -> np.ndarray:
    """Where `fake` differs from the `real` face it was made from: (H, W) float32 in [0, 1] on the fake's crop.

    fake, real: (H, W, 3) and (h, w, 3) uint8 RGB crops of the same frame (or nearly); *_landmarks: (68, 2)
    pixels of each crop. The real is warped onto the fake by the similarity that best maps its landmarks onto
    the fake's; a face swap keeps pose and expression, so what is left is the swap (and some misregistration,
    which the blur, the noise level and the hull keep small).
    """
    forged = np.clip((aligned_difference(fake, fake_landmarks, real, real_landmarks) - DIFF_NOISE) / (DIFF_FULL - DIFF_NOISE), 0.0, 1.0)
    return (forged * face_hull_mask(fake_landmarks, fake.shape[:2])).astype(np.float32)


def aligned_difference(
    fake: np.ndarray, fake_landmarks: np.ndarray, real: np.ndarray, real_landmarks: np.ndarray
) -> np.ndarray:
    """(H, W) float32 grey levels: |fake - real warped onto it by their landmarks|, channel mean, blurred."""
    h, w = fake.shape[:2]
    matrix = similarity_transform(np.asarray(real_landmarks, np.float64), np.asarray(fake_landmarks, np.float64))
    aligned = cv2.warpAffine(real, matrix, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    diff = np.abs(fake.astype(np.float32) - aligned.astype(np.float32)).mean(axis=2)
    return cv2.GaussianBlur(diff, (0, 0), sigmaX=max(0.5, DIFF_BLUR * w), borderType=cv2.BORDER_REFLECT_101)


def patch_targets(pixel_map: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """(H, W) map -> (rows * cols,) float32: its mean over each patch of a rows x cols grid, row-major."""
    rows, cols = grid
    h, w = pixel_map.shape
    if h % rows or w % cols:
        pixel_map = cv2.resize(pixel_map, (cols * max(1, w // cols), rows * max(1, h // rows)), interpolation=cv2.INTER_AREA)
        h, w = pixel_map.shape
    return pixel_map.reshape(rows, h // rows, cols, w // cols).mean(axis=(1, 3)).reshape(-1).astype(np.float32)
