"""Real-face pretraining model: MAE reconstruction + FSFM's region weight + self-distillation (the 3C objective).

The masked autoencoder is the ViT's (`mae`: the encoder sees only the visible patches) or, for a CNN encoder, the
convolutional one (`conv_mae`: sparse-acting convolutions and a U-Net decoder, SparK / FCMAE); everything
else (masking strategies on the mask grid, the region weight, self-distillation) is the same for both.

    loss = loss_rec + region_weight * loss_region + distill_weight * loss_distill

The training loop calls `out = pretrainer(imgs, mask, region_mask)`, backpropagates `out.loss`, steps
the optimizer, then calls `pretrainer.after_step(step, total_steps)` to move the EMA teacher.
Mask semantics: `mask` (N, L) bool, True = masked (removed from the encoder input).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import numpy as np
import torch
import torch.nn as nn

from realface.errors import RealfaceError
from realface.models.conv_mae import OUT_STRIDE, ConvMaskedAutoencoder
from realface.models.distill import SelfDistillation, momentum_schedule
from realface.models.encoders import Encoder, build_encoder, encoder_info
from realface.models.mae import MAEOutput, MaskedAutoencoder
from realface.models.masking import MASKINGS, MaskBatch, num_masked, sample_masks


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild a pretrainer; saved as JSON next to its checkpoints."""

    encoder: str = "vit_tiny_patch16"  # a name in realface.models.encoders.ENCODERS
    img_size: int = 224  # input side in pixels, a multiple of the encoder's stride
    drop_path: float = 0.0  # stochastic depth rate of the encoder
    # MAE decoder: light next to the encoder, or it dominates the step (128x2 for vit_tiny; 256x4 to 512x8 for
    # vit_small/base). See BENCHMARKS.md. A CNN's U-Net decoder: width at its coarsest level (halved per level),
    # conv blocks per level.
    decoder_dim: int = 128  # MAE decoder width
    decoder_depth: int = 2  # MAE decoder blocks (ViT) or conv blocks per level (CNN)
    decoder_heads: int = 4  # MAE decoder attention heads (ViT only)
    norm_pix_loss: bool = True  # reconstruct per-cell normalized pixels
    mask: str = "crfr-p"  # masking strategy, a name in realface.models.masking.MASKINGS
    mask_ratio: float = 0.75  # fraction of cells masked (FCMAE uses 0.6 for CNNs)
    mask_cell: int = 16  # side of a mask cell in pixels: a ViT's patch; for a CNN a multiple of 8 dividing 32
    region_weight: float = 0.007  # extra weight on the fully masked facial region (FSFM: 0.007); 0 = off
    distill_weight: float = 0.1  # weight of the self-distillation loss (FSFM: 0.1); 0 = off (no teacher)
    proj_dim: int = 256  # projector / predictor output width
    proj_hidden: int = 1024  # projector / predictor hidden width
    ema_momentum: float = 0.996  # teacher EMA momentum at step 0
    ema_final: float = 1.0  # teacher EMA momentum at the last step (cosine schedule)

    def __post_init__(self) -> None:
        info = encoder_info(self.encoder)
        info.check_size(self.img_size)
        if info.family == "vit" and self.mask_cell != info.stride:
            raise RealfaceError(f"mask_cell {self.mask_cell} must be the ViT's patch size {info.stride}")
        if info.family == "cnn" and (self.mask_cell % OUT_STRIDE or info.stride % self.mask_cell):
            raise RealfaceError(f"mask_cell {self.mask_cell} must be a multiple of {OUT_STRIDE} that divides {info.stride}")
        if self.mask not in MASKINGS:
            raise RealfaceError(f"unknown masking {self.mask!r}; choose one of {', '.join(MASKINGS)}")
        num_patches = (self.img_size // self.mask_cell) ** 2
        if not 0 < num_masked(num_patches, self.mask_ratio) < num_patches:
            raise RealfaceError(f"mask_ratio {self.mask_ratio} must leave some patches masked and some visible")
        if not 0.0 <= self.drop_path < 1.0:
            raise RealfaceError(f"drop_path {self.drop_path} must be in [0, 1)")
        for name in ("decoder_dim", "decoder_depth", "decoder_heads", "proj_dim", "proj_hidden"):
            if getattr(self, name) <= 0:
                raise RealfaceError(f"{name} must be positive, got {getattr(self, name)}")
        if self.decoder_dim % self.decoder_heads or self.decoder_dim % 4:
            raise RealfaceError(
                f"decoder_dim {self.decoder_dim} must be divisible by decoder_heads {self.decoder_heads} and by 4"
            )
        if self.region_weight < 0 or self.distill_weight < 0:
            raise RealfaceError("region_weight and distill_weight must be >= 0 (0 turns a term off)")
        if not 0.0 <= self.ema_momentum <= self.ema_final <= 1.0:
            raise RealfaceError(
                f"need 0 <= ema_momentum ({self.ema_momentum}) <= ema_final ({self.ema_final}) <= 1"
            )

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> ModelConfig:
        """Build from a dict (e.g. JSON); unknown keys raise RealfaceError."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise RealfaceError(f"unknown model config keys: {', '.join(unknown)}")
        return cls(**data)  # type: ignore[arg-type]


@dataclass
class PretrainOutput:
    """Loss to backpropagate and its parts (detached) for logging."""

    loss: torch.Tensor  # () total loss
    parts: dict[str, torch.Tensor]  # "rec", "region", "distill" (0 when off), "total"; detached scalars
    mae: MAEOutput  # predictions and encoder latent, e.g. for picture grids


class Pretrainer(nn.Module):
    """MAE (always on) + optional extra weight on the masked region + optional self-distillation."""

    def __init__(self, mae: MaskedAutoencoder | ConvMaskedAutoencoder, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.mae = mae
        self.distill = (
            SelfDistillation(mae.encoder, proj_dim=config.proj_dim, hidden=config.proj_hidden)
            if config.distill_weight > 0
            else None
        )

    @property
    def encoder(self) -> Encoder:
        """The student encoder: what downstream detectors start from."""
        return self.mae.encoder

    @property
    def grid(self) -> tuple[int, int]:
        """(rows, cols) of the mask cells."""
        return self.mae.grid

    def sample_masks(
        self, n: int, generator: torch.Generator | None, fractions: torch.Tensor | np.ndarray | None = None
    ) -> MaskBatch:
        """Masks for n images with the configured strategy and ratio; fractions: (N, gh, gw, R) or None."""
        return sample_masks(self.config.mask, n, self.grid, self.config.mask_ratio, generator, fractions)

    def forward(self, imgs: torch.Tensor, mask: torch.Tensor, region_mask: torch.Tensor | None = None) -> PretrainOutput:
        """imgs: (N, 3, H, W) normalized; mask: (N, L) bool, True = masked; region_mask: (N, L) bool or None."""
        cfg = self.config
        out = self.mae(imgs, mask, region_mask, region_weight=cfg.region_weight)
        loss = out.loss
        loss_distill = loss.new_zeros(())
        if self.distill is not None:
            loss_distill = self.distill(imgs, out.pooled)
            loss = loss + cfg.distill_weight * loss_distill
        parts = {
            "total": loss.detach(),
            "rec": out.loss_rec.detach(),
            "region": out.loss_region.detach(),
            "distill": loss_distill.detach(),
        }
        return PretrainOutput(loss=loss, parts=parts, mae=out)

    @torch.no_grad()
    def after_step(self, step: int, total_steps: int) -> float:
        """Move the EMA teacher after optimizer step `step` (0-based); returns the momentum used (1.0 if off)."""
        if self.distill is None:
            return 1.0
        m = momentum_schedule(step, total_steps, self.config.ema_momentum, self.config.ema_final)
        self.distill.update_teacher(m)
        return m


def build_mae(cfg: ModelConfig) -> MaskedAutoencoder | ConvMaskedAutoencoder:
    """The masked autoencoder of `cfg`'s encoder family, randomly initialised."""
    encoder = build_encoder(cfg.encoder, img_size=cfg.img_size, drop_path=cfg.drop_path)
    if encoder_info(cfg.encoder).family == "cnn":
        return ConvMaskedAutoencoder(
            encoder, cfg.img_size, cell=cfg.mask_cell, decoder_dim=cfg.decoder_dim, decoder_depth=cfg.decoder_depth,
            norm_pix_loss=cfg.norm_pix_loss,
        )  # fmt: skip
    return MaskedAutoencoder(
        encoder,
        decoder_dim=cfg.decoder_dim,
        decoder_depth=cfg.decoder_depth,
        decoder_heads=cfg.decoder_heads,
        norm_pix_loss=cfg.norm_pix_loss,
    )


def build_pretrainer(cfg: ModelConfig) -> Pretrainer:
    """A randomly initialised pretrainer for `cfg` (no download; use vit.load_init for a local init)."""
    return Pretrainer(build_mae(cfg), cfg)
