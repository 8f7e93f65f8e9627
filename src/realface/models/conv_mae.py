"""Masked image modeling for CNNs on real faces (SparK / ConvNeXt V2's FCMAE), the convolutional twin of `mae`.

Reads like SparK's figure: the mask lives on a grid of `cell`-pixel cells; the encoder runs dense convolutions
that act as sparse ones on the visible cells (`realface.models.sparse`); a light U-Net decoder densifies each
scale (a learned mask token where the cells were hidden, a 1x1 projection of the encoder's features elsewhere),
upsamples from the coarsest stage to stride `out_stride`, and predicts the pixels; the loss is the MSE on the
masked cells with per-cell normalized pixels (MAE's norm_pix), plus FSFM's extra weight on a fully masked
facial region. Mask semantics as in `mae`: `mask` (N, L) bool over the row-major cells, True = masked.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from realface.models.encoders.cnn import TimmCNN
from realface.models.mae import MAEOutput, cell_target, masked_losses, patchify, unpatchify
from realface.models.sparse import SparseMasking, visibility_at

OUT_STRIDE = 8  # the decoder stops at stride 8 and predicts each 8x8 block of pixels from one position


class DecoderLevel(nn.Module):
    """One U-Net step: upsample the coarser state x2, add the densified skip features, then conv blocks."""

    def __init__(self, skip_channels: int, width: int, in_width: int | None, depth: int) -> None:
        super().__init__()
        self.mask_token = nn.Parameter(torch.zeros(1, skip_channels, 1, 1))
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        self.skip = nn.Conv2d(skip_channels, width, 1)
        self.up = nn.Conv2d(in_width, width, 1) if in_width is not None and in_width != width else nn.Identity()
        layers: list[nn.Module] = []
        for _ in range(depth):
            layers += [nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.GELU()]
        self.blocks = nn.Sequential(*layers)

    def forward(self, skip: torch.Tensor, visible: torch.Tensor, state: torch.Tensor | None) -> torch.Tensor:
        """skip (N, C, h, w) encoder features (0 where hidden); visible (N, 1, h, w); state (N, W', h/2, w/2)."""
        dense = skip * visible + self.mask_token.to(skip.dtype) * (1 - visible)  # densify with the mask token
        x = self.skip(dense)
        if state is not None:
            x = x + self.up(F.interpolate(state, size=x.shape[-2:], mode="nearest"))
        return self.blocks(x)


class ConvMaskedAutoencoder(nn.Module):
    """A CNN encoder pretrained by masked image modeling; the decoder is thrown away after pretraining."""

    def __init__(
        self,
        encoder: TimmCNN,
        img_size: int,
        cell: int = 16,
        decoder_dim: int = 128,
        decoder_depth: int = 1,
        norm_pix_loss: bool = True,
    ) -> None:
        super().__init__()
        if img_size % cell or cell % OUT_STRIDE:
            raise ValueError(f"the mask cell {cell} must divide img_size {img_size} and be a multiple of {OUT_STRIDE}")
        self.encoder = encoder
        self.cell = cell
        self.grid = (img_size // cell, img_size // cell)
        self.norm_pix_loss = norm_pix_loss
        self.sparse = SparseMasking(encoder)
        # decoder levels, coarsest first, for every stage with stride >= OUT_STRIDE
        self.levels = [i for i, s in enumerate(encoder.stage_strides) if s >= OUT_STRIDE][::-1]
        widths = [max(32, decoder_dim >> k) for k in range(len(self.levels))]
        self.decoder = nn.ModuleList(
            DecoderLevel(encoder.stage_channels[i], w, widths[k - 1] if k else None, decoder_depth)
            for k, (i, w) in enumerate(zip(self.levels, widths))
        )
        self.decoder_pred = nn.Conv2d(widths[-1], 3 * OUT_STRIDE * OUT_STRIDE, 1)  # each position: its 8x8 pixels

    def target(self, imgs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(target, mean, std) per cell: see `mae.cell_target`."""
        return cell_target(imgs, self.cell, self.norm_pix_loss)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        return unpatchify(x, self.cell, self.grid)

    def visibility(self, mask: torch.Tensor) -> torch.Tensor:
        """mask (N, L) bool, True = masked -> (N, 1, gh, gw) float, 1 = visible."""
        return (~mask).to(torch.float32).reshape(-1, 1, *self.grid)

    def forward_encoder(self, imgs: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
        """imgs (N, 3, H, W); mask (N, L) -> every stage's map, computed from the visible cells only (0 elsewhere)."""
        visible = self.visibility(mask).to(imgs.dtype)
        with self.sparse.masked(visible):
            return self.encoder.forward_stages(imgs * self.sparse.at(*imgs.shape[-2:]))

    def forward_decoder(self, stages: list[torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
        """Every stage's map and the mask -> pred (N, L, cell*cell*3) for every cell."""
        visible = self.visibility(mask).to(stages[0].dtype)
        state = None
        for level, i in zip(self.decoder, self.levels):
            state = level(stages[i], visibility_at(visible, *stages[i].shape[-2:]), state)
        pixels = F.pixel_shuffle(self.decoder_pred(state), OUT_STRIDE)  # (N, 3, H, W)
        return patchify(pixels, self.cell)

    def forward(
        self, imgs: torch.Tensor, mask: torch.Tensor, region_mask: torch.Tensor | None = None, region_weight: float = 0.0
    ) -> MAEOutput:
        """imgs: (N, 3, H, W); mask: (N, L) bool, True = masked; region_mask: (N, L) bool cells of the fully
        masked facial region (CRFR-P), or None. loss = loss_rec + region_weight * loss_region."""
        stages = self.forward_encoder(imgs, mask)
        pred = self.forward_decoder(stages, mask)  # (N, L, cell*cell*3)
        loss_rec, loss_region = masked_losses(pred, self.target(imgs)[0], mask, region_mask)
        loss = loss_rec + region_weight * loss_region if region_weight else loss_rec
        latent = stages[-1]  # (N, C, h, w), 0 on hidden cells
        vis = visibility_at(self.visibility(mask).to(latent.dtype), *latent.shape[-2:])
        pooled = (latent * vis).sum(dim=(2, 3)) / vis.sum(dim=(2, 3)).clamp(min=1.0)  # mean over visible positions
        return MAEOutput(loss=loss, loss_rec=loss_rec, loss_region=loss_region, pred=pred, latent=latent, pooled=pooled)

    def reconstruct(self, imgs: torch.Tensor, mask: torch.Tensor, paste_visible: bool = True) -> torch.Tensor:
        """Reconstructed images in the input's space (N, 3, H, W), as `MaskedAutoencoder.reconstruct`."""
        pred = self.forward(imgs, mask).pred
        _, mean, std = self.target(imgs)
        pixels = pred.to(imgs.dtype) * std + mean
        if paste_visible:
            pixels = torch.where(mask.unsqueeze(-1), pixels, patchify(imgs, self.cell))
        return self.unpatchify(pixels)
