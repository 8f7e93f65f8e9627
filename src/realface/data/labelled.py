"""Labelled faces for detectors: real (0) and fake (1) crops, plus self-blended pseudo-fakes made on the fly.

A training set is a list of items; each item is a face record and a `kind`:
- "face": a crop used as it is, with its manifest label;
- "sbi": a real crop turned into a pseudo-fake by `data.sbi.self_blend` (label 1).

`--pseudo-fakes sbi` adds one "sbi" item per real face times the SBI ratio, so a detector can be trained from
real faces alone (drop the labelled fakes) or from both. Every random draw of an item comes from
`numpy.random.default_rng([seed, epoch, index])`, as in pretraining.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from realface.data.augment import WildAugment, WildAugmentConfig
from realface.data.faceset import Preprocessing, read_face, to_tensor
from realface.data.sbi import SBIConfig, self_blend
from realface.errors import RealfaceError

# Manifest labels understood by every command; anything else is an error that names the label.
NEGATIVE_LABELS = frozenset({"real", "original", "live", "bonafide", "bona fide", "genuine", "0"})
POSITIVE_LABELS = frozenset({"fake", "spoof", "attack", "deepfake", "manipulated", "synthetic", "1"})


def label_to_int(label: str) -> int:
    """'real'/'live'/... -> 0, 'fake'/'spoof'/... -> 1 (case-insensitive)."""
    key = str(label).strip().lower()
    if key in NEGATIVE_LABELS:
        return 0
    if key in POSITIVE_LABELS:
        return 1
    raise RealfaceError(
        f"unknown label {label!r}: use one of {sorted(NEGATIVE_LABELS)} for real or {sorted(POSITIVE_LABELS)} for fake"
    )


@dataclass(frozen=True)
class Item:
    record: object  # a FaceRecord (path, landmarks, label, extra)
    kind: str  # "face" or "sbi"
    label: int  # 0 real, 1 fake


def build_items(
    records: list,
    *,
    labelled_fakes: bool = True,
    sbi_ratio: float = 0.0,
) -> list[Item]:
    """Training items: every real record, the fake records when `labelled_fakes`, and round(sbi_ratio * reals)
    SBI pseudo-fakes cycling over the real records that have landmarks."""
    items: list[Item] = []
    reals = []
    for rec in records:
        y = label_to_int(rec.label)
        if y == 0:
            reals.append(rec)
            items.append(Item(rec, "face", 0))
        elif labelled_fakes:
            items.append(Item(rec, "face", 1))
    if sbi_ratio > 0:
        sources = [r for r in reals if r.landmarks is not None]
        if not sources:
            raise RealfaceError("SBI pseudo-fakes need real faces with landmarks: run `realface preprocess` first")
        n = int(round(sbi_ratio * len(reals)))
        items.extend(Item(sources[i % len(sources)], "sbi", 1) for i in range(n))
    return items


class DetectionFaces(Dataset):
    """Items as {"image": (3, S, S) float32 normalized, "label": () long}; training views are augmented."""

    def __init__(
        self,
        items: list[Item],
        pre: Preprocessing,
        *,
        seed: int = 0,
        augment: WildAugmentConfig | None = None,
        sbi: SBIConfig | None = None,
    ) -> None:
        if not items:
            raise RealfaceError("no faces to train or validate on")
        self.items = items
        self.pre = pre
        self.seed = seed
        self.augment = WildAugment(augment) if augment is not None else None
        self.sbi = sbi or SBIConfig()
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.items)

    def labels(self) -> np.ndarray:
        return np.array([it.label for it in self.items], np.int64)

    def view(self, index: int) -> np.ndarray:
        """The (S, S, 3) uint8 face the model sees for this item in this epoch."""
        item = self.items[index]
        rng = np.random.default_rng([self.seed, self.epoch, index])
        rgb = read_face(item.record)
        landmarks = item.record.landmarks
        if item.kind == "sbi":
            rgb = self_blend(rgb, landmarks, rng, self.sbi).fake
        if self.augment is not None:
            rgb, _ = self.augment(rgb, rng, None)
        size = self.pre.img_size
        if rgb.shape[:2] != (size, size):
            rgb = cv2.resize(rgb, (size, size), interpolation=cv2.INTER_AREA)
        return rgb

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"image": to_tensor(self.view(index), self.pre), "label": torch.tensor(self.items[index].label)}
