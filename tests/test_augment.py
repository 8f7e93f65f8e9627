"""In-the-wild augmentations on real UTKFace faces: shapes, strengths, determinism, flips with landmarks."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import cv2
import numpy as np
import pytest

from realface.data import augment
from realface.data.augment import FLIP_PERMUTATION, WildAugment, WildAugmentConfig, flip_landmarks, hflip


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def sharpness(image: np.ndarray) -> float:
    """Variance of the Laplacian of the grey image: high-frequency energy."""
    return float(cv2.Laplacian(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float64), cv2.CV_64F).var())


@pytest.fixture(scope="module")
def dlib_models() -> tuple[object, object]:
    """dlib's HOG face detector and 68-point shape predictor (from face_recognition_models)."""
    import dlib

    models = importlib.util.find_spec("face_recognition_models").submodule_search_locations[0]
    predictor = dlib.shape_predictor(models + "/models/shape_predictor_68_face_landmarks.dat")
    return dlib.get_frontal_face_detector(), predictor


def find_landmarks(models: tuple[object, object], image: np.ndarray) -> np.ndarray | None:
    """(68, 2) float landmarks of the largest face found with upsample 1, or None."""
    detector, predictor = models
    boxes = detector(image, 1)
    if not boxes:
        return None
    box = max(boxes, key=lambda b: b.width() * b.height())
    return np.array([[p.x, p.y] for p in predictor(image, box).parts()], np.float64)


@pytest.fixture(scope="module")
def faces(shared_data: Path) -> list[np.ndarray]:
    """Three UTKFace crops, (200, 200, 3) uint8 RGB."""
    paths = sorted((shared_data / "utkface" / "images").glob("*.jpg"))
    return [cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p in paths[100:3000:1000]]


FUNCTIONS = {
    "jpeg": augment.jpeg,
    "downscale": augment.downscale,
    "gaussian_blur": augment.gaussian_blur,
    "gaussian_noise": augment.gaussian_noise,
    "rgb_shift": augment.rgb_shift,
    "color_jitter": augment.color_jitter,
    "sharpen": augment.sharpen,
}


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_functions_keep_shape_dtype_and_are_deterministic(name: str, faces: list[np.ndarray]) -> None:
    fn = FUNCTIONS[name]
    for image in faces:
        before = image.copy()
        a = fn(image, np.random.default_rng(5))
        b = fn(image, np.random.default_rng(5))
        assert a.shape == image.shape and a.dtype == np.uint8
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(image, before)  # pure: the input is untouched
        assert not np.array_equal(a, image)


def test_jpeg_low_quality_changes_the_image_but_stays_close(faces: list[np.ndarray]) -> None:
    rng = np.random.default_rng(0)
    for image in faces:
        low = augment.jpeg(image, rng, quality=(40, 40))
        high = augment.jpeg(image, rng, quality=(95, 95))
        assert not np.array_equal(low, image)
        assert 27.0 < psnr(low, image) < psnr(high, image)
    qualities = set()
    for seed in range(20):  # the quality is drawn from the range: different seeds, different bytes
        qualities.add(augment.jpeg(faces[0], np.random.default_rng(seed)).tobytes())
    assert len(qualities) > 5


def test_downscale_and_blur_remove_detail_and_sharpen_adds_it(faces: list[np.ndarray]) -> None:
    rng = np.random.default_rng(0)
    for image in faces:
        base = sharpness(image)
        assert sharpness(augment.downscale(image, rng, scale=(0.25, 0.25))) < 0.5 * base
        assert sharpness(augment.gaussian_blur(image, rng, sigma=(1.5, 1.5))) < 0.5 * base
        assert sharpness(augment.sharpen(image, rng, amount=(1.0, 1.0))) > 1.5 * base
        np.testing.assert_array_equal(augment.downscale(image, rng, scale=(1.0, 1.0)), image)


