"""Facial regions from real landmarks: disjoint, inside the image, parts where their landmarks are."""

from __future__ import annotations

import numpy as np
import pytest
from skimage import data

from realface.faces.pipeline import FacePipeline, PipelineConfig
from realface.faces.regions import (
    EYES,
    FACIAL_REGIONS,
    MOUTH,
    NOSE,
    REGIONS,
    REST,
    SKIN,
    colorize,
    patch_region_fractions,
    region_label_map,
)


@pytest.fixture(scope="module")
def astronaut_face():
    faces = FacePipeline(PipelineConfig(crop_size=224)).faces_in_image(data.astronaut())
    assert len(faces) == 1
    return faces[0]


def _at(label: np.ndarray, point: np.ndarray) -> int:
    x, y = np.round(point).astype(int)
    return int(label[y, x])


def test_parts_lie_on_their_landmarks(astronaut_face) -> None:
    lm = astronaut_face.landmarks
    label = region_label_map(lm, 224, 224)
    assert label.shape == (224, 224) and label.dtype == np.uint8
    assert set(np.unique(label)) <= set(range(len(REGIONS)))
    assert _at(label, lm[36:42].mean(0)) == EYES and _at(label, lm[42:48].mean(0)) == EYES
    assert _at(label, lm[30]) == NOSE
    assert _at(label, lm[[51, 57]].mean(0)) == MOUTH
    assert _at(label, (lm[2] + lm[30]) / 2) == SKIN  # cheek
    assert label[0, 0] == REST and label[0, 223] == REST
    for region, pts in ((EYES, lm[36:48]), (NOSE, lm[27:36]), (MOUTH, lm[48:60])):
        ys, xs = np.nonzero(label == region)
        lo, hi = pts.min(0), pts.max(0)
        pad = 0.25 * (hi - lo) + 2
        assert xs.min() >= lo[0] - pad[0] and xs.max() <= hi[0] + pad[0]
        assert ys.min() >= lo[1] - pad[1] and ys.max() <= hi[1] + pad[1]


def test_regions_are_disjoint_and_cover_the_image(astronaut_face) -> None:
    label = region_label_map(astronaut_face.landmarks, 224, 224)
    fractions = patch_region_fractions(label, 16)
    assert fractions.shape == (14, 14, len(REGIONS))
    np.testing.assert_allclose(fractions.sum(-1), 1.0, atol=1e-6)  # each pixel in exactly one region
    # Hand count for one patch.
    patch = label[96:112, 112:128]
    np.testing.assert_allclose(fractions[6, 7], np.bincount(patch.ravel(), minlength=len(REGIONS)) / 256)
    for region in FACIAL_REGIONS:
        assert (label == region).any(), REGIONS[region]
    assert colorize(label).shape == (224, 224, 3)


def test_landmarks_outside_the_image_are_clipped(astronaut_face) -> None:
    shifted = astronaut_face.landmarks - np.array([150.0, 0.0])
    label = region_label_map(shifted, 224, 224)
    assert label.shape == (224, 224)
    assert (label[:, 150:] == REST).all()  # nothing wraps around
    assert (label != REST).any()
    with pytest.raises(ValueError):
        patch_region_fractions(label, 15)
