"""Self-blended pseudo-fakes on real UTKFace faces with dlib landmarks, and `synth_sbi` end to end."""

from __future__ import annotations

import csv
import importlib.util
import json
import math
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from realface.data.sbi import MASK_HULLS, SBIConfig, blend, self_blend
from realface.data.synth import MANIFEST_COLUMNS, synth_sbi
from realface.errors import InputError, RealfaceError
from realface.faces.regions import face_hull

N_FACES = 4


def dlib_models() -> tuple[object, object]:
    """dlib's HOG face detector and 68-point shape predictor (from face_recognition_models)."""
    import dlib

    models = importlib.util.find_spec("face_recognition_models").submodule_search_locations[0]
    predictor = dlib.shape_predictor(models + "/models/shape_predictor_68_face_landmarks.dat")
    return dlib.get_frontal_face_detector(), predictor


def find_landmarks(detector: object, predictor: object, image: np.ndarray) -> np.ndarray | None:
    """(68, 2) float landmarks of the largest face found with upsample 1, or None."""
    boxes = detector(image, 1)
    if not boxes:
        return None
    box = max(boxes, key=lambda b: b.width() * b.height())
    shape = predictor(image, box)
    return np.array([[p.x, p.y] for p in shape.parts()], np.float64)


@pytest.fixture(scope="module")
def face_with_landmarks(shared_data: Path) -> list[tuple[Path, np.ndarray, np.ndarray]]:
    """A few UTKFace crops (path, (H, W, 3) uint8 RGB, (68, 2) landmarks), spread over the sorted list."""
    detector, predictor = dlib_models()
    paths = sorted((shared_data / "utkface" / "images").glob("*.jpg"))
    faces = []
    for path in paths[:: len(paths) // 40]:
        image = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
        landmarks = find_landmarks(detector, predictor, image)
        if landmarks is not None:
            faces.append((path, image, landmarks))
        if len(faces) == N_FACES:
            return faces
    pytest.fail("dlib found too few faces in UTKFace")


def outer_face_distance(landmarks: np.ndarray, height: int, width: int) -> np.ndarray:
    """Per-pixel distance (px) to the face: the forehead hull together with the hull of all landmarks."""
    inside = np.zeros((height, width), np.uint8)
    for poly in (face_hull(landmarks), cv2.convexHull(landmarks.astype(np.float32)).reshape(-1, 2)):
        cv2.fillPoly(inside, [np.round(poly).astype(np.int32)], 1)
    return cv2.distanceTransform(1 - inside, cv2.DIST_L2, 5)


def test_fake_equals_input_outside_mask_and_differs_inside(face_with_landmarks) -> None:
    for _, image, landmarks in face_with_landmarks:
        for seed in range(3):
            result = self_blend(image, landmarks, np.random.default_rng(seed))
            assert result.fake.shape == image.shape and result.fake.dtype == np.uint8
            outside = result.mask == 0
            np.testing.assert_array_equal(result.fake[outside], image[outside])
            inside = result.mask > 0.2
            assert inside.sum() > 0.1 * (cv2.contourArea(MASK_HULLS["inner"](landmarks)))
            differs = (result.fake != image).any(axis=-1)
            assert differs[inside].mean() > 0.8


def test_mask_is_a_weight_within_the_dilated_face_hull(face_with_landmarks) -> None:
    config = SBIConfig()
    for _, image, landmarks in face_with_landmarks:
        size = np.ptp(landmarks, axis=0).max()
        distance = outer_face_distance(landmarks, *image.shape[:2])
        for seed in range(4):
            result = self_blend(image, landmarks, np.random.default_rng(seed), config)
            assert result.mask.shape == image.shape[:2] and result.mask.dtype == np.float32
            assert result.mask.min() >= 0 and result.mask.max() == pytest.approx(result.ratio, abs=1e-6)
            # a few pixels: the configured margin, plus rounding of polygon vertices
            assert distance[result.mask > 0].max() <= config.hull_margin * size + 2.0


def test_deterministic_under_seed_and_different_across_seeds(face_with_landmarks) -> None:
    _, image, landmarks = face_with_landmarks[0]
    a = self_blend(image, landmarks, np.random.default_rng(7))
    b = self_blend(image, landmarks, np.random.default_rng(7))
    np.testing.assert_array_equal(a.fake, b.fake)
    np.testing.assert_array_equal(a.mask, b.mask)
    others = [self_blend(image, landmarks, np.random.default_rng(s)) for s in (8, 9)]
    for other in others:
        assert not np.array_equal(a.mask, other.mask)
        assert not np.array_equal(a.fake, other.fake)


def test_blend_ratio_is_respected(face_with_landmarks) -> None:
    _, image, landmarks = face_with_landmarks[1]
    fixed = SBIConfig(full_blend_prob=0.0, blend_ratio=(0.4, 0.4))
    result = self_blend(image, landmarks, np.random.default_rng(0), fixed)
    assert result.ratio == pytest.approx(0.4)
    full = result.mask >= result.ratio - 1e-6  # soft mask == 1: weight == ratio
    assert full.sum() > 100
    expected = 0.4 * result.source.astype(np.float64) + 0.6 * image.astype(np.float64)
    assert np.abs(result.fake[full] - expected[full]).max() <= 0.5 + 1e-3
    # and everywhere: fake = w * source + (1 - w) * target, rounded
    w = result.mask.astype(np.float64)[..., None]
    anywhere = w * result.source + (1 - w) * image
    assert np.abs(result.fake - anywhere).max() <= 0.5 + 1e-3

    always_full = self_blend(image, landmarks, np.random.default_rng(0), SBIConfig(full_blend_prob=1.0))
    assert always_full.ratio == 1.0
    core = always_full.mask >= 1.0 - 1e-6
    np.testing.assert_allclose(always_full.fake[core], always_full.source[core], atol=1)


def test_ratios_follow_the_config() -> None:
    rng = np.random.default_rng(0)
    image = np.full((96, 96, 3), 128, np.uint8)
    cx, cy = 48, 50
    angles = np.linspace(0, 2 * np.pi, 68, endpoint=False)
    landmarks = np.stack([cx + 30 * np.cos(angles), cy + 35 * np.sin(angles)], axis=1)
    config = SBIConfig(full_blend_prob=0.5, blend_ratio=(0.25, 0.75))
    ratios = np.array([self_blend(image, landmarks, rng, config).ratio for _ in range(40)])
    full = ratios == 1.0
    assert 0.2 < full.mean() < 0.8
    assert ((ratios[~full] >= 0.25) & (ratios[~full] <= 0.75)).all()


def test_each_hull_variant(face_with_landmarks) -> None:
    _, image, landmarks = face_with_landmarks[2]
    area = {}
    for name in MASK_HULLS:
        config = SBIConfig(hulls=(name,), full_blend_prob=1.0)
        results = [self_blend(image, landmarks, np.random.default_rng(s), config) for s in range(3)]
        assert all(r.hull == name for r in results)
        area[name] = np.mean([(r.mask > 0.5).sum() for r in results])
    assert area["inner"] < area["landmarks"] < area["face"]


def test_lower_hull_blends_the_mouth_and_chin_only(face_with_landmarks) -> None:
    config = SBIConfig(hulls=("lower",), full_blend_prob=1.0)
    for _, image, landmarks in face_with_landmarks:
        eyes_y = landmarks[36:48, 1].mean()
        mouth = np.round(landmarks[48:68].mean(axis=0)).astype(int)
        for seed in range(3):
            result = self_blend(image, landmarks, np.random.default_rng(seed), config)
            assert result.hull == "lower" and result.mask[mouth[1], mouth[0]] > 0.5  # the mouth is blended ...
            assert result.mask[: int(eyes_y)].max() == 0.0  # ... the eyes and everything above them are untouched
            np.testing.assert_array_equal(result.fake[: int(eyes_y)], image[: int(eyes_y)])


def test_blend_keeps_target_where_weight_is_zero() -> None:
    rng = np.random.default_rng(0)
    source = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    target = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    weight = np.zeros((8, 8), np.float32)
    weight[2:5, 2:5] = 1.0
    weight[6, 6] = 0.5
    out = blend(source, target, weight)
    np.testing.assert_array_equal(out[weight == 0], target[weight == 0])
    np.testing.assert_array_equal(out[2:5, 2:5], source[2:5, 2:5])
    assert abs(int(out[6, 6, 0]) - (int(source[6, 6, 0]) + int(target[6, 6, 0])) / 2) <= 0.5


def test_config_and_input_checks(face_with_landmarks) -> None:
    with pytest.raises(ValueError, match="hulls"):
        SBIConfig(hulls=("ears",))
    with pytest.raises(ValueError, match="blend_ratio"):
        SBIConfig(blend_ratio=(0.8, 0.2))
    with pytest.raises(ValueError, match="full_blend_prob"):
        SBIConfig(full_blend_prob=1.5)
    _, image, landmarks = face_with_landmarks[0]
    rng = np.random.default_rng(0)
    with pytest.raises(InputError, match="landmarks"):
        self_blend(image, landmarks[:5], rng)
    with pytest.raises(InputError, match="uint8"):
        self_blend(image[..., 0], landmarks, rng)
    with pytest.raises(InputError, match="overlap"):
        self_blend(image, landmarks + 5 * image.shape[0], rng)


def write_face_manifest(path: Path, rows: list[dict[str, object]]) -> None:
    """A tiny face manifest: path, label, landmarks as JSON (or empty when none were found)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["path", "label", "landmarks"])
        writer.writeheader()
        writer.writerows(rows)


def read_tiny_manifest(path: Path) -> list[SimpleNamespace]:
    """Records like realface.faces.manifest.FaceRecord: path, landmarks (68, 2) or None, label, extra."""
    with open(path, newline="") as f:
        return [
            SimpleNamespace(
                path=Path(row["path"]),
                label=row["label"],
                landmarks=np.array(json.loads(row["landmarks"])) if row["landmarks"] else None,
                extra={},
            )
            for row in csv.DictReader(f)
        ]


def test_synth_sbi_writes_fakes_masks_sheets_and_manifest(face_with_landmarks, tmp_path: Path) -> None:
    faces = face_with_landmarks[:3]
    rows = [{"path": str(p), "label": "real", "landmarks": json.dumps(lm.tolist())} for p, _, lm in faces]
    rows.append({"path": str(faces[0][0]), "label": "fake", "landmarks": json.dumps(faces[0][2].tolist())})
    rows.append({"path": str(faces[1][0]), "label": "real", "landmarks": ""})
    write_face_manifest(tmp_path / "faces" / "manifest.csv", rows)

    out = tmp_path / "sbi"
    kwargs = dict(count=None, seed=3, config=SBIConfig(), progress=False, reader=read_tiny_manifest)
    assert synth_sbi([tmp_path / "faces"], out, **kwargs) == 3
    with open(out / "manifest.csv", newline="") as f:
        written = list(csv.DictReader(f))
    assert len(written) == 3 and tuple(written[0]) == MANIFEST_COLUMNS
    for row, (path, image, _) in zip(written, faces):
        assert row["label"] == "fake" and Path(row["source"]) == path
        fake = cv2.cvtColor(cv2.imread(str(out / row["path"])), cv2.COLOR_BGR2RGB)
        mask = cv2.imread(str(out / row["mask"]), cv2.IMREAD_GRAYSCALE)
        sheet = cv2.imread(str(out / row["sheet"]))
        assert fake.shape == image.shape and mask.shape == image.shape[:2]
        assert sheet.shape == (image.shape[0], 3 * image.shape[1], 3)
        np.testing.assert_array_equal(fake[mask == 0], image[mask == 0])
        assert (fake != image).any(axis=-1)[mask > 128].mean() > 0.8
        assert math.isclose(float(row["blend_ratio"]), mask.max() / 255, abs_tol=0.01)

    again = tmp_path / "again"
    assert synth_sbi([tmp_path / "faces" / "manifest.csv"], again, **{**kwargs, "count": 5}) == 5
    first = written[0]["path"]
    assert (out / first).read_bytes() == (again / first).read_bytes()  # fake i depends on (seed, i) only
    assert len(list(again.glob("*_fake.png"))) == 5

    with pytest.raises(RealfaceError, match="no face manifest"):
        synth_sbi([tmp_path / "missing"], out, **kwargs)

