"""Where a fake was forged: difference maps of real DFDC fakes and their reals, synthetic edits, the patch
targets the dataset gives, the vit patch head and its heatmap, and `realface finetune --mask-weight`."""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from realface.bundle import load_bundle
from realface.cli import main
from realface.data.augment import WildAugment, WildAugmentConfig
from realface.data.faceset import Preprocessing, read_face
from realface.data.forgery_mask import face_hull_mask, pair_difference_map, patch_targets
from realface.data.labelled import DetectionFaces, build_items
from realface.errors import RealfaceError
from realface.faces.align import CropSettings, apply_matrix
from realface.faces.manifest import read_face_manifest
from realface.models.detectors import ClassifierOptions, DetectorConfig, build_detector, options_for
from realface.models.detectors.base import patch_mask_loss


@pytest.fixture(scope="module")
def dfdc_pairs(shared_data: Path, tmp_path_factory) -> Path:
    """Eight DFDC source videos with their fake (train split) and four with theirs (val split), through
    preprocess at 64 px: a manifest with landmarks, label, group and split."""
    from realface.faces.pipeline import PipelineConfig
    from realface.faces.preprocess import preprocess

    with (shared_data / "dfdc" / "manifest.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    by_group: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        by_group.setdefault((row["split"], row["group"]), []).append(row)
    chosen = []
    for split, n in (("train", 8), ("val", 4)):
        pairs = [g for (s, _), g in by_group.items() if s == split and len(g) == 2][:n]
        chosen += [r for g in pairs for r in g]
    tmp = tmp_path_factory.mktemp("dfdc_pairs")
    manifest = tmp / "input.csv"
    with manifest.open("w", newline="") as f:
        writer = csv.DictWriter(f, ["path", "label", "group", "split"])
        writer.writeheader()
        writer.writerows({**r, "path": str(shared_data / "dfdc" / r["path"])} for r in chosen)
    out = tmp / "faces"
    report = preprocess([manifest], out, config=PipelineConfig(crop_size=64, assume_cropped=True), progress=False)
    assert report.ok
    return out / "manifest.csv"


def test_difference_map_finds_an_edit_despite_misregistration(utk_crops):
    """A real face, slightly rotated and shifted (as a real frame and its fake crop differ), against the
    unmoved face with its mouth region blurred and tinted: the map is high on the edit and low elsewhere."""
    record = read_face_manifest(utk_crops / "manifest.csv")[0]
    face, landmarks = read_face(record), record.landmarks
    h, w = face.shape[:2]
    fake = face.copy()
    mouth = np.zeros((h, w), np.uint8)
    cv2.fillConvexPoly(mouth, cv2.convexHull(landmarks[48:68].astype(np.float32)).astype(np.int32), 1)
    mouth = cv2.dilate(mouth, np.ones((9, 9), np.uint8)).astype(bool)
    edited = cv2.GaussianBlur(face, (0, 0), 4).astype(np.float32) + np.array([40, -20, -20], np.float32)
    fake[mouth] = np.clip(edited[mouth], 0, 255).astype(np.uint8)

    moved = cv2.getRotationMatrix2D((w / 2, h / 2), 4.0, 1.03)
    moved[:, 2] += (2.0, -3.0)
    real = cv2.warpAffine(face, moved, (w, h), borderMode=cv2.BORDER_REFLECT_101)
    real_landmarks = apply_matrix(moved, landmarks)

    forged = pair_difference_map(fake, landmarks, real, real_landmarks)
    assert forged.shape == (h, w) and forged.dtype == np.float32 and 0.0 <= forged.min() <= forged.max() <= 1.0
    inside = face_hull_mask(landmarks, (h, w), growth=0.0).astype(bool) & ~cv2.dilate(mouth.astype(np.uint8), np.ones((15, 15), np.uint8)).astype(bool)
    assert forged[mouth].mean() > 0.6
    assert forged[inside].mean() < 0.2
    # nothing outside the grown face hull counts
    assert forged[face_hull_mask(landmarks, (h, w)) == 0].max() == 0.0


def test_identical_faces_differ_nowhere(utk_crops):
    record = read_face_manifest(utk_crops / "manifest.csv")[1]
    face = read_face(record)
    forged = pair_difference_map(face, record.landmarks, face.copy(), record.landmarks)
    assert forged.max() < 0.05


def test_patch_targets_average_each_patch():
    pixel_map = np.zeros((8, 8), np.float32)
    pixel_map[:4, :4] = 1.0  # the top-left patch of a 2x2 grid, fully
    pixel_map[4:, 4:6] = 1.0  # half of the bottom-right one
    assert patch_targets(pixel_map, (2, 2)).tolist() == [1.0, 0.0, 0.0, 0.5]
    # a side that the grid does not divide is resampled first
    assert patch_targets(np.ones((10, 10), np.float32), (4, 4)) == pytest.approx(np.ones(16))


def test_augmenting_with_a_map_gives_the_same_image_and_a_map_that_follows_the_flip(utk_crops):
    face = read_face(read_face_manifest(utk_crops / "manifest.csv")[0])
    pixel_map = np.zeros(face.shape[:2], np.float32)
    pixel_map[:, :10] = 1.0  # the left edge
    augment = WildAugment(WildAugmentConfig())
    flips = 0
    for seed in range(8):
        image, _ = augment(face, np.random.default_rng(seed))
        same, moved = augment.with_map(face, np.random.default_rng(seed), pixel_map)
        assert np.array_equal(image, same)
        flipped = moved[:, -10:].min() == 1.0
        assert flipped != (moved[:, :10].min() == 1.0)
        flips += flipped
        # the image was mirrored exactly when the map was (compare against the unflipped augmentation)
        unflipped, _ = WildAugment(WildAugmentConfig(flip_prob=0.0))(face, np.random.default_rng(seed))
        assert flipped == (not np.array_equal(image, unflipped))
    assert 0 < flips < 8
    with pytest.raises(ValueError, match="shape"):
        augment.with_map(face, np.random.default_rng(0), pixel_map[:5])


def test_dataset_gives_patch_targets_for_reals_sbi_and_paired_fakes(dfdc_pairs):
    records = [r for r in read_face_manifest(dfdc_pairs) if r.extra["split"] == "train"]
    items = build_items(records, sbi_ratio=0.5)
    fakes = [it for it in items if it.kind == "face" and it.label == 1]
    assert len(fakes) == 8 and all(it.partner is not None for it in fakes)
    assert all(it.partner.extra["group"] == it.record.extra["group"] and it.partner.label == "real" for it in fakes)
    # a fake whose real is not among the records has no partner, and its target is unknown
    alone = build_items([r for r in records if r.label == "fake"])
    assert all(it.partner is None for it in alone)

    grid = (4, 4)
    data = DetectionFaces(items, Preprocessing(img_size=64, crop=CropSettings(size=64)), augment=WildAugmentConfig(), mask_grid=grid)
    by_kind: dict[str, list[dict]] = {"real": [], "fake": [], "sbi": []}
    for i, item in enumerate(items):
        kind = "sbi" if item.kind == "sbi" else ("fake" if item.label else "real")
        by_kind[kind].append(data[i])
    for sample in by_kind["real"]:
        assert sample["mask_known"] == 1.0 and sample["mask"].shape == (16,) and sample["mask"].max() == 0.0
    for kind in ("fake", "sbi"):
        targets = torch.stack([s["mask"] for s in by_kind[kind]])
        assert all(s["mask_known"] == 1.0 for s in by_kind[kind])
        assert targets.min() >= 0.0 and targets.max() <= 1.0
        # each fake is forged somewhere (faintly where the swap is subtle), none everywhere
        assert (targets.amax(dim=1) > 0.05).all()
        assert (targets.mean(dim=1) < 0.8).all()
    unknown = DetectionFaces(alone, Preprocessing(img_size=64, crop=CropSettings(size=64)), mask_grid=grid)[0]
    assert unknown["mask_known"] == 0.0
    # without a grid no mask targets: image, label and whether teachers score it
    assert set(DetectionFaces(items, Preprocessing(img_size=64, crop=CropSettings(size=64)))[0]) == {"image", "label", "taught"}


def test_patch_mask_loss_counts_only_known_targets():
    logits = torch.tensor([[10.0, -10.0], [0.0, 0.0]])
    target = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    right = patch_mask_loss(logits, target, torch.tensor([1.0, 0.0]))
    assert right.item() == pytest.approx(0.0, abs=1e-3)
    both = patch_mask_loss(logits, target, torch.tensor([1.0, 1.0]))
    assert both.item() == pytest.approx(np.log(2) / 2, abs=1e-3)
    assert patch_mask_loss(logits, target, torch.zeros(2)).item() == 0.0


def test_patch_head_and_its_heatmap():
    torch.manual_seed(0)
    detector = build_detector(DetectorConfig(img_size=64, options=ClassifierOptions(mask_weight=1.0))).eval()
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out = detector(images)
    assert out.extras["patch_logits"].shape == (2, 16)
    maps = detector.heatmap(images)
    assert maps.shape == (2, 64, 64) and 0.0 <= maps.min() <= maps.max() <= 1.0
    # the map is the patch probabilities upsampled: a patch's centre pixel is near its probability
    probs = out.extras["patch_logits"].sigmoid().reshape(2, 4, 4)
    assert maps[:, 8, 8].tolist() == pytest.approx(probs[:, 0, 0].tolist(), abs=0.05)
    assert "patch_logits" not in build_detector(DetectorConfig(img_size=64))(images).extras
    with pytest.raises(RealfaceError, match="mask"):
        DetectorConfig(name="rffr", img_size=64, options=options_for("rffr", {"blocks": 2, "mask_weight": 1.0}))
    with pytest.raises(RealfaceError, match="mask"):
        DetectorConfig(options=ClassifierOptions(mask_weight=-1.0))


def test_finetune_with_mask_weight_trains_the_patch_head_and_exports_it(dfdc_pairs, tmp_path):
    run = tmp_path / "ft"
    args = ["finetune", "--data", str(dfdc_pairs), "--out", str(run), "--img-size", "64", "--crop-size", "64",
            "--mask-weight", "1", "--pseudo-fakes", "sbi", "--sbi-ratio", "0.5",
            "--epochs", "1", "--batch-size", "8", "--workers", "0", "--no-progress"]  # fmt: skip
    assert main(args) == 0
    with (run / "log.csv").open(newline="") as f:
        log = list(csv.DictReader(f))
    assert log and all(0.0 < float(r["mask"]) < 5.0 for r in log)
    bundle = load_bundle(run)
    assert bundle.config.options.mask_weight == 1.0 and bundle.detector.patch_head is not None
    faces = DetectionFaces(build_items(read_face_manifest(dfdc_pairs)[:2]), bundle.pre)
    maps = bundle.detector.eval().heatmap(torch.stack([faces[i]["image"] for i in range(2)]))
    assert maps.shape == (2, 64, 64)


def test_localization_report_scores_the_patch_head_on_paired_fakes(dfdc_pairs):
    from realface.eval.localization import localization_report
    from realface.models.detectors.base import DetectorOutput

    records = [r for r in read_face_manifest(dfdc_pairs) if r.extra["split"] == "val"]
    faces = DetectionFaces(build_items(records), Preprocessing(img_size=64, crop=CropSettings(size=64)), mask_grid=(8, 8))
    fakes = [i for i, it in enumerate(faces.items) if it.label == 1]
    truth = torch.stack([faces[i]["mask"] for i in fakes])  # what the report compares against, in its order

    class Oracle(torch.nn.Module):
        """Answers each batch with the true targets (logit-like: forged fraction - 0.5), in dataset order."""

        def __init__(self) -> None:
            super().__init__()
            self.seen = 0
            self.anchor = torch.nn.Parameter(torch.zeros(1))

        def forward(self, images: torch.Tensor) -> DetectorOutput:
            rows = truth[self.seen : self.seen + len(images)]
            self.seen += len(images)
            return DetectorOutput(torch.zeros(len(images), 2), torch.zeros(len(images)), None, {"patch_logits": rows - 0.5})

    report = localization_report(Oracle(), faces, batch_size=3)
    assert report["faces"] == 4 and report["patches"] == 256
    assert report["forged_patches"] == int((truth >= 0.5).sum()) and report["patch_auc"] == 1.0
    assert report["inside_face_auc"] == 1.0 and 0.5 < report["face_prior_auc"] < 1.0
    # fakes without their real: nothing to measure
    alone = DetectionFaces(build_items([r for r in records if r.label == "fake"]), faces.pre, mask_grid=(8, 8))
    assert localization_report(Oracle(), alone) is None
