"""Self-blended images (SBI, Shiohara & Yamasaki, CVPR 2022): pseudo-fakes made from one real face.

A copy of the face (the source) gets its colour and sharpness changed and is shifted slightly; it is then
blended back into the untouched face (the target) through a soft mask: a hull of the landmarks, randomly
deformed (affine, then elastic), eroded and blurred, times a random blend ratio:

    fake = w * source + (1 - w) * target,   w = ratio * soft_mask

The result carries the traces face swaps leave (a blending boundary, colour and resolution mismatch,
slight misalignment) without any identity or generator a detector could latch onto. The target is never
changed, so the fake equals the input exactly where w == 0; to augment a real/fake pair alike, use the
in-the-wild augmentations of `realface.data.augment` with two generators seeded alike.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from realface.data import augment
from realface.errors import InputError
from realface.faces.regions import face_hull

Range = tuple[float, float]


def _inner_hull(landmarks: np.ndarray) -> np.ndarray:
    """Hull of eyebrows, eyes, nose and mouth (points 17-67): the central face, without jaw or forehead."""
    return cv2.convexHull(landmarks[17:68].astype(np.float32)).reshape(-1, 2)


def _landmark_hull(landmarks: np.ndarray) -> np.ndarray:
    """Hull of all 68 points (0-16 jaw, 17-26 eyebrows, 27-67 inner face): up to the brows, no forehead."""
    return cv2.convexHull(landmarks.astype(np.float32)).reshape(-1, 2)


def _lower_hull(landmarks: np.ndarray) -> np.ndarray:
    """Hull of the nose base (31-35), the lower jaw (4-12) and the mouth (48-67): the part of the face that
    expression reenactment re-renders (Face2Face, NeuralTextures move the mouth and the chin with it, not the eyes)."""
    pts = np.concatenate([landmarks[31:36], landmarks[4:13], landmarks[48:68]])
    return cv2.convexHull(pts.astype(np.float32)).reshape(-1, 2)


# Mask shapes by name: landmarks (68, 2) -> polygon (K, 2). `SBIConfig.hulls` draws among these.
MASK_HULLS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "face": face_hull,  # jaw and forehead (regions.face_hull): what a face swap replaces
    "landmarks": _landmark_hull,
    "inner": _inner_hull,
    "lower": _lower_hull,  # not drawn by default: a reenactment-like blend of the mouth and chin only
}


def _check_range(name: str, bounds: Range, low: float, high: float) -> None:
    if len(bounds) != 2 or not low <= bounds[0] <= bounds[1] <= high:
        raise ValueError(f"{name} must be (low, high) with {low} <= low <= high <= {high}, got {bounds}")


@dataclass(frozen=True)
class SBIConfig:
    """How `self_blend` makes a pseudo-fake. Lengths are fractions of the face size (the larger side of
    the landmarks' bounding box), so the same config fits any crop size."""

    # Mask shape: a hull drawn uniformly among these names of MASK_HULLS (SBI's own three by default).
    hulls: tuple[str, ...] = ("face", "landmarks", "inner")
    # Mask deformation: random affine about the face centre ...
    mask_scale: Range = (0.95, 1.05)  # scale factor
    mask_translate: Range = (0.03, 0.015)  # largest |shift| in x and in y
    mask_rotate: float = 3.0  # largest |rotation|, degrees
    # ... then elastic: a smooth random displacement field.
    elastic_amplitude: float = 0.02  # largest displacement
    elastic_smoothness: float = 0.06  # grid spacing of the random field (larger = smoother)
    # The deformed mask is cut to the outer face hull (forehead hull plus all landmarks) dilated by this.
    hull_margin: float = 0.06
    # Soft edge: erode by r then Gaussian-blur with radius r (support stays in the deformed mask).
    blur_radius: Range = (0.02, 0.10)  # r
    # Blend ratio: 1.0 with probability full_blend_prob, else uniform in blend_ratio.
    blend_ratio: Range = (0.25, 1.0)
    full_blend_prob: float = 0.5
    # Source colour: per-channel shift (0-255 units) with a probability, then colour jitter (always).
    rgb_shift: float = 20.0
    rgb_shift_prob: float = 0.3
    brightness: float = 0.1  # factor in [1 - x, 1 + x]
    contrast: float = 0.1  # factor in [1 - x, 1 + x]
    saturation: float = 0.1  # factor in [1 - x, 1 + x]
    hue: float = 0.01  # shift in turns of the colour circle, in [-x, x]
    # Source sharpness: sharpen (unsharp mask) with probability sharpen_prob, else soften by resolution loss.
    sharpen_prob: float = 0.5
    sharpen_amount: Range = (0.3, 1.0)  # unsharp-mask amount
    soften_scale: Range = (0.3, 0.7)  # downscale factor before upscaling back
    # Source misalignment: scale about the face centre and shift.
    source_scale: Range = (0.97, 1.03)
    source_translate: float = 0.02  # largest |shift| in x and in y

    def __post_init__(self) -> None:
        if not self.hulls or any(h not in MASK_HULLS for h in self.hulls):
            raise ValueError(f"hulls must be a non-empty tuple of {sorted(MASK_HULLS)}, got {self.hulls}")
        _check_range("mask_scale", self.mask_scale, 0.5, 2.0)
        if len(self.mask_translate) != 2 or not all(0 <= t <= 0.5 for t in self.mask_translate):
            raise ValueError(f"mask_translate is (x, y), each in [0, 0.5], got {self.mask_translate}")
        for name, high in (
            ("mask_rotate", 45.0),
            ("elastic_amplitude", 0.5),
            ("hull_margin", 0.5),
            ("rgb_shift", 255.0),
            ("source_translate", 0.5),
            ("hue", 0.5),
        ):
            if not 0.0 <= getattr(self, name) <= high:
                raise ValueError(f"{name} must be in [0, {high}], got {getattr(self, name)}")
        if not 0.0 < self.elastic_smoothness <= 1.0:
            raise ValueError(f"elastic_smoothness must be in (0, 1], got {self.elastic_smoothness}")
        for name in ("brightness", "contrast", "saturation"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        for name in ("full_blend_prob", "rgb_shift_prob", "sharpen_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} is a probability in [0, 1], got {getattr(self, name)}")
        _check_range("blur_radius", self.blur_radius, 0.0, 0.5)
        _check_range("blend_ratio", self.blend_ratio, 1e-3, 1.0)
        _check_range("sharpen_amount", self.sharpen_amount, 0.0, 10.0)
        _check_range("soften_scale", self.soften_scale, 1e-2, 1.0)
        _check_range("source_scale", self.source_scale, 0.5, 2.0)


@dataclass(frozen=True)
class SBIResult:
    """One pseudo-fake. fake = rint(mask * source + (1 - mask) * target), target = the input image."""

    fake: np.ndarray  # (H, W, 3) uint8 RGB
    mask: np.ndarray  # (H, W) float32 in [0, 1]: blend weight of the source, ratio * soft mask
    ratio: float  # blend ratio: the mask's maximum
    source: np.ndarray  # (H, W, 3) uint8: the transformed, shifted copy that was blended in
    hull: str  # name in MASK_HULLS of the mask shape


def _face_frame(landmarks: np.ndarray) -> tuple[float, np.ndarray]:
    """Face size (larger side of the landmarks' bounding box, px) and centre (mean landmark, (2,))."""
    return float(np.ptp(landmarks, axis=0).max()), landmarks.mean(axis=0)


def _fill(polygon: np.ndarray, height: int, width: int) -> np.ndarray:
    """Binary (height, width) uint8 image, 1 inside the polygon (sub-pixel vertices)."""
    out = np.zeros((height, width), np.uint8)
    cv2.fillPoly(out, [np.round(polygon * 16).astype(np.int32)], 1, cv2.LINE_8, 4)
    return out


def _elastic(
    mask: np.ndarray, rng: np.random.Generator, amplitude_px: float, spacing_px: float
) -> np.ndarray:
    """Warp a float mask by a smooth random displacement field of largest magnitude amplitude_px."""
    h, w = mask.shape
    gh, gw = max(2, math.ceil(h / spacing_px) + 1), max(2, math.ceil(w / spacing_px) + 1)
    coarse = rng.uniform(-1.0, 1.0, size=(gh, gw, 2)).astype(np.float32)
    field = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)  # (H, W, 2) smooth
    field *= amplitude_px / max(float(np.abs(field).max()), 1e-6)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    map_x, map_y = xs + field[..., 0], ys + field[..., 1]
    return cv2.remap(mask, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)


def _soft_edges(binary: np.ndarray, radius: int) -> np.ndarray:
    """Erode a binary mask by `radius` px, blur with a Gaussian of that radius, scale to max 1: float32.

    The square erosion and the equally wide blur kernel cancel, so the support stays inside `binary`.
    """
    while radius > 0:
        k = 2 * radius + 1
        eroded = cv2.erode(binary, np.ones((k, k), np.uint8))
        if eroded.any():
            soft = cv2.GaussianBlur(eroded.astype(np.float32), (k, k), radius / 2.0)
            return soft / soft.max() * binary  # the product only removes rounding-level spill, if any
        radius //= 2  # the mask is thinner than 2r: a smaller radius
    return binary.astype(np.float32)


def _mask(
    landmarks: np.ndarray, shape: tuple[int, int], rng: np.random.Generator, cfg: SBIConfig
) -> tuple[np.ndarray, str]:
    """Soft mask (H, W) float32 in [0, 1] with maximum 1, and the name of its hull."""
    h, w = shape
    size, center = _face_frame(landmarks)
    name = cfg.hulls[int(rng.integers(len(cfg.hulls)))]
    hull = _fill(MASK_HULLS[name](landmarks), h, w).astype(np.float32)

    angle = rng.uniform(-cfg.mask_rotate, cfg.mask_rotate)
    scale = rng.uniform(*cfg.mask_scale)
    shift = rng.uniform(-1.0, 1.0, size=2) * np.asarray(cfg.mask_translate) * size
    affine = cv2.getRotationMatrix2D((float(center[0]), float(center[1])), float(angle), float(scale))
    affine[:, 2] += shift
    warped = cv2.warpAffine(hull, affine, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    warped = _elastic(warped, rng, cfg.elastic_amplitude * size, max(cfg.elastic_smoothness * size, 2.0))

    outer = _fill(cv2.convexHull(np.concatenate([face_hull(landmarks), landmarks]).astype(np.float32)), h, w)
    margin = math.ceil(cfg.hull_margin * size)
    if margin > 0:
        outer = cv2.dilate(outer, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * margin + 1, 2 * margin + 1)))
    binary = ((warped > 0.5) & (outer > 0)).astype(np.uint8)
    radius = round(rng.uniform(*cfg.blur_radius) * size)
    if not binary.any():
        raise InputError(f"the face's {name} hull does not overlap the {w}x{h} image")
    return _soft_edges(binary, radius), name


