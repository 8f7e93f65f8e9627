"""Face crops as training samples, with region maps that follow every geometric augmentation.

Samples come from the manifest that `realface preprocess` writes (crops + 68 landmarks in crop coordinates)
or from a plain folder of face crops (no landmarks: region-based masking then falls back to random).
All randomness of a sample is drawn from `numpy.random.default_rng([seed, epoch, index])`, so an epoch is
the same whatever the number of worker processes or machines, and `--resume` replays it exactly.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from realface.errors import InputError
from realface.preprocessing import IMAGENET_MEAN, IMAGENET_STD, Preprocessing, normalize, read_rgb  # noqa: F401 (re-exported)
from realface.faces.regions import region_label_map

def read_face(record) -> np.ndarray:
    """The crop of a FaceRecord as (H, W, 3) uint8 RGB: a plain file, or a JPEG inside a tar shard.

    A shard is read with os.pread at the record's offset: no shared file position, so DataLoader worker
    processes can read the same shard at once.
    """
    if record.offset < 0:
        return read_rgb(record.path)
    fd = os.open(record.path, os.O_RDONLY)
    try:
        data = os.pread(fd, record.size, record.offset)
    finally:
        os.close(fd)
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise InputError(f"{record.path}: face at byte {record.offset} cannot be decoded")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def to_tensor(rgb: np.ndarray, pre: Preprocessing) -> torch.Tensor:
    """(H, W, 3) uint8 at the model size -> (3, H, W) float32 normalized.

    Normalized in numpy: small torch ops in DataLoader workers cost far more (thread-pool overhead).
    """
    return torch.from_numpy(normalize(rgb, pre))


def random_resized_box(
    rng: np.random.Generator, height: int, width: int, scale: tuple[float, float], ratio=(3 / 4, 4 / 3)
) -> tuple[int, int, int, int]:
    """A crop box (x0, y0, w, h) covering a random fraction `scale` of the area (torchvision's rule)."""
    area = height * width
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1)), w, h
    side = min(height, width)
    return (width - side) // 2, (height - side) // 2, side, side


def geometric_view(
    rgb: np.ndarray,
    labels: np.ndarray | None,
    size: int,
    rng: np.random.Generator | None,
    scale: tuple[float, float] = (0.2, 1.0),
    flip: float = 0.5,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Random resized crop + horizontal flip applied identically to pixels and region labels.

    rgb: (H, W, 3) uint8; labels: (H, W) uint8 or None. Returns the (size, size) views. With rng None the
    whole image is resized (evaluation view).
    """
    h, w = rgb.shape[:2]
    x0, y0, cw, ch = random_resized_box(rng, h, w, scale) if rng is not None else (0, 0, w, h)
    img = cv2.resize(rgb[y0 : y0 + ch, x0 : x0 + cw], (size, size), interpolation=cv2.INTER_LINEAR)
    lab = None
    if labels is not None:
        lab = cv2.resize(labels[y0 : y0 + ch, x0 : x0 + cw], (size, size), interpolation=cv2.INTER_NEAREST)
    if rng is not None and rng.random() < flip:
        img = img[:, ::-1]
        lab = lab[:, ::-1] if lab is not None else None
    return np.ascontiguousarray(img), (np.ascontiguousarray(lab) if lab is not None else None)


# mask_fn(label_map at model size or None, rng) -> (mask (L,) bool, region_mask (L,) bool); True = masked.
MaskFn = Callable[[np.ndarray | None, np.random.Generator], tuple[np.ndarray, np.ndarray]]


class CropCache:
    """Decoded face crops of one side, shared by the DataLoader's worker processes: a uint8 memory-mapped file of
    N crops and a written-flag per crop, filled on first read. A crop's JPEG is then decoded once per run instead
    of once per epoch (or twice, for a labelled fake read again as its real's partner). A crop of another side,
    or a record it was not built for, is read as usual. The file is sparse until filled; `close` removes it.

    Workers open the map on first use (it is not pickled with the dataset). Two workers that fill the same crop
    write the same bytes, and a crop's flag is set only after its pixels.
    """

    def __init__(self, path: Path, records: list, side: int) -> None:
        self.path = Path(path)
        self.side = side
        self.slots: dict[tuple[str, int], int] = {}
        for record in records:
            self.slots.setdefault((str(record.path), record.offset), len(self.slots))
        self._pixels = len(self.slots) * side * side * 3
        with self.path.open("wb") as f:
            f.truncate(self._pixels + len(self.slots))
        self._crops: np.ndarray | None = None
        self._written: np.ndarray | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_crops": None, "_written": None}

    def read(self, record) -> np.ndarray:
        """`read_face(record)`, from the cache when it holds it."""
        slot = self.slots.get((str(record.path), record.offset))
        if slot is None:
            return read_face(record)
        if self._crops is None:
            mapped = np.memmap(self.path, np.uint8, "r+")
            self._crops = mapped[: self._pixels].reshape(-1, self.side, self.side, 3)
            self._written = mapped[self._pixels :]
        if self._written[slot]:
            return np.array(self._crops[slot])
        rgb = read_face(record)
        if rgb.shape == (self.side, self.side, 3):
            self._crops[slot] = rgb
            self._written[slot] = 1
        return rgb

    def close(self) -> None:
        self._crops = self._written = None
        self.path.unlink(missing_ok=True)


class PretrainFaces(Dataset):
    """Real face crops for masked image modeling.

    Each item: {"image": (3, S, S) float32 normalized, "mask": (L,) bool (True = masked),
    "region_mask": (L,) bool (patches of the fully masked facial region; all False for other strategies)}.
    """

    def __init__(
        self,
        records: list,
        pre: Preprocessing,
        mask_fn: MaskFn,
        seed: int = 0,
        augment: bool = True,
        scale: tuple[float, float] = (0.2, 1.0),
        cache: CropCache | None = None,
    ) -> None:
        self.records = records
        self.read = cache.read if cache is not None else read_face
        self.pre = pre
        self.mask_fn = mask_fn
        self.seed = seed
        self.augment = augment
        self.scale = scale
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rec = self.records[index]
        rng = np.random.default_rng([self.seed, self.epoch, index])
        rgb = self.read(rec)
        labels = None
        if rec.landmarks is not None:
            labels = region_label_map(rec.landmarks, rgb.shape[0], rgb.shape[1])
        img, lab = geometric_view(rgb, labels, self.pre.img_size, rng if self.augment else None, self.scale)
        mask, region_mask = self.mask_fn(lab, rng)
        return {
            "image": to_tensor(img, self.pre),
            "mask": torch.from_numpy(np.asarray(mask, dtype=bool)),
            "region_mask": torch.from_numpy(np.asarray(region_mask, dtype=bool)),
        }
