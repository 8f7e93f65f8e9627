"""The contract every backbone meets, so that detectors, masks, heatmaps and pretraining never ask which family
they sit on (timm's `forward_features` + `feature_info`, SparK's `get_downsample_ratio`).

An encoder turns faces (N, 3, H, W) into a feature map (N, C, h, w) on a grid of `stride`-pixel cells, plus a
pooled vector (N, C). It also says how its parameters group into layers (for layer-wise lr decay), which of
them take no weight decay, and how to load its own weights from a pretraining run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from realface.errors import RealfaceError


@dataclass(frozen=True)
class EncoderInfo:
    """A registered encoder: its family, the numbers in its name, and how to build it."""

    family: str  # "vit" or "cnn": which masked-image-modeling objective pretrains it
    stride: int  # pixels per cell of the output feature map (ViT: the patch; CNN: the total downsampling)
    channels: int  # C of the output feature map
    build: Callable[..., "Encoder"]  # build(img_size=..., drop_path=...) -> Encoder, random init, no download

    def grid(self, img_size: int) -> tuple[int, int]:
        """(h, w) of the output feature map for a square input of side `img_size`."""
        side = img_size // self.stride
        return side, side

    @property
    def layout(self) -> torch.memory_format:
        """The memory format to run it in: channels-last for CNNs (oneDNN's preferred layout; on this project's
        2-core CPU, inference about 1.3x faster and fine-tuning ResNet-18 1.27x), else contiguous."""
        return torch.channels_last if self.family == "cnn" else torch.contiguous_format

    def check_size(self, img_size: int) -> None:
        if img_size <= 0 or img_size % self.stride:
            raise RealfaceError(
                f"img_size {img_size} must be a positive multiple of the encoder's stride {self.stride} "
                f"(e.g. {max(1, img_size // self.stride) * self.stride} or {(img_size // self.stride + 1) * self.stride})"
            )


def exempt_from_weight_decay(param_name: str, param: torch.Tensor) -> bool:
    """Biases, norms' scales, tokens and position embeddings take no weight decay (every model's rule)."""
    return param.ndim <= 1 or param_name.endswith(".bias") or "pos_embed" in param_name or "token" in param_name


class Encoder(nn.Module):
    """Base of every backbone. Subclasses set `stride` and `out_channels` and implement `forward_map`."""

    stride: int  # pixels per feature-map cell
    out_channels: int  # C

    def forward_map(self, images: torch.Tensor) -> torch.Tensor:
        """images (N, 3, H, W) normalized -> feature map (N, C, H / stride, W / stride)."""
        raise NotImplementedError

    def features(self, images: torch.Tensor, pool: str = "avg") -> tuple[torch.Tensor, torch.Tensor]:
        """(feature map (N, C, h, w), pooled (N, C)). pool "avg" is the mean over the map; other poolings
        (a ViT's "cls") are the family's own."""
        fmap = self.forward_map(images)
        if pool != "avg":
            raise RealfaceError(f"pool {pool!r} is not supported by {type(self).__name__}; use 'avg'")
        return fmap, fmap.mean(dim=(2, 3))

    @property
    def num_layers(self) -> int:
        """Depth for layer-wise lr decay: stem = 0, ..., heads on top = num_layers."""
        raise NotImplementedError

    def layer_of(self, param_name: str) -> int:
        """Layer in [0, num_layers] of one of this encoder's parameters (name relative to the encoder)."""
        raise NotImplementedError

    def skip_weight_decay(self, param_name: str, param: torch.Tensor) -> bool:
        """Whether a parameter takes no weight decay (default: `exempt_from_weight_decay`)."""
        return exempt_from_weight_decay(param_name, param)

    def load_pretrained(self, state: dict[str, torch.Tensor]) -> None:
        """Copy weights saved from an encoder of the same name (in place, strict)."""
        try:
            self.load_state_dict(state, strict=True)
        except RuntimeError as err:
            raise RealfaceError(f"pretrained encoder weights do not fit {type(self).__name__}: {str(err).splitlines()[0]}") from None