def _source(
    image: np.ndarray, landmarks: np.ndarray, rng: np.random.Generator, cfg: SBIConfig
) -> np.ndarray:
    """The transformed copy: colour, sharpness, then a slight shift and rescale about the face centre."""
    h, w = image.shape[:2]
    size, center = _face_frame(landmarks)
    src = image
    if rng.random() < cfg.rgb_shift_prob:
        src = augment.rgb_shift(src, rng, cfg.rgb_shift)
    src = augment.color_jitter(src, rng, cfg.brightness, cfg.contrast, cfg.saturation, cfg.hue)
    if rng.random() < cfg.sharpen_prob:
        src = augment.sharpen(src, rng, cfg.sharpen_amount)
    else:
        src = augment.downscale(src, rng, cfg.soften_scale)
    scale = rng.uniform(*cfg.source_scale)
    shift = rng.uniform(-cfg.source_translate, cfg.source_translate, size=2) * size
    affine = cv2.getRotationMatrix2D((float(center[0]), float(center[1])), 0.0, float(scale))
    affine[:, 2] += shift
    return cv2.warpAffine(src, affine, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)


def blend(source: np.ndarray, target: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """rint(weight * source + (1 - weight) * target) as uint8; exactly `target` where weight == 0.

    source, target: (H, W, 3) uint8; weight: (H, W) float in [0, 1].
    """
    w = weight.astype(np.float32)[..., None]  # (H, W, 1)
    out = np.rint(w * source.astype(np.float32) + (1.0 - w) * target.astype(np.float32))
    out = np.clip(out, 0, 255).astype(np.uint8)
    keep = weight == 0
    out[keep] = target[keep]
    return out


def self_blend(
    image: np.ndarray, landmarks: np.ndarray, rng: np.random.Generator, config: SBIConfig | None = None
) -> SBIResult:
    """A self-blended pseudo-fake of one face; deterministic for a given generator state.

    image: (H, W, 3) uint8 RGB face crop; landmarks: (68, 2) x, y in pixels of that crop (iBUG order).
    """
    cfg = config or SBIConfig()
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise InputError(f"SBI needs an (H, W, 3) uint8 RGB image, got {image.shape} {image.dtype}")
    pts = np.asarray(landmarks, dtype=np.float64)
    if pts.shape != (68, 2) or not np.isfinite(pts).all():
        raise InputError(f"SBI needs (68, 2) finite landmarks, got shape {pts.shape}")
    if _face_frame(pts)[0] < 4:
        raise InputError("SBI needs landmarks spread over the face; these collapse to a point")
    soft, hull = _mask(pts, image.shape[:2], rng, cfg)
    ratio = 1.0 if rng.random() < cfg.full_blend_prob else float(rng.uniform(*cfg.blend_ratio))
    source = _source(image, pts, rng, cfg)
    weight = (soft * np.float32(ratio)).astype(np.float32)  # (H, W)
    return SBIResult(fake=blend(source, image, weight), mask=weight, ratio=ratio, source=source, hull=hull)
