"""Augmentations that faces in the wild undergo: JPEG, resizing, blur, noise, colour shifts, flips, and the
small shifts, zooms and tilts of a face found and cropped by another detector.

Each is a small pure function `f(image, rng, ...) -> image` on an (H, W, 3) uint8 RGB image: all randomness
comes from the `numpy.random.Generator` passed in, ranges are closed intervals `(low, high)` (pass
`(v, v)` for a fixed value), and the output has the input's shape and dtype. numpy and OpenCV only, so they
run in DataLoader workers without torch.

A draw sequence never depends on pixel values, so two images of the same shape augmented with two
generators seeded alike get identical parameters (e.g. a real face and its pseudo-fake).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

Range = tuple[float, float]

# Horizontal flip of the 68 iBUG landmarks: flipped[i] = original[FLIP_PERMUTATION[i]], after mirroring x.
# Left and right swap for the jaw, eyebrows, nostrils, eyes and mouth; the nose bridge (27-30) and the
# points on the mouth's vertical axis (51, 57, 62, 66) map to themselves. It is its own inverse.
FLIP_PERMUTATION: tuple[int, ...] = (
    *(16 - i for i in range(0, 17)),  # jaw 0..16: 0 <-> 16
    *(43 - i for i in range(17, 27)),  # eyebrows 17..26: 17 <-> 26
    27, 28, 29, 30,  # nose bridge
    *(66 - i for i in range(31, 36)),  # nostrils 31..35: 31 <-> 35
    *(81 - i for i in range(36, 40)),  # right eye 36..39 <-> left eye 45..42 (outer corner 36 <-> 45)
    *(87 - i for i in range(40, 42)),  # right eye lower lid 40, 41 <-> 47, 46
    *(81 - i for i in range(42, 46)),  # left eye 42..45 <-> 39..36
    *(87 - i for i in range(46, 48)),  # left eye lower lid 46, 47 <-> 41, 40
    *(102 - i for i in range(48, 55)),  # outer upper lip 48..54: 48 <-> 54
    *(114 - i for i in range(55, 60)),  # outer lower lip 55..59: 55 <-> 59
    *(124 - i for i in range(60, 65)),  # inner upper lip 60..64: 60 <-> 64
    *(132 - i for i in range(65, 68)),  # inner lower lip 65..67: 65 <-> 67
)


def _uniform(rng: np.random.Generator, bounds: Range) -> float:
    low, high = bounds
    return float(low) if low == high else float(rng.uniform(low, high))


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def flip_landmarks(landmarks: np.ndarray, width: int) -> np.ndarray:
    """Landmarks of the horizontally flipped image: (68, 2) float, x -> width - 1 - x, left/right swapped.

    landmarks: (68, 2) x, y in pixels, integer x at pixel centres (as dlib and cv2.warpAffine use).
    """
    pts = np.asarray(landmarks, dtype=np.float64)
    if pts.shape != (68, 2):
        raise ValueError(f"expected (68, 2) landmarks, got {pts.shape}")
    flipped = pts[list(FLIP_PERMUTATION)].copy()
    flipped[:, 0] = (width - 1) - flipped[:, 0]
    return flipped


def hflip(image: np.ndarray, landmarks: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Mirror an image left-right, and its landmarks when given: (flipped image, flipped landmarks or None)."""
    flipped = np.ascontiguousarray(image[:, ::-1])
    return flipped, None if landmarks is None else flip_landmarks(landmarks, image.shape[1])


