"""Alignment: landmarks land on the template within a pixel, crops have the configured size."""

from __future__ import annotations

import numpy as np
import pytest

from realface.faces.align import (
    TEMPLATE_5,
    align_face,
    apply_matrix,
    five_points,
    similarity_transform,
    template_points,
)


def _rotation(theta: float) -> np.ndarray:
    return np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])


def _landmarks_with_five(points5: np.ndarray) -> np.ndarray:
    """68 landmarks whose five_points are exactly `points5` (eyes collapsed to their centres)."""
    lm = np.zeros((68, 2))
    lm[:] = points5.mean(0)
    lm[36:42] = points5[0]
    lm[42:48] = points5[1]
    lm[30] = points5[2]
    lm[48] = points5[3]
    lm[54] = points5[4]
    return lm


def _dots_image(points: np.ndarray, height: int, width: int, sigma: float) -> np.ndarray:
    """Grey image with a Gaussian blob at each point: (H, W, 3) uint8."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    img = np.zeros((height, width))
    for x, y in points:
        img += np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma**2))
    return np.repeat((np.clip(img, 0, 1) * 255).round().astype(np.uint8)[:, :, None], 3, axis=2)


def _blob_centre(crop: np.ndarray, near: np.ndarray, radius: int) -> np.ndarray:
    """Intensity-weighted centroid of the crop within `radius` of `near`."""
    grey = crop[:, :, 0].astype(np.float64)
    yy, xx = np.mgrid[0 : grey.shape[0], 0 : grey.shape[1]]
    window = (np.abs(xx - near[0]) <= radius) & (np.abs(yy - near[1]) <= radius)
    weights = grey * window
    return np.array([(weights * xx).sum(), (weights * yy).sum()]) / weights.sum()


@pytest.mark.parametrize(
    ("size", "margin", "face_px", "theta"),
    [(224, 1.3, 150.0, 0.3), (112, 1.0, 90.0, -0.5), (256, 2.0, 1200.0, 0.1)],
)
def test_pixels_land_on_template(size: int, margin: float, face_px: float, theta: float) -> None:
    # The template placed in a source image by a known similarity, drawn as blobs; after alignment the
    # blobs must sit on the template points in the crop (the last case shrinks the face ~10x).
    points5 = TEMPLATE_5 * face_px @ _rotation(theta).T + np.array([face_px * 0.6, face_px * 0.4])
    h = w = int(face_px * 2)
    image = _dots_image(points5, h, w, sigma=face_px / 40)
    aligned = align_face(image, _landmarks_with_five(points5), size, margin)
    expected = template_points(size, margin)
    assert aligned.crop.shape == (size, size, 3) and aligned.crop.dtype == np.uint8
    np.testing.assert_allclose(five_points(aligned.landmarks), expected, atol=1e-3)
    for point in expected:
        radius = max(3, int(size / margin * 0.06))
        assert np.linalg.norm(_blob_centre(aligned.crop, point, radius) - point) < 1.0


def test_margin_sets_the_face_fraction() -> None:
    # Eye-to-mouth distance in the crop scales as 1 / margin.
    d = [np.ptp(template_points(224, m)[:, 1]) for m in (1.0, 1.3, 2.0)]
    np.testing.assert_allclose(np.array(d) * np.array([1.0, 1.3, 2.0]), d[0])
    np.testing.assert_allclose(template_points(224, 1.7).mean(0), 224 * (0.5 + (TEMPLATE_5.mean(0) - 0.5) / 1.7))


def test_similarity_matches_skimage_and_never_reflects() -> None:
    from skimage.transform import SimilarityTransform

    rng = np.random.default_rng(0)
    src = rng.uniform(0, 100, (5, 2))
    dst = src @ (1.7 * _rotation(0.8)).T + [5.0, -3.0] + rng.normal(0, 2.0, (5, 2))
    ours = similarity_transform(src, dst)
    estimate = getattr(SimilarityTransform, "from_estimate", None)
    theirs = estimate(src, dst) if estimate else SimilarityTransform()
    if not estimate:
        theirs.estimate(src, dst)
    np.testing.assert_allclose(ours, theirs.params[:2], atol=1e-9)
    mirrored = src * [-1.0, 1.0]
    assert np.linalg.det(similarity_transform(src, mirrored)[:, :2]) > 0


def test_landmarks_follow_the_matrix() -> None:
    rng = np.random.default_rng(1)
    lm = rng.uniform(50, 150, (68, 2))
    image = rng.integers(0, 255, (200, 200, 3), dtype=np.uint8)
    aligned = align_face(image, lm, 160, 1.3)
    np.testing.assert_allclose(aligned.landmarks, apply_matrix(aligned.matrix, lm), atol=1e-4)
    assert aligned.crop.shape == (160, 160, 3)
