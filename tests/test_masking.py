"""Masking strategies: exact ratio, CRFR-P's region rules on real faces, valid masks on odd grids, determinism."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import dlib
import numpy as np
import pytest
import torch
from PIL import Image

from realface.errors import RealfaceError
from realface.faces.regions import FACIAL_REGIONS, REGIONS, SKIN, patch_region_fractions, region_label_map
from realface.models.masking import MASKINGS, crfr_p_one, mask_to_indices, num_masked, sample_masks

PATCH = 16


def _landmarks(image: np.ndarray, predictor: dlib.shape_predictor) -> np.ndarray:
    """68 dlib landmarks (68, 2) of the largest face, or of the whole crop when none is detected."""
    faces = dlib.get_frontal_face_detector()(image, 1)
    h, w = image.shape[:2]
    rect = max(faces, key=lambda r: r.area()) if faces else dlib.rectangle(0, 0, w - 1, h - 1)
    shape = predictor(image, rect)
    return np.array([[shape.part(i).x, shape.part(i).y] for i in range(68)], dtype=np.float64)


@pytest.fixture(scope="module")
def face_fractions(shared_data: Path) -> dict[int, np.ndarray]:
    """Per-patch region fractions of 6 real UTKFace faces: {img_size: (6, g, g, R)} for 112 (7x7) and 224."""
    files = sorted((shared_data / "utkface" / "images").glob("*.jpg"))[:6]
    root = Path(importlib.util.find_spec("face_recognition_models").submodule_search_locations[0])
    predictor = dlib.shape_predictor(str(root / "models" / "shape_predictor_68_face_landmarks.dat"))
    out: dict[int, list[np.ndarray]] = {112: [], 224: []}
    for f in files:
        image = np.asarray(Image.open(f).convert("RGB"))
        lm = _landmarks(image, predictor)
        for size in out:
            scaled = lm * (size / image.shape[1], size / image.shape[0])
            out[size].append(patch_region_fractions(region_label_map(scaled, size, size), PATCH))
    return {size: np.stack(v) for size, v in out.items()}


def test_crfr_p_exact_ratio_and_chosen_region_fully_masked(face_fractions: dict[int, np.ndarray]) -> None:
    for size, frac in face_fractions.items():
        n, gh, gw, _ = frac.shape
        n_mask = num_masked(gh * gw, 0.75)
        g = torch.Generator().manual_seed(0)
        for _ in range(20):
            batch = sample_masks("crfr-p", n, (gh, gw), 0.75, g, torch.from_numpy(frac))
            assert batch.mask.dtype == torch.bool and batch.mask.shape == (n, gh * gw)
            assert (batch.mask.sum(dim=1) == n_mask).all()
            for i in range(n):
                r = int(batch.region[i])
                assert r in FACIAL_REGIONS
                touched = torch.from_numpy(frac[i].reshape(gh * gw, -1)[:, r] > 0)
                assert touched.any(), "the chosen region must be present in the face"
                if touched.sum() <= n_mask:
                    assert batch.mask[i][touched].all(), f"region {REGIONS[r]} not fully masked at {size}px"
                    assert torch.equal(batch.region_mask[i], touched)
                else:  # region alone exceeds the budget: only region patches are masked
                    assert not batch.mask[i][~touched].any()
                    assert torch.equal(batch.region_mask[i], batch.mask[i])


def test_crfr_p_masks_other_regions_in_proportion(face_fractions: dict[int, np.ndarray]) -> None:
    frac = face_fractions[224][0].reshape(14 * 14, -1)  # (L, R)
    n_mask = num_masked(196, 0.75)
    rng = np.random.default_rng(0)
    masked = {}  # (chosen region, dominant label of another patch) -> masked counts per draw
    sizes = {}
    for _ in range(600):
        mask, region = crfr_p_one(frac, n_mask, rng)
        touched = frac[:, region] > 0
        if touched.sum() >= n_mask:
            continue
        others = np.flatnonzero(~touched)
        dominant = frac[others].argmax(axis=1)
        expected_share = (n_mask - touched.sum()) / len(others)  # the same share for every other region
        for label in np.unique(dominant):
            members = others[dominant == label]
            if len(members) >= 4:
                masked.setdefault((region, label), []).append(mask[members].mean())
                sizes[(region, label)] = expected_share
    assert len({r for r, _ in masked}) >= 4, "several regions should be chosen over 600 draws"
    for key, shares in masked.items():
        assert abs(np.mean(shares) - sizes[key]) < 0.06, (key, np.mean(shares), sizes[key])


def test_crfr_p_region_larger_than_budget_is_trimmed_at_random() -> None:
    frac = np.zeros((5 * 9, len(REGIONS)), np.float32)
    frac[:, SKIN] = 1.0  # skin touches every patch, so it alone exceeds the 75% budget
    rng = np.random.default_rng(1)
    masks = [crfr_p_one(frac, num_masked(45, 0.75), rng) for _ in range(200)]
    assert all(region == SKIN and mask.sum() == 34 for mask, region in masks)
    per_patch = np.mean([mask for mask, _ in masks], axis=0)
    assert per_patch.min() > 0.5 and per_patch.max() < 0.95  # every patch sometimes visible


def test_crfr_p_falls_back_to_random_without_landmarks(face_fractions: dict[int, np.ndarray]) -> None:
    frac = face_fractions[112].copy()
    frac[1] = 0.0  # sample 1 has no landmarks
    batch = sample_masks("crfr-p", 6, (7, 7), 0.75, torch.Generator().manual_seed(3), frac)
    assert int(batch.region[1]) == -1 and not batch.region_mask[1].any()
    assert (batch.region[[0, 2, 3, 4, 5]] >= 0).all()
    assert (batch.mask.sum(dim=1) == 37).all()
    none = sample_masks("crfr-p", 3, (7, 7), 0.75, torch.Generator().manual_seed(3), None)
    assert (none.region == -1).all() and (none.mask.sum(dim=1) == 37).all()


@pytest.mark.parametrize("name", sorted(MASKINGS))
@pytest.mark.parametrize("grid", [(7, 7), (5, 9), (1, 3), (14, 14)])
@pytest.mark.parametrize("ratio", [0.75, 0.4])
def test_every_strategy_gives_valid_masks_on_odd_grids(name: str, grid: tuple[int, int], ratio: float) -> None:
    n, num_patches = 5, grid[0] * grid[1]
    rng = np.random.default_rng(0)
    frac = rng.dirichlet(np.ones(len(REGIONS)) * 0.3, size=(n, *grid)).astype(np.float32)
    frac[rng.random((n, *grid, len(REGIONS))) < 0.6] = 0.0  # sparse, like real faces
    batch = sample_masks(name, n, grid, ratio, torch.Generator().manual_seed(7), torch.from_numpy(frac))
    assert batch.mask.shape == (n, num_patches) and batch.mask.dtype == torch.bool
    assert (batch.mask.sum(dim=1) == num_masked(num_patches, ratio)).all()
    assert batch.region.shape == (n,) and batch.region_mask.shape == (n, num_patches)
    assert not (batch.region_mask & ~batch.mask).any()
    assert all(int(r) == -1 or int(r) in FACIAL_REGIONS for r in batch.region)
    idx = mask_to_indices(batch.mask)
    assert torch.equal(torch.sort(torch.cat([idx.keep_idx, idx.mask_idx], 1), 1).values, torch.arange(num_patches).expand(n, -1))


@pytest.mark.parametrize("name", sorted(MASKINGS))
def test_masks_are_deterministic_under_a_seed(name: str, face_fractions: dict[int, np.ndarray]) -> None:
    frac = torch.from_numpy(face_fractions[112])

    def draw(seed: int) -> torch.Tensor:
        return sample_masks(name, 6, (7, 7), 0.75, torch.Generator().manual_seed(seed), frac).mask

    assert torch.equal(draw(11), draw(11))
    assert not torch.equal(draw(11), draw(12))


def test_random_masking_is_uniform_over_patches() -> None:
    batch = sample_masks("random", 2000, (5, 9), 0.75, torch.Generator().manual_seed(0))
    per_patch = batch.mask.float().mean(dim=0)
    assert (per_patch - 34 / 45).abs().max() < 0.05


def test_block_masking_is_more_clustered_than_random() -> None:
    def masked_neighbours(mask: torch.Tensor) -> float:
        m = mask.view(-1, 14, 14).float()
        pad = torch.nn.functional.pad(m, (1, 1, 1, 1))
        neigh = pad[:, :-2, 1:-1] + pad[:, 2:, 1:-1] + pad[:, 1:-1, :-2] + pad[:, 1:-1, 2:]
        return float((neigh * m).sum() / m.sum())

    g = torch.Generator().manual_seed(0)
    block = masked_neighbours(sample_masks("block", 64, (14, 14), 0.4, g).mask)
    rand = masked_neighbours(sample_masks("random", 64, (14, 14), 0.4, g).mask)
    assert block > rand + 0.8, (block, rand)


def test_mask_to_indices_sorted_and_restores_order() -> None:
    mask = torch.tensor([[True, False, True, False, False], [False, False, True, True, False]])
    idx = mask_to_indices(mask)
    assert idx.keep_idx.tolist() == [[1, 3, 4], [0, 1, 4]]
    assert idx.mask_idx.tolist() == [[0, 2], [2, 3]]
    tokens = torch.arange(5).expand(2, -1)
    shuffled = torch.cat([tokens.gather(1, idx.keep_idx), tokens.gather(1, idx.mask_idx)], 1)
    assert torch.equal(shuffled.gather(1, idx.restore_idx), tokens)
    with pytest.raises(RealfaceError):
        mask_to_indices(torch.tensor([[True, False], [True, True]]))


def test_sample_masks_rejects_bad_arguments() -> None:
    with pytest.raises(RealfaceError, match="unknown masking"):
        sample_masks("nope", 2, (7, 7))
    with pytest.raises(RealfaceError, match="ratio"):
        sample_masks("random", 2, (7, 7), ratio=1.0)
    with pytest.raises(RealfaceError, match="fractions"):
        sample_masks("crfr-p", 2, (7, 7), 0.75, None, np.zeros((2, 5, 5, len(REGIONS))))
