"""Labelled faces for detectors: real (0) and fake (1) crops, plus self-blended pseudo-fakes made on the fly.

A training set is a list of items; each item is a face record and a `kind`:
- "face": a crop used as it is, with its manifest label;
- "sbi": a real crop turned into a pseudo-fake by `data.sbi.self_blend` (label 1).

A labelled fake whose real is in the records too (same `group`, frame and face: DFDC's and FaceForensics++'s
fakes are made from the real video of their group) keeps that real as its `partner`; with `mask_grid` set, the
dataset then also gives every item a per-patch target of where it was forged (`data.forgery_mask`).

`--pseudo-fakes sbi` adds one "sbi" item per real face times the SBI ratio, so a detector can be trained from
real faces alone (drop the labelled fakes) or from both. Every random draw of an item comes from
`numpy.random.default_rng([seed, epoch, index])`, as in pretraining.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from realface.data.augment import WildAugment, WildAugmentConfig
from realface.data.faceset import CropCache, Preprocessing, read_face, to_tensor
from realface.data.forgery_mask import pair_difference_map, patch_targets
from realface.data.sbi import SBIConfig, self_blend
from realface.errors import RealfaceError
from realface.labels import label_to_int

@dataclass(frozen=True)
class Item:
    record: object  # a FaceRecord (path, landmarks, label, extra)
    kind: str  # "face" or "sbi"
    label: int  # 0 real, 1 fake
    partner: object | None = None  # (labelled fakes) the real record it was made from, when known
    taught: bool = True  # whether distillation teachers score this item (`finetune(teacher_data=...)`)


def _pair_key(record) -> tuple[str, int, int] | None:
    """(group, frame, face) that a fake shares with the real it was made from; None without a group."""
    group = record.extra.get("group") or ""
    return (group, record.frame, record.face) if group else None


def build_items(
    records: list,
    *,
    labelled_fakes: bool = True,
    sbi_ratio: float = 0.0,
    sbi_from: Callable[[object], bool] | None = None,
) -> list[Item]:
    """Training items: every real record, the fake records when `labelled_fakes` (each with its partner real
    when the records hold it, both with landmarks), and round(sbi_ratio * reals) SBI pseudo-fakes cycling over
    the real records that have landmarks; with `sbi_from`, only the reals it accepts count and are blended."""
    items: list[Item] = []
    labels = [label_to_int(rec.label) for rec in records]
    reals = [rec for rec, y in zip(records, labels) if y == 0]
    partners = {}
    for rec in reals:
        key = _pair_key(rec)
        if key is not None and rec.landmarks is not None:
            partners.setdefault(key, rec)
    for rec, y in zip(records, labels):
        if y == 0:
            items.append(Item(rec, "face", 0))
        elif labelled_fakes:
            key = _pair_key(rec)
            partner = partners.get(key) if key is not None and rec.landmarks is not None else None
            items.append(Item(rec, "face", 1, partner))
    if sbi_ratio > 0:
        pool = reals if sbi_from is None else [r for r in reals if sbi_from(r)]
        sources = [r for r in pool if r.landmarks is not None]
        if not sources:
            raise RealfaceError("SBI pseudo-fakes need real faces with landmarks: run `realface preprocess` first")
        n = int(round(sbi_ratio * len(pool)))
        items.extend(Item(sources[i % len(sources)], "sbi", 1) for i in range(n))
    return items


class PairedSampler:
    """Training order with every labelled fake next to the real it was made from (same group, frame and face).

    A detector that sees a face swap beside its source learns what the swap changed rather than who is in the
    picture (identity, background, lighting are shared by the pair). Each epoch shuffles units: (fake, its real)
    for every fake with a partner (a real with k fakes appears in k units), and every other item alone; the units
    are dealt round-robin to the processes. Deterministic in (seed, epoch), like everything else in an epoch.
    """

    def __init__(self, items: list[Item], seed: int = 0, num_replicas: int = 1, rank: int = 0) -> None:
        index = {id(it.record): i for i, it in enumerate(items) if it.kind == "face" and it.label == 0}
        pairs = [(i, index[id(it.partner)]) for i, it in enumerate(items) if it.partner is not None and id(it.partner) in index]
        paired = {i for pair in pairs for i in pair}
        units: list[tuple[int, ...]] = [*pairs, *((i,) for i in range(len(items)) if i not in paired)]
        self.units = units
        self.seed, self.num_replicas, self.rank, self.epoch = seed, num_replicas, rank, 0
        self.length = sum(len(u) for u in units) // num_replicas

    @property
    def pairs(self) -> int:
        return sum(len(u) == 2 for u in self.units)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.length

    def __iter__(self):
        order = np.random.default_rng([self.seed, self.epoch]).permutation(len(self.units))
        mine = [i for k in order[self.rank :: self.num_replicas] for i in self.units[k]]
        mine = (mine * (1 + self.length // max(1, len(mine))))[: self.length]  # same length on every process
        return iter(mine)


class DetectionFaces(Dataset):
    """Items as {"image": (3, S, S) float32 normalized, "label": () long, "taught": () float32 (1 where teachers
    score the item, `Item.taught`)}; training views are augmented.

    With `mask_grid` (rows, cols) also "mask": (rows * cols,) float32, the fraction of each patch that was
    forged, and "mask_known": () float32, 1 where that is known (reals, SBI, fakes with a partner), else 0.
    """

    def __init__(
        self,
        items: list[Item],
        pre: Preprocessing,
        *,
        seed: int = 0,
        augment: WildAugmentConfig | None = None,
        sbi: SBIConfig | None = None,
        mask_grid: tuple[int, int] | None = None,
        degrade: Callable[[np.ndarray], np.ndarray] | None = None,
        cache: CropCache | None = None,
    ) -> None:
        if not items:
            raise RealfaceError("no faces to train or validate on")
        self.items = items
        self.read = cache.read if cache is not None else read_face  # decoded crops, once per run with a cache
        self.pre = pre
        self.seed = seed
        self.augment = WildAugment(augment) if augment is not None else None
        self.sbi = sbi or SBIConfig()
        self.mask_grid = mask_grid
        self.degrade = degrade  # a fixed change to every crop after augmentation (e.g. augment.reencode), or None
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.items)

    def labels(self) -> np.ndarray:
        return np.array([it.label for it in self.items], np.int64)

    def view(self, index: int) -> np.ndarray:
        """The (S, S, 3) uint8 face the model sees for this item in this epoch."""
        return self.view_and_map(index)[0]

    def view_and_map(self, index: int) -> tuple[np.ndarray, np.ndarray | None]:
        """The face the model sees for this item in this epoch, and the (S, S) float32 map of where it was
        forged (zeros for a real face), or None where that is not known. Without `mask_grid` only SBI faces get
        a map (it comes with the blend); a labelled fake's costs a second crop read and a warp."""
        item = self.items[index]
        rng = np.random.default_rng([self.seed, self.epoch, index])
        rgb = self.read(item.record)
        forged = None
        if item.kind == "sbi":
            result = self_blend(rgb, item.record.landmarks, rng, self.sbi)
            rgb, forged = result.fake, result.mask
        elif self.mask_grid is None:
            pass  # no map wanted: no zeros to flip, no partner to read
        elif item.label == 0:
            forged = np.zeros(rgb.shape[:2], np.float32)
        elif item.partner is not None:
            forged = pair_difference_map(rgb, item.record.landmarks, self.read(item.partner), item.partner.landmarks)
        if self.augment is not None:
            if forged is None:
                rgb, _ = self.augment(rgb, rng, None)
            else:
                rgb, forged = self.augment.with_map(rgb, rng, forged)
        if self.degrade is not None:
            rgb = self.degrade(rgb)
        size = self.pre.img_size
        if rgb.shape[:2] != (size, size):
            rgb = cv2.resize(rgb, (size, size), interpolation=cv2.INTER_AREA)
            if forged is not None:
                forged = cv2.resize(forged, (size, size), interpolation=cv2.INTER_AREA)
        return rgb, forged

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if self.mask_grid is None:
            item = self.items[index]
            return {"image": to_tensor(self.view(index), self.pre), "label": torch.tensor(item.label),
                    "taught": torch.tensor(float(item.taught))}  # fmt: skip
        rgb, forged = self.view_and_map(index)
        known = forged is not None
        target = patch_targets(forged, self.mask_grid) if known else np.zeros(self.mask_grid[0] * self.mask_grid[1], np.float32)
        return {
            "image": to_tensor(rgb, self.pre),
            "label": torch.tensor(self.items[index].label),
            "taught": torch.tensor(float(self.items[index].taught)),
            "mask": torch.from_numpy(target),
            "mask_known": torch.tensor(float(known)),
        }
