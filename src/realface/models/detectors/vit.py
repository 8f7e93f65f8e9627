"""`vit` (FSFM fine-tuning): the pretrained encoder, pooled, then LayerNorm + linear head; cross-entropy.

`freeze=True` makes it a linear probe: the encoder gets no gradient and stays in eval mode.
"""

from __future__ import annotations

import torch

from realface.models.detectors.base import (
    ClassifierHead,
    Detector,
    DetectorConfig,
    DetectorOutput,
    ce_loss,
    freeze_,
    make_encoder,
    output_from_logits,
    pool_tokens,
)
from realface.models.pretrainer import Pretrainer
from realface.models.vit import ViTEncoder


class ViTDetector(Detector):
    """encoder -> pool (avg of patch tokens or CLS) -> head."""

    def __init__(self, config: DetectorConfig, encoder: ViTEncoder, head: ClassifierHead | None = None) -> None:
        super().__init__(config)
        self.encoder = freeze_(encoder) if config.freeze else encoder
        self.head = head if head is not None else ClassifierHead(encoder.embed_dim)

    def frozen_modules(self) -> list[torch.nn.Module]:
        return [self.encoder] if self.config.freeze else []

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """images (N, 3, H, W) -> pooled features (N, D). A frozen encoder builds no graph unless the images need grad."""
        return pool_tokens(self.encoder.forward_features(images), self.config.pool)

    def forward(self, images: torch.Tensor) -> DetectorOutput:
        features = self.features(images)  # (N, D)
        return output_from_logits(self.head(features), None, {"features": features})

    def loss(
        self, output: DetectorOutput, labels: torch.Tensor, progress: float = 0.0
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        loss = ce_loss(output.logits, labels, self.config.label_smoothing)
        return loss, {"ce": loss.detach()}


def build_vit(config: DetectorConfig, pretrainer: Pretrainer | None) -> ViTDetector:
    return ViTDetector(config, make_encoder(config, pretrainer))
