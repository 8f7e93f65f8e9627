"""`rffr` (RFFR): classify a face together with what the real-face MAE cannot explain in it.

1. The MAE's mask grid (a ViT's patches, a CNN MAE's mask cells) is tiled by k*k blocks (`block_ids`): k*k
   complementary masks. For each block the frozen MAE sees every other cell and reconstructs that block;
   each cell's reconstruction comes from the variant that masked its block, so every pixel is predicted from
   its real-face context only. Works with the ViT MAE and the convolutional one alike.
2. residual = reconstruction - input, in the normalized input space: (N, 3, H, W). With a norm_pix MAE
   the prediction is un-normalized with the patch's own mean and std (as `MaskedAutoencoder.reconstruct`
   does), so the residual shows structure the model cannot explain, not colour.
3. Two streams, each an encoder initialised from the pretrained one: one reads the face, one reads the
   residual; their pooled features are concatenated and a linear head classifies them. Two streams rather
   than one encoder on a 6-channel input: each stream keeps the pretrained 3-channel patch embedding
   (a 6-channel one would be new or a duplicated guess), and the face and its residual are not mixed
   before the first attention layer (RFFR does the same).

One face costs one batched MAE call of k*k samples. The ViT MAE needs all samples of a batch to mask the
same number of patches, so when k does not divide the grid (blocks of unequal size) every variant is padded to the
largest block by also masking the patches farthest from its block; their predictions are not used, and
the block's own neighbourhood stays visible. When k divides the grid there is no padding. Cost grows
with k*k: fewer, larger blocks are faster, smaller blocks leave more context per reconstruction.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from realface.errors import RealfaceError
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
)
from realface.models.conv_mae import ConvMaskedAutoencoder
from realface.models.encoders import Encoder
from realface.models.explain import normalize_maps
from realface.models.mae import MaskedAutoencoder
from realface.models.pretrainer import ModelConfig, Pretrainer, build_mae


@dataclass(frozen=True)
class RFFROptions(DetectorOptions):
    """Options of the `rffr` detector; the MAE's shape is copied from the pretraining run (`for_pretrainer`)."""

    blocks: int = 4  # k: the MAE's mask grid is tiled by k*k blocks, each reconstructed from the rest
    mae_decoder_dim: int = 256  # width of the frozen MAE's decoder
    mae_decoder_depth: int = 4  # blocks (ViT) or conv blocks per level (CNN) of the frozen MAE's decoder
    mae_decoder_heads: int = 8  # attention heads of the frozen MAE's decoder (ViT)
    mae_norm_pix: bool = True  # the MAE predicts per-cell normalized pixels
    mae_mask_cell: int = 16  # the MAE's mask cell in pixels (a ViT's patch); the blocks tile its grid

    def check(self, config: DetectorConfig) -> None:
        side = config.img_size // self.mae_mask_cell
        if not 2 <= self.blocks <= side:
            raise RealfaceError(f"rffr blocks {self.blocks} must be in [2, {side}] (blocks per side of the {side}x{side} grid)")
        for key in ("mae_decoder_dim", "mae_decoder_depth", "mae_decoder_heads", "mae_mask_cell"):
            if getattr(self, key) <= 0:
                raise RealfaceError(f"{key} must be positive, got {getattr(self, key)}")

    def for_pretrainer(self, model_cfg: ModelConfig) -> RFFROptions:
        return replace(
            self, mae_decoder_dim=model_cfg.decoder_dim, mae_decoder_depth=model_cfg.decoder_depth,
            mae_decoder_heads=model_cfg.decoder_heads, mae_norm_pix=model_cfg.norm_pix_loss, mae_mask_cell=model_cfg.mask_cell,
        )  # fmt: skip


