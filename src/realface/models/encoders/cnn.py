"""Convolutional encoders by name: timm's CNNs (random init, no download) behind the `Encoder` contract.

`timm.create_model(name, features_only=True)` gives the feature map of every stage; the encoder's map is
the last one (stride 32 for all registered nets) and `forward_stages` gives them all, which is what the
convolutional masked autoencoder's U-Net decoder reads (`realface.models.conv_mae`).
"""

from __future__ import annotations

from functools import partial

import timm
import torch

from realface.models.encoders.base import Encoder, EncoderInfo


class TimmCNN(Encoder):
    """A timm CNN without its classifier: stages -> last feature map (N, C, H/32, W/32)."""

    def __init__(self, timm_name: str, img_size: int = 224, drop_path: float = 0.0) -> None:
        super().__init__()
        self.timm_name = timm_name
        self.body = timm.create_model(timm_name, pretrained=False, features_only=True, drop_path_rate=drop_path)
        info = self.body.feature_info
        self.stage_strides: list[int] = list(info.reduction())
        self.stage_channels: list[int] = list(info.channels())
        self.stride = self.stage_strides[-1]
        self.out_channels = self.stage_channels[-1]
        modules = [name for name, _ in self.body.named_modules()]
        # feature_info names stage modules with dots ("stages.0"); FeatureListNet flattens them ("stages_0").
        self._stages = [name if name in modules else name.replace(".", "_") for name in info.module_name()]
        self._order = {name: i for i, name in enumerate(modules)}

    def forward_stages(self, images: torch.Tensor) -> list[torch.Tensor]:
        """images (N, 3, H, W) -> the map of every stage, finest first: [(N, C_i, H / s_i, W / s_i)]."""
        return self.body(images)

    def forward_map(self, images: torch.Tensor) -> torch.Tensor:
        return self.forward_stages(images)[-1]

    @property
    def num_layers(self) -> int:
        """Stem = 0, stage i = i + 1, heads above the last stage = number of stages + 1."""
        return len(self._stages) + 1

    def layer_of(self, param_name: str) -> int:
        """The stage that holds the parameter; a parameter between stages counts with the stage before it."""
        name = param_name.removeprefix("body.")
        for i, stage in enumerate(self._stages):
            if name.startswith(stage + "."):
                return i + 1
        owner = self._order.get(name.rsplit(".", 1)[0], -1)
        return sum(self._order[s] < owner for s in self._stages)


# name -> timm model; every one has stride 32 and is built from scratch.
TIMM_CNNS: dict[str, tuple[str, int]] = {  # our name: (timm name, channels of the last stage)
    "resnet18": ("resnet18", 512),
    "resnet26d": ("resnet26d", 2048),
    "convnextv2_atto": ("convnextv2_atto", 320),
    "convnextv2_femto": ("convnextv2_femto", 384),
    "convnextv2_pico": ("convnextv2_pico", 512),
    "efficientnet_b0": ("efficientnet_b0", 320),
    "mobilenetv3_large_100": ("mobilenetv3_large_100", 960),
}


def _build(timm_name: str, img_size: int = 224, drop_path: float = 0.0) -> TimmCNN:
    return TimmCNN(timm_name, img_size=img_size, drop_path=drop_path)


CNN_ENCODERS: dict[str, EncoderInfo] = {
    name: EncoderInfo(family="cnn", stride=32, channels=channels, build=partial(_build, timm_name))
    for name, (timm_name, channels) in TIMM_CNNS.items()
}