def test_noise_has_the_requested_strength() -> None:
    image = np.full((64, 64, 3), 128, np.uint8)
    noisy = augment.gaussian_noise(image, np.random.default_rng(0), std=(8.0, 8.0))
    residual = noisy.astype(np.float64) - 128
    assert abs(residual.std() - 8.0) < 0.5 and abs(residual.mean()) < 0.5


def test_color_jitter_and_rgb_shift(faces: list[np.ndarray]) -> None:
    image = faces[0]
    rng = np.random.default_rng(0)
    same = augment.color_jitter(image, rng, brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0)
    assert np.abs(same.astype(int) - image).max() <= 1
    grey = np.repeat(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)[..., None], 3, axis=2)
    jittered = augment.color_jitter(grey, rng, brightness=0.3, contrast=0.3, saturation=0.5, hue=0.2)
    assert np.abs(jittered.astype(int) - jittered[..., :1]).max() <= 2  # grey stays grey
    brighter = [augment.color_jitter(image, np.random.default_rng(s), 0.4, 0, 0, 0).mean() for s in range(8)]
    assert max(brighter) > image.mean() + 5 and min(brighter) < image.mean() - 5
    mid = np.full((16, 16, 3), 128, np.uint8)
    shifted = augment.rgb_shift(mid, rng, limit=20.0).astype(int) - 128
    assert (np.abs(shifted) <= 20).all() and len({int(v) for v in shifted[0, 0]}) > 1
    assert (shifted == shifted[:1, :1]).all()  # one shift per channel


def test_flip_permutation_swaps_sides() -> None:
    perm = np.array(FLIP_PERMUTATION)
    assert sorted(perm) == list(range(68))
    np.testing.assert_array_equal(perm[perm], np.arange(68))  # its own inverse
    # a left-right symmetric face (each point mirrors its partner across x = 49.5) is its own flip
    rng = np.random.default_rng(0)
    landmarks = np.zeros((68, 2))
    for i, j in enumerate(perm):
        if j == i:
            landmarks[i] = [49.5, rng.uniform(0, 100)]
        elif j > i:
            landmarks[i] = rng.uniform(0, 100, size=2)
            landmarks[j] = [99 - landmarks[i, 0], landmarks[i, 1]]
    np.testing.assert_allclose(flip_landmarks(landmarks, 100), landmarks)


def test_flip_landmarks_match_the_predictor_on_the_flipped_face(faces: list[np.ndarray], dlib_models) -> None:
    for image in faces:
        landmarks = find_landmarks(dlib_models, image)
        assert landmarks is not None
        flipped_image, flipped = hflip(image, landmarks)
        found = find_landmarks(dlib_models, flipped_image)
        assert found is not None
        error = np.linalg.norm(found - flipped, axis=1)
        assert np.median(error) < 3.0 and np.percentile(error, 90) < 6.0
        # the right eye (36-41) of the flipped face is where the left eye (42-47) was, mirrored
        left_eye = landmarks[42:48].mean(axis=0)
        assert np.linalg.norm(flipped[36:42].mean(axis=0) - [image.shape[1] - 1 - left_eye[0], left_eye[1]]) < 1e-9
        assert np.linalg.norm(found[36:42].mean(axis=0) - flipped[36:42].mean(axis=0)) < 3.0
    with pytest.raises(ValueError, match="68"):
        flip_landmarks(np.zeros((5, 2)), 10)