def jpeg(image: np.ndarray, rng: np.random.Generator, quality: Range = (40, 100)) -> np.ndarray:
    """Re-compress as JPEG with a quality drawn uniformly from the integers in `quality` (0-100)."""
    q = int(rng.integers(int(quality[0]), int(quality[1]) + 1))
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, q])
    if not ok:
        raise RuntimeError("OpenCV could not JPEG-encode the image")
    return cv2.cvtColor(cv2.imdecode(data, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def reencode(image: np.ndarray, scale: float = 0.75, quality: int = 75) -> np.ndarray:
    """The same storage change for every face, real or fake: resized to `scale` and back (area down, linear up),
    then re-saved as JPEG of `quality`. A detector that reads forgery, not sharpness or compression, should score
    such a set about as well as the original (the robustness row of the model card)."""
    h, w = image.shape[:2]
    small = cv2.resize(image, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    back = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
    return jpeg(back, np.random.default_rng(0), (quality, quality))


def affine_matrix(
    rng: np.random.Generator, height: int, width: int, scale: Range, shift: float, rotate: float
) -> np.ndarray:
    """(2, 3) matrix of a zoom by a factor from `scale` and a tilt by up to `rotate` degrees, both about the image
    centre, then a shift by up to `shift` of the side in x and in y (uniform draws, in that order)."""
    s = _uniform(rng, scale)
    angle = _uniform(rng, (-rotate, rotate))
    dx, dy = (_uniform(rng, (-shift, shift)) * side for side in (width, height))
    m = cv2.getRotationMatrix2D(((width - 1) / 2, (height - 1) / 2), angle, s)
    m[:, 2] += (dx, dy)
    return m


def affine(
    image: np.ndarray,
    rng: np.random.Generator,
    scale: Range = (0.9, 1.1),
    shift: float = 0.05,
    rotate: float = 8.0,
    landmarks: np.ndarray | None = None,
    pixel_map: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Zoom, tilt and shift (`affine_matrix`) an image, borders filled by reflection; its (68, 2) landmarks and an
    (H, W) map of its pixels, when given, follow: (image, landmarks or None, map or None)."""
    h, w = image.shape[:2]
    m = affine_matrix(rng, h, w, scale, shift, rotate)
    out = cv2.warpAffine(image, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    if landmarks is not None:
        landmarks = np.asarray(landmarks, np.float64) @ m[:, :2].T + m[:, 2]
    if pixel_map is not None:
        pixel_map = cv2.warpAffine(pixel_map, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    return out, landmarks, pixel_map


_DOWN = (cv2.INTER_AREA, cv2.INTER_LINEAR, cv2.INTER_NEAREST)
_UP = (cv2.INTER_LINEAR, cv2.INTER_CUBIC)


def downscale(image: np.ndarray, rng: np.random.Generator, scale: Range = (0.5, 1.0)) -> np.ndarray:
    """Shrink by a factor drawn from `scale` and enlarge back to the input size (lost resolution).

    The down- and up-sampling interpolations are drawn too (area/linear/nearest, then linear/cubic).
    """
    s = _uniform(rng, scale)
    down = _DOWN[int(rng.integers(len(_DOWN)))]
    up = _UP[int(rng.integers(len(_UP)))]
    h, w = image.shape[:2]
    small = cv2.resize(image, (max(1, round(w * s)), max(1, round(h * s))), interpolation=down)
    return cv2.resize(small, (w, h), interpolation=up)


def gaussian_blur(image: np.ndarray, rng: np.random.Generator, sigma: Range = (0.3, 1.5)) -> np.ndarray:
    """Gaussian blur with a standard deviation in pixels drawn from `sigma`."""
    s = _uniform(rng, sigma)
    if s <= 0:
        return image.copy()
    return cv2.GaussianBlur(image, (0, 0), sigmaX=s, borderType=cv2.BORDER_REFLECT_101)


def gaussian_noise(image: np.ndarray, rng: np.random.Generator, std: Range = (1.0, 8.0)) -> np.ndarray:
    """Add i.i.d. Gaussian noise per pixel and channel, standard deviation (0-255 units) drawn from `std`."""
    s = _uniform(rng, std)
    noise = rng.standard_normal(image.shape, dtype=np.float32) * s
    return _to_uint8(image.astype(np.float32) + noise)


def rgb_shift(image: np.ndarray, rng: np.random.Generator, limit: float = 20.0) -> np.ndarray:
    """Add a constant drawn from [-limit, limit] (0-255 units) to each channel separately."""
    shift = rng.uniform(-limit, limit, size=3).astype(np.float32)
    return _to_uint8(image.astype(np.float32) + shift)


def color_jitter(
    image: np.ndarray,
    rng: np.random.Generator,
    brightness: float = 0.2,
    contrast: float = 0.2,
    saturation: float = 0.2,
    hue: float = 0.02,
) -> np.ndarray:
    """Brightness, contrast, saturation, then hue, each by a random amount (torchvision's meaning).

    brightness, contrast, saturation: factors drawn from [1 - x, 1 + x]; brightness scales the pixels,
    contrast scales their distance to the mean grey level, saturation their distance to their own grey.
    hue: shift drawn from [-hue, hue] in turns of the colour circle (at most 0.5).
    """
    b = _uniform(rng, (1 - brightness, 1 + brightness))
    c = _uniform(rng, (1 - contrast, 1 + contrast))
    s = _uniform(rng, (1 - saturation, 1 + saturation))
    h = _uniform(rng, (-hue, hue))
    out = image.astype(np.float32) * b
    grey = out @ np.array([0.299, 0.587, 0.114], np.float32)  # (H, W)
    out = (out - grey.mean()) * c + grey.mean()
    grey = out @ np.array([0.299, 0.587, 0.114], np.float32)
    out = _to_uint8((out - grey[..., None]) * s + grey[..., None])
    shift = round(h * 256)
    if shift % 256:
        hsv = cv2.cvtColor(out, cv2.COLOR_RGB2HSV_FULL)  # hue in 0..255 for a full turn
        hsv[..., 0] = ((hsv[..., 0].astype(np.int16) + shift) % 256).astype(np.uint8)
        out = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB_FULL)
    return out


def sharpen(image: np.ndarray, rng: np.random.Generator, amount: Range = (0.3, 1.0)) -> np.ndarray:
    """Unsharp mask: image + amount * (image - blurred), amount drawn from `amount`, blur sigma 1 px."""
    a = _uniform(rng, amount)
    img = image.astype(np.float32)
    blurred = cv2.GaussianBlur(img, (0, 0), sigmaX=1.0, borderType=cv2.BORDER_REFLECT_101)
    return _to_uint8(img + a * (img - blurred))


def _check_range(name: str, bounds: Range, low: float, high: float) -> None:
    if len(bounds) != 2 or not low <= bounds[0] <= bounds[1] <= high:
        raise ValueError(f"{name} must be (low, high) with {low} <= low <= high <= {high}, got {bounds}")


def _check_prob(name: str, p: float) -> None:
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"{name} is a probability in [0, 1], got {p}")


@dataclass(frozen=True)
class WildAugmentConfig:
    """Which in-the-wild degradations `WildAugment` applies, how often and how strongly.

    Applied in this order, each independently with its probability: flip, zoom/tilt/shift, colour jitter, blur,
    downscale, noise, JPEG (compression last, as when a video is re-uploaded). The zoom/tilt/shift is off by
    default (`affine_prob` 0): with it off the draws are those of the configs made before it existed.
    """

    flip_prob: float = 0.5  # horizontal flip (landmarks follow)
    color_prob: float = 0.3  # colour jitter with the four strengths below
    brightness: float = 0.2  # brightness factor in [1 - x, 1 + x]
    contrast: float = 0.2  # contrast factor in [1 - x, 1 + x]
    saturation: float = 0.2  # saturation factor in [1 - x, 1 + x]
    hue: float = 0.02  # hue shift in turns, in [-x, x]
    blur_prob: float = 0.1  # Gaussian blur
    blur_sigma: Range = (0.3, 1.5)  # blur standard deviation, pixels
    resize_prob: float = 0.2  # downscale then upscale back
    resize_scale: Range = (0.5, 1.0)  # downscale factor
    noise_prob: float = 0.1  # additive Gaussian noise
    noise_std: Range = (1.0, 8.0)  # noise standard deviation, 0-255 units
    jpeg_prob: float = 0.5  # JPEG re-compression
    jpeg_quality: Range = (40, 100)  # JPEG quality, integers 1-100
    affine_prob: float = 0.0  # zoom, tilt and shift together (another detector's crop of the same face)
    affine_scale: Range = (0.9, 1.1)  # zoom factor
    affine_shift: float = 0.05  # shift in x and in y, at most this fraction of the side
    affine_rotate: float = 8.0  # tilt, at most this many degrees either way

    def __post_init__(self) -> None:
        for name in ("flip_prob", "color_prob", "blur_prob", "resize_prob", "noise_prob", "jpeg_prob", "affine_prob"):
            _check_prob(name, getattr(self, name))
        for name in ("brightness", "contrast", "saturation"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if not 0.0 <= self.hue <= 0.5:
            raise ValueError(f"hue is a shift in turns of the colour circle, in [0, 0.5], got {self.hue}")
        _check_range("blur_sigma", self.blur_sigma, 0.0, 50.0)
        _check_range("resize_scale", self.resize_scale, 1e-3, 1.0)
        _check_range("noise_std", self.noise_std, 0.0, 255.0)
        _check_range("jpeg_quality", self.jpeg_quality, 1, 100)
        _check_range("affine_scale", self.affine_scale, 0.5, 2.0)
        if not 0.0 <= self.affine_shift <= 0.5 or not 0.0 <= self.affine_rotate <= 45.0:
            raise ValueError(f"affine_shift must be in [0, 0.5] and affine_rotate in [0, 45] degrees, got "
                             f"{self.affine_shift} and {self.affine_rotate}")  # fmt: skip


class WildAugment:
    """The degradations of `WildAugmentConfig`, composed: `aug(image, rng, landmarks) -> (image, landmarks)`."""

    def __init__(self, config: WildAugmentConfig | None = None) -> None:
        self.config = config or WildAugmentConfig()

    def __call__(
        self, image: np.ndarray, rng: np.random.Generator, landmarks: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Augment an (H, W, 3) uint8 RGB image; (68, 2) landmarks, when given, follow the flip and the affine."""
        out, landmarks, _ = self._apply(image, rng, landmarks, None)
        return out, landmarks

    def with_map(
        self, image: np.ndarray, rng: np.random.Generator, pixel_map: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Augment an image and an (H, W) map of its pixels (e.g. where it was forged): the map follows the flip
        and the affine.

        The image gets exactly what `__call__` would give it with a generator in the same state.
        """
        if pixel_map.shape != image.shape[:2]:
            raise ValueError(f"the map's shape {pixel_map.shape} is not the image's {image.shape[:2]}")
        out, _, pixel_map = self._apply(image, rng, None, pixel_map)
        return out, pixel_map

    def _apply(
        self, image: np.ndarray, rng: np.random.Generator, landmarks: np.ndarray | None, pixel_map: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got {image.shape} {image.dtype}")
        cfg = self.config
        # One draw per step whether or not it applies, so the sequence does not depend on earlier outcomes.
        apply = rng.random(6) < np.array(
            [cfg.flip_prob, cfg.color_prob, cfg.blur_prob, cfg.resize_prob, cfg.noise_prob, cfg.jpeg_prob]
        )
        out = image
        if apply[0]:
            out, landmarks = hflip(out, landmarks)
            if pixel_map is not None:
                pixel_map = np.ascontiguousarray(pixel_map[:, ::-1])
        if cfg.affine_prob > 0 and rng.random() < cfg.affine_prob:  # no draw when off: older configs' draws stay
            out, landmarks, pixel_map = affine(out, rng, cfg.affine_scale, cfg.affine_shift, cfg.affine_rotate,
                                               landmarks, pixel_map)  # fmt: skip
        if apply[1]:
            out = color_jitter(out, rng, cfg.brightness, cfg.contrast, cfg.saturation, cfg.hue)
        if apply[2]:
            out = gaussian_blur(out, rng, cfg.blur_sigma)
        if apply[3]:
            out = downscale(out, rng, cfg.resize_scale)
        if apply[4]:
            out = gaussian_noise(out, rng, cfg.noise_std)
        if apply[5]:
            out = jpeg(out, rng, cfg.jpeg_quality)
        if out is image:
            out = image.copy()
        return out, landmarks, pixel_map
