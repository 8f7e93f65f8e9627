"""What a model expects of an input face, and the numpy normalization that turns a crop into model input.

Torch-free: the inference path (ONNX Runtime) and the training data sets share it.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from realface.errors import InputError
from realface.faces.align import CropSettings

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocessing:
    """What the weights expect of an input face; saved with every checkpoint: how the face was cropped
    (`CropSettings`), then resized to `img_size` and normalized."""

    img_size: int = 224  # model input side in pixels
    mean: tuple[float, float, float] = IMAGENET_MEAN  # per-channel mean of RGB in [0, 1]
    std: tuple[float, float, float] = IMAGENET_STD  # per-channel std
    crop: CropSettings = CropSettings()  # how faces are found, aligned and cropped (preprocess, detect)

    @property
    def crop_size(self) -> int:
        return self.crop.size

    @property
    def crop_margin(self) -> float:
        return self.crop.margin

    def to_dict(self) -> dict:
        return {"img_size": self.img_size, "mean": list(self.mean), "std": list(self.std), "crop": self.crop.to_dict()}

    @classmethod
    def from_dict(cls, data: dict) -> "Preprocessing":
        """Inverse of `to_dict`; also reads checkpoints written before `crop` (flat crop_size / crop_margin)."""
        data = dict(data)
        for key in ("mean", "std"):
            if key in data:
                data[key] = tuple(data[key])
        crop = dict(data.pop("crop", {}))
        if "crop_size" in data:
            crop["size"] = data.pop("crop_size")
        if "crop_margin" in data:
            crop["margin"] = data.pop("crop_margin")
        return cls(**data, crop=CropSettings.from_dict(crop))


def normalize(rgb: np.ndarray, pre: Preprocessing) -> np.ndarray:
    """(H, W, 3) uint8 RGB at the model size -> (3, H, W) float32 normalized with `pre`'s mean and std."""
    scale = np.float32(1 / 255) / np.asarray(pre.std, np.float32)  # (3,)
    shift = np.asarray(pre.mean, np.float32) / np.asarray(pre.std, np.float32)  # (3,)
    x = rgb.astype(np.float32) * scale - shift  # (H, W, 3)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def read_rgb(path: str) -> np.ndarray:
    """A face crop as (H, W, 3) uint8 RGB."""
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise InputError(f"{path}: cannot read image")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
