"""Backbones by name behind one contract (`Encoder`): a feature map at a stated stride, a pooled vector, layer
groups for lr decay, weight-decay exemptions and weight loading.

    info = ENCODERS["resnet18"]                   # family, stride, channels, builder
    encoder = build_encoder("resnet18", img_size=128)
    fmap, pooled = encoder.features(images)       # (N, C, 4, 4), (N, C)

A new family is one file that builds its encoders and a line here that registers them.
"""

from __future__ import annotations

from realface.errors import RealfaceError
from realface.models.encoders.base import Encoder, EncoderInfo
from realface.models.encoders.cnn import CNN_ENCODERS
from realface.models.encoders.vit import VIT_ENCODERS, weights_to_be_loaded

ENCODERS: dict[str, EncoderInfo] = {**VIT_ENCODERS, **CNN_ENCODERS}


def encoder_info(name: str) -> EncoderInfo:
    if name not in ENCODERS:
        raise RealfaceError(f"unknown encoder {name!r}; choose one of {', '.join(ENCODERS)}")
    return ENCODERS[name]


def build_encoder(name: str, img_size: int = 224, drop_path: float = 0.0) -> Encoder:
    """A randomly initialised encoder (no download) for square inputs of side `img_size`."""
    info = encoder_info(name)
    info.check_size(img_size)
    return info.build(img_size=img_size, drop_path=drop_path)


__all__ = ["ENCODERS", "Encoder", "EncoderInfo", "build_encoder", "encoder_info", "weights_to_be_loaded"]