def test_affine_moves_landmarks_and_map_with_the_face(faces: list[np.ndarray], dlib_models) -> None:
    """Zoom, tilt and shift: the predictor finds the landmarks where the transform put them, and a map of the
    pixels (here: a square painted on the face) lands where the square is in the warped image."""
    for k, image in enumerate(faces):
        landmarks = find_landmarks(dlib_models, image)
        assert landmarks is not None
        square = np.zeros(image.shape[:2], np.float32)
        square[80:120, 60:100] = 1.0
        painted = image.copy()
        painted[square > 0] = (255, 0, 255)
        out, moved, _ = augment.affine(image, np.random.default_rng(k), (1.1, 1.1), 0.05, 8.0, landmarks)
        assert out.shape == image.shape and out.dtype == np.uint8
        found = find_landmarks(dlib_models, out)
        assert found is not None
        error = np.linalg.norm(found - moved, axis=1)
        assert np.median(error) < 3.0 and np.percentile(error, 90) < 6.0
        assert np.median(np.linalg.norm(moved - landmarks, axis=1)) > 3.0  # it did move
        out, _, warped = augment.affine(painted, np.random.default_rng(k), (1.1, 1.1), 0.05, 8.0, None, square)
        magenta = (out[..., 0] > 200) & (out[..., 1] < 60) & (out[..., 2] > 200)
        assert (warped[magenta] > 0.5).mean() > 0.95 and (magenta[warped > 0.5]).mean() > 0.9
        assert warped.sum() == pytest.approx(1.1**2 * square.sum(), rel=0.05)  # the zoom's area
    # the draws are the generator's: the same seed, the same transform
    a = augment.affine(faces[0], np.random.default_rng(3))[0]
    np.testing.assert_array_equal(a, augment.affine(faces[0], np.random.default_rng(3))[0])


def test_wild_augment_composes_with_probabilities(faces: list[np.ndarray]) -> None:
    image = faces[1]
    landmarks = np.random.default_rng(0).uniform(20, 180, size=(68, 2))
    off = WildAugment(
        WildAugmentConfig(
            flip_prob=0, color_prob=0, blur_prob=0, resize_prob=0, noise_prob=0, jpeg_prob=0
        )
    )
    out, lm = off(image, np.random.default_rng(0), landmarks)
    np.testing.assert_array_equal(out, image)
    np.testing.assert_array_equal(lm, landmarks)

    on = WildAugment(
        WildAugmentConfig(
            flip_prob=1, color_prob=1, blur_prob=1, resize_prob=1, noise_prob=1, jpeg_prob=1
        )
    )
    out, lm = on(image, np.random.default_rng(0), landmarks)
    assert out.shape == image.shape and out.dtype == np.uint8
    np.testing.assert_allclose(lm, flip_landmarks(landmarks, image.shape[1]))
    assert 12.0 < psnr(out, image[:, ::-1]) < 40.0  # degraded, but still the mirrored face
    again, _ = on(image, np.random.default_rng(0), landmarks)
    np.testing.assert_array_equal(out, again)

    # the affine step: off by default and then drawing nothing, so the other steps' draws are unchanged
    moved = WildAugment(WildAugmentConfig(affine_prob=1.0))
    plain = WildAugment()
    out_moved, lm_moved = moved(image, np.random.default_rng(5), landmarks)
    out_plain, lm_plain = plain(image, np.random.default_rng(5), landmarks)
    assert not np.array_equal(lm_moved, lm_plain) and out_moved.shape == image.shape
    with_zero = WildAugment(WildAugmentConfig(affine_prob=0.0, affine_rotate=20.0))
    np.testing.assert_array_equal(with_zero(image, np.random.default_rng(5))[0], out_plain)

    default = WildAugment()
    outs = [default(image, np.random.default_rng(s))[0] for s in range(12)]
    assert len({o.tobytes() for o in outs}) > 6
    assert all(lm is None for _, lm in [default(image, np.random.default_rng(0))])


def test_wild_augment_config_checks(faces: list[np.ndarray]) -> None:
    with pytest.raises(ValueError, match="jpeg_prob"):
        WildAugmentConfig(jpeg_prob=2.0)
    with pytest.raises(ValueError, match="jpeg_quality"):
        WildAugmentConfig(jpeg_quality=(90, 40))
    with pytest.raises(ValueError, match="hue"):
        WildAugmentConfig(hue=0.7)
    with pytest.raises(ValueError, match="affine_scale"):
        WildAugmentConfig(affine_scale=(1.2, 0.9))
    with pytest.raises(ValueError, match="affine_rotate"):
        WildAugmentConfig(affine_rotate=90.0)
    with pytest.raises(ValueError, match="uint8"):
        WildAugment()(faces[0].astype(np.float32), np.random.default_rng(0))
