"""`vit` (FSFM fine-tuning): the pretrained encoder, pooled, then LayerNorm + linear head; cross-entropy.

`freeze=True` makes it a linear probe: the encoder gets no gradient and stays in eval mode.
`mask_weight > 0` adds a patch head: LayerNorm + linear on every patch token, the logit that the patch was
forged, trained on where each training face was forged (`realface.data.forgery_mask`); it then gives the
heatmap (the forgery probability of each patch, upsampled) instead of gradient x input.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

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


class PatchHead(torch.nn.Module):
    """LayerNorm + linear layer from each patch token to one logit: (N, L, D) -> (N, L)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = torch.nn.LayerNorm(dim)
        self.fc = torch.nn.Linear(dim, 1)
        torch.nn.init.trunc_normal_(self.fc.weight, std=0.02)
        torch.nn.init.zeros_(self.fc.bias)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.fc(self.norm(tokens)).squeeze(-1)


class ViTDetector(Detector):
    """encoder -> pool (avg of patch tokens or CLS) -> head."""

    def __init__(self, config: DetectorConfig, encoder: ViTEncoder, head: ClassifierHead | None = None) -> None:
        super().__init__(config)
        self.encoder = freeze_(encoder) if config.freeze else encoder
        self.head = head if head is not None else ClassifierHead(encoder.embed_dim)
        self.patch_head = PatchHead(encoder.embed_dim) if config.mask_weight > 0 else None

    def frozen_modules(self) -> list[torch.nn.Module]:
        return [self.encoder] if self.config.freeze else []

    def forward(self, images: torch.Tensor) -> DetectorOutput:
        tokens = self.encoder.forward_features(images)  # (N, 1 + L, D)
        features = pool_tokens(tokens, self.config.pool)  # (N, D)
        extras = {"features": features}
        if self.patch_head is not None:
            extras["patch_logits"] = self.patch_head(tokens[:, 1:])  # (N, L)
        return output_from_logits(self.head(features), None, extras)

    def heatmap(self, images: torch.Tensor) -> torch.Tensor:
        """(N, H, W) in [0, 1]: the patch head's forgery probability, bilinearly upsampled; without a patch head,
        gradient x input (Detector.heatmap)."""
        if self.patch_head is None:
            return super().heatmap(images)
        rows, cols = self.config.grid
        with torch.no_grad():
            probs = self(images).extras["patch_logits"].float().sigmoid().reshape(-1, 1, rows, cols)
        return F.interpolate(probs, size=images.shape[-2:], mode="bilinear", align_corners=False).squeeze(1).clamp(0, 1)

    def loss(
        self, output: DetectorOutput, labels: torch.Tensor, progress: float = 0.0
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        loss = ce_loss(output.logits, labels, self.config.label_smoothing)
        return loss, {"ce": loss.detach()}


def build_vit(config: DetectorConfig, pretrainer: Pretrainer | None) -> ViTDetector:
    return ViTDetector(config, make_encoder(config, pretrainer))