def block_ids(grid: tuple[int, int], k: int) -> torch.Tensor:
    """(gh*gw,) long: the block of each patch (row-major), blocks numbered row-major in a k x k layout.

    Rows are cut into k bands at floor(i * gh / k), columns likewise, so bands differ by at most one patch.
    """
    gh, gw = grid
    if not 1 <= k <= min(gh, gw):
        raise RealfaceError(f"{k} blocks per side do not fit a {gh}x{gw} patch grid")
    rows = torch.bucketize(torch.arange(gh), torch.arange(1, k) * gh // k, right=True)  # (gh,) band of each row
    cols = torch.bucketize(torch.arange(gw), torch.arange(1, k) * gw // k, right=True)  # (gw,)
    return (rows[:, None] * k + cols[None, :]).reshape(-1)


def variant_masks(grid: tuple[int, int], k: int) -> torch.Tensor:
    """(k*k, gh*gw) bool, True = masked: variant b masks block b, padded to the largest block's size.

    Padding patches are those farthest (Euclidean distance to the nearest patch of the block, ties by
    index) from block b, so the block's nearby context stays visible.
    """
    ids = block_ids(grid, k)  # (L,)
    gh, gw = grid
    rr, cc = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")
    pos = torch.stack([rr.reshape(-1), cc.reshape(-1)], dim=1).float()  # (L, 2)
    masks = torch.stack([ids == b for b in range(k * k)])  # (B, L)
    size = int(masks.sum(dim=1).max())
    for b in range(k * k):
        extra = size - int(masks[b].sum())
        if extra:
            dist = torch.cdist(pos, pos[masks[b]]).min(dim=1).values  # (L,) distance to block b
            dist[masks[b]] = -1.0  # never pick the block itself
            order = torch.sort(-dist, stable=True).indices  # farthest first, ties by index
            masks[b, order[:extra]] = True
    return masks


def reconstruct_by_blocks(
    mae: MaskedAutoencoder | ConvMaskedAutoencoder, images: torch.Tensor, masks: torch.Tensor, ids: torch.Tensor
) -> torch.Tensor:
    """Every cell reconstructed by the variant that masked its block: (N, 3, H, W), input space.

    images: (N, 3, H, W); masks: (B, L) bool from `variant_masks`; ids: (L,) from `block_ids`, on the MAE's grid.
    All N*B variants go through the MAE in one batch.
    """
    n, b = images.shape[0], masks.shape[0]
    h, w = images.shape[-2:]
    reps = images.unsqueeze(1).expand(n, b, *images.shape[1:]).reshape(n * b, *images.shape[1:])  # (N*B, 3, H, W)
    rec = mae.reconstruct(reps, masks.repeat(n, 1), paste_visible=False).reshape(n, b, 3, h, w)
    gh, gw = mae.grid
    own = ids.reshape(gh, gw).repeat_interleave(h // gh, 0).repeat_interleave(w // gw, 1)  # (H, W) variant of each pixel
    return rec.gather(1, own.view(1, 1, 1, h, w).expand(n, 1, 3, h, w)).squeeze(1).to(images.dtype)


class RFFRDetector(Detector):
    """Frozen MAE -> residual; face stream + residual stream -> concatenated features -> head."""

    def __init__(
        self,
        config: DetectorConfig,
        mae: MaskedAutoencoder | ConvMaskedAutoencoder,
        face_encoder: Encoder,
        residual_encoder: Encoder,
    ) -> None:
        super().__init__(config)
        self.mae = freeze_(mae)
        self.face_encoder = freeze_(face_encoder) if config.freeze else face_encoder
        self.residual_encoder = freeze_(residual_encoder) if config.freeze else residual_encoder
        self.head = ClassifierHead(face_encoder.out_channels + residual_encoder.out_channels)
        grid = mae.grid
        k = config.options.blocks
        self.register_buffer("block_ids", block_ids(grid, k), persistent=False)  # (L,)
        self.register_buffer("variant_masks", variant_masks(grid, k), persistent=False)  # (B, L)

    def frozen_modules(self) -> list[torch.nn.Module]:
        streams = [self.face_encoder, self.residual_encoder] if self.config.freeze else []
        return [self.mae, *streams]

    @torch.no_grad()
    def residual(self, images: torch.Tensor) -> torch.Tensor:
        """images (N, 3, H, W) -> reconstruction - images (N, 3, H, W), no gradient."""
        return reconstruct_by_blocks(self.mae, images, self.variant_masks, self.block_ids) - images

    def forward(self, images: torch.Tensor) -> DetectorOutput:
        residual = self.residual(images)  # (N, 3, H, W)
        f_face = self.face_encoder.features(images, self.config.pool)[1]  # (N, D)
        f_res = self.residual_encoder.features(residual, self.config.pool)[1]  # (N, D)
        features = torch.cat([f_face, f_res], dim=1)  # (N, 2D)
        return output_from_logits(self.head(features), None, {"residual": residual, "features": features})

    def loss(
        self, output: DetectorOutput, labels: torch.Tensor, progress: float = 0.0, targets: dict | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        loss = ce_loss(output.logits, labels, self.config.label_smoothing)
        return loss, {"ce": loss.detach()}

    map_kind = "relative"

    def map_from(self, output: DetectorOutput) -> torch.Tensor:
        """(N, H, W): |residual| averaged over channels."""
        return output.extras["residual"].abs().mean(dim=1)

    def heatmap(self, images: torch.Tensor) -> torch.Tensor:
        """(N, H, W) in [0, 1]: |residual| averaged over channels, divided by its 99th percentile per face."""
        return normalize_maps(self.residual(images).abs().mean(dim=1))


def frozen_mae(config: DetectorConfig, pretrainer: Pretrainer | None) -> MaskedAutoencoder | ConvMaskedAutoencoder:
    """The MAE at the detector's input size: random, or the pretrainer's encoder and decoder weights."""
    opts = config.options
    mae = build_mae(ModelConfig(
        encoder=config.encoder, img_size=config.img_size, decoder_dim=opts.mae_decoder_dim,
        decoder_depth=opts.mae_decoder_depth, decoder_heads=opts.mae_decoder_heads,
        norm_pix_loss=opts.mae_norm_pix, mask_cell=opts.mae_mask_cell, distill_weight=0.0,
    ))  # fmt: skip
    if pretrainer is None:
        return mae
    if opts != opts.for_pretrainer(pretrainer.config):
        raise RealfaceError("the rffr MAE decoder settings differ from the pretrainer's; use DetectorConfig.for_pretrainer")
    mae.encoder.load_pretrained(pretrainer.encoder.state_dict())
    decoder = {k: v for k, v in pretrainer.mae.state_dict().items() if not k.startswith("encoder.")}
    result = mae.load_state_dict(decoder, strict=False)  # the decoder needs no resizing: its positions are a buffer
    if result.unexpected_keys or any(not k.startswith("encoder.") for k in result.missing_keys):
        raise RealfaceError(f"pretrained MAE decoder does not fit: {result}")
    return mae


def build_rffr(config: DetectorConfig, pretrainer: Pretrainer | None) -> RFFRDetector:
    face, residual = make_encoder(config, pretrainer), make_encoder(config, pretrainer)
    return RFFRDetector(config, frozen_mae(config, pretrainer), face, residual)
