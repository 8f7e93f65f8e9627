"""`classifier` (FSFM fine-tuning; "vit" is its old name): the pretrained encoder, pooled, then LayerNorm + linear
head; cross-entropy. Works on any encoder.

`freeze=True` makes it a linear probe: the encoder gets no gradient and stays in eval mode.
`mask_weight > 0` adds a cell head: LayerNorm + linear on every cell of the encoder's feature map (a ViT's patch
tokens, a CNN's last stage), the logit that the cell was forged, trained on where each training face was forged
(`realface.data.forgery_mask`) with weight `mask_weight` next to the real/fake loss; it then gives the heatmap
(the forgery probability of each cell, upsampled to the face) instead of gradient x input.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from realface.models.detectors.base import (
    ClassifierHead,
    Detector,
    DetectorConfig,
    DetectorOptions,
    DetectorOutput,
    ce_loss,
    freeze_,
    make_encoder,
    output_from_logits,
    patch_mask_loss,
)
from realface.errors import RealfaceError
from realface.models.encoders import Encoder
from realface.models.pretrainer import Pretrainer


@dataclass(frozen=True)
class ClassifierOptions(DetectorOptions):
    """Options of the `classifier` detector."""

    mask_weight: float = 0.0  # weight of the per-cell forgery-mask loss; > 0 adds the cell head, 0 = none

    @property
    def cell_targets(self) -> bool:
        return self.mask_weight > 0

    def check(self, config: DetectorConfig) -> None:
        if self.mask_weight < 0:
            raise RealfaceError(f"mask_weight {self.mask_weight} must be >= 0 (0 = no cell head)")


class PatchHead(torch.nn.Module):
    """LayerNorm + linear layer from each cell's features to one logit: (N, L, D) -> (N, L)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = torch.nn.LayerNorm(dim)
        self.fc = torch.nn.Linear(dim, 1)
        torch.nn.init.trunc_normal_(self.fc.weight, std=0.02)
        torch.nn.init.zeros_(self.fc.bias)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.fc(self.norm(tokens)).squeeze(-1)


class ClassifierDetector(Detector):
    """encoder -> pool (mean of the feature map, or a ViT's CLS) -> head; optionally a head on every cell."""

    def __init__(
        self,
        config: DetectorConfig,
        encoder: Encoder,
        head: ClassifierHead | None = None,
        patch_head: PatchHead | None = None,
    ) -> None:
        super().__init__(config)
        self.encoder = freeze_(encoder) if config.freeze else encoder
        self.head = head if head is not None else ClassifierHead(encoder.out_channels)
        if patch_head is None and config.options.cell_targets:
            patch_head = PatchHead(encoder.out_channels)
        self.patch_head = patch_head

    def frozen_modules(self) -> list[torch.nn.Module]:
        return [self.encoder] if self.config.freeze else []

    def forward(self, images: torch.Tensor) -> DetectorOutput:
        fmap, features = self.encoder.features(images, self.config.pool)  # (N, D, h, w), (N, D)
        extras = {"features": features}
        if self.patch_head is not None:
            extras["patch_logits"] = self.patch_head(fmap.flatten(2).transpose(1, 2))  # (N, h*w), row-major cells
        return output_from_logits(self.head(features), None, extras)

    @property
    def map_kind(self) -> str | None:
        return "probability" if self.patch_head is not None else None

    def map_from(self, output: DetectorOutput) -> torch.Tensor | None:
        """(N, rows, cols): each cell's forgery probability, from the cell head (None without one)."""
        if self.patch_head is None:
            return None
        return output.extras["patch_logits"].float().sigmoid().reshape(-1, *self.config.grid)

    def heatmap(self, images: torch.Tensor) -> torch.Tensor:
        """(N, H, W) in [0, 1]: the patch head's forgery probability, bilinearly upsampled; without a patch head,
        gradient x input (Detector.heatmap)."""
        if self.patch_head is None:
            return super().heatmap(images)
        with torch.no_grad():
            probs = self.map_from(self(images)).unsqueeze(1)
        return F.interpolate(probs, size=images.shape[-2:], mode="bilinear", align_corners=False).squeeze(1).clamp(0, 1)

    def loss(
        self, output: DetectorOutput, labels: torch.Tensor, progress: float = 0.0, targets: dict | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Cross-entropy, plus `mask_weight` x the per-cell forgery-mask loss when the cell head is on and
        `targets` holds "mask" (N, L) and "mask_known" (N,)."""
        ce = ce_loss(output.logits, labels, self.config.label_smoothing)
        parts = {"ce": ce.detach()}
        if "patch_logits" not in output.extras or not targets or "mask" not in targets:
            return ce, parts
        mask = patch_mask_loss(output.extras["patch_logits"], targets["mask"], targets["mask_known"])
        return ce + self.config.options.mask_weight * mask, {**parts, "mask": mask.detach()}


def build_classifier(config: DetectorConfig, pretrainer: Pretrainer | None) -> ClassifierDetector:
    return ClassifierDetector(config, make_encoder(config, pretrainer))
