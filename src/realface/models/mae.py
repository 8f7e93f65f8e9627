"""Masked autoencoder (MAE) around a realface ViT encoder, with FSFM's extra weight on a masked facial region.

Reads like MAE's figure: the encoder sees only the visible patches, a light decoder fills in mask
tokens and predicts the pixels of every patch, the loss is taken on the masked patches.
Mask semantics: `mask` (N, L) bool, True = masked (removed from the encoder input), False = visible.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
from timm.models.vision_transformer import Block

from realface.models.encoders.vit import ViTEncoder, sincos_pos_embed_2d
from realface.models.masking import mask_to_indices


@dataclass
class MAEOutput:
    """Result of one MAE forward pass (the ViT's or the CNN's, `realface.models.conv_mae`)."""

    loss: torch.Tensor  # () loss_rec + region_weight * loss_region
    loss_rec: torch.Tensor  # () mean per-patch squared error over masked patches
    loss_region: torch.Tensor  # () mean per-patch squared error over the fully masked region's patches (0 if none)
    pred: torch.Tensor  # (N, L, p*p*3) predicted pixels of every patch (per-patch normalized if norm_pix_loss)
    latent: torch.Tensor  # encoder output on the visible part: ViT (N, 1 + L_keep, D), CNN (N, C, h, w)
    pooled: torch.Tensor  # (N, D) mean of the encoder's features over the visible part (for self-distillation)


# --------------------------------------------------------------------------------------------------
# pixels <-> cells, targets and losses: shared by the ViT MAE and the convolutional one


def patchify(imgs: torch.Tensor, p: int) -> torch.Tensor:
    """imgs: (N, 3, H, W) -> (N, L, p*p*3), cells of p x p pixels row-major, pixels (p, p, 3) within a cell."""
    n, _, h, w = imgs.shape
    gh, gw = h // p, w // p
    x = imgs.reshape(n, 3, gh, p, gw, p)  # (N, 3, gh, p, gw, p)
    x = torch.einsum("nchpwq->nhwpqc", x)  # (N, gh, gw, p, p, 3)
    return x.reshape(n, gh * gw, p * p * 3)


def unpatchify(x: torch.Tensor, p: int, grid: tuple[int, int]) -> torch.Tensor:
    """x: (N, L, p*p*3) -> imgs (N, 3, gh*p, gw*p); inverse of `patchify`."""
    gh, gw = grid
    n = x.shape[0]
    x = x.reshape(n, gh, gw, p, p, 3)
    x = torch.einsum("nhwpqc->nchpwq", x)  # (N, 3, gh, p, gw, p)
    return x.reshape(n, 3, gh * p, gw * p)


def cell_target(imgs: torch.Tensor, p: int, norm_pix: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Reconstruction target and its per-cell stats: (target, mean, std), each (N, L, p*p*3)/(N, L, 1).

    With norm_pix the target is each cell normalized by its own mean and std; otherwise the cell itself
    (mean 0, std 1 returned).
    """
    patches = patchify(imgs, p)  # (N, L, p*p*3)
    if not norm_pix:
        ones = torch.ones_like(patches[..., :1])
        return patches, torch.zeros_like(ones), ones
    mean = patches.mean(dim=-1, keepdim=True)  # (N, L, 1)
    std = (patches.var(dim=-1, keepdim=True) + 1e-6) ** 0.5  # (N, L, 1)
    return (patches - mean) / std, mean, std


def masked_losses(
    pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, region_mask: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss_rec, loss_region): mean per-cell MSE over masked cells, and over masked region cells.

    pred, target: (N, L, p*p*3); mask, region_mask: (N, L) bool, True = masked / in region.
    loss_region: per-face mean over the region's masked cells, averaged over all N faces (a face whose
    region_mask selects nothing counts 0); 0 when region_mask is None.
    """
    per_patch = ((pred.float() - target.float()) ** 2).mean(dim=-1)  # (N, L)
    m = mask.to(per_patch.dtype)
    loss_rec = (per_patch * m).sum() / m.sum()
    if region_mask is None:
        return loss_rec, per_patch.new_zeros(())
    # Per face, the mean over its region's cells; then the mean over all N faces (0 for a face without
    # a region). Normalizing per face, not per batch, keeps the loss the same however a batch is split
    # across processes (DDP) or accumulation steps.
    r = (region_mask & mask).to(per_patch.dtype)
    per_face = (per_patch * r).sum(dim=1) / r.sum(dim=1).clamp(min=1.0)  # (N,)
    return loss_rec, per_face.mean()


class MaskedAutoencoder(nn.Module):
    """MAE with a wrapped (not copied) encoder and a light transformer decoder.

    The decoder has its own fixed 2D sin-cos position embedding (a buffer, not saved in the state dict).
    """

    def __init__(
        self,
        encoder: ViTEncoder,
        decoder_dim: int = 256,
        decoder_depth: int = 4,
        decoder_heads: int = 8,
        norm_pix_loss: bool = True,
        mlp_ratio: float = 4.0,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.norm_pix_loss = norm_pix_loss
        p = encoder.patch_size
        num_patches = encoder.grid[0] * encoder.grid[1]

        self.decoder_embed = nn.Linear(encoder.embed_dim, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        pos = torch.cat([torch.zeros(1, decoder_dim), sincos_pos_embed_2d(decoder_dim, encoder.grid)])  # (1+L, Dd)
        self.register_buffer("decoder_pos_embed", pos.unsqueeze(0), persistent=False)  # (1, 1+L, Dd)
        self.decoder_blocks = nn.Sequential(
            *[Block(decoder_dim, decoder_heads, mlp_ratio, qkv_bias=True, norm_layer=nn.LayerNorm) for _ in range(decoder_depth)]
        )
        self.decoder_norm = nn.LayerNorm(decoder_dim)
        self.decoder_pred = nn.Linear(decoder_dim, p * p * 3)  # decoder to patch pixels
        self.num_patches = num_patches
        self._init_decoder()

    def _init_decoder(self) -> None:
        nn.init.normal_(self.mask_token, std=0.02)
        for name, module in self.named_modules():
            if name.startswith("encoder"):
                continue
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    # ----------------------------------------------------------------------------------------------
    # pixels <-> patches

    @property
    def cell(self) -> int:
        """Side in pixels of a masking cell: the patch."""
        return self.encoder.patch_size

    @property
    def grid(self) -> tuple[int, int]:
        return self.encoder.grid

    def patchify(self, imgs: torch.Tensor) -> torch.Tensor:
        """imgs: (N, 3, H, W) -> (N, L, p*p*3), patches row-major, pixels (p, p, 3) within a patch."""
        return patchify(imgs, self.cell)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, L, p*p*3) -> imgs (N, 3, H, W); inverse of `patchify`."""
        return unpatchify(x, self.cell, self.grid)

    def target(self, imgs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(target, mean, std) per patch: see `cell_target`."""
        return cell_target(imgs, self.cell, self.norm_pix_loss)

    # ----------------------------------------------------------------------------------------------
    # the figure: encoder on visible patches -> decoder on all positions -> loss on masked patches

    def forward_encoder(self, imgs: torch.Tensor, keep_idx: torch.Tensor) -> torch.Tensor:
        """imgs: (N, 3, H, W); keep_idx: (N, L_keep) -> latent (N, 1 + L_keep, D)."""
        return self.encoder.forward_visible(imgs, keep_idx)

    def forward_decoder(self, latent: torch.Tensor, restore_idx: torch.Tensor) -> torch.Tensor:
        """latent: (N, 1 + L_keep, D); restore_idx: (N, L) -> pred (N, L, p*p*3) for every patch."""
        x = self.decoder_embed(latent)  # (N, 1 + L_keep, Dd)
        n, _, dd = x.shape
        n_masked = restore_idx.shape[1] - (x.shape[1] - 1)
        mask_tokens = self.mask_token.expand(n, n_masked, -1)  # (N, L_mask, Dd)
        patches = torch.cat([x[:, 1:], mask_tokens], dim=1)  # (N, L, Dd): visible, then masked
        patches = torch.gather(patches, 1, restore_idx.unsqueeze(-1).expand(-1, -1, dd))  # patch order
        x = torch.cat([x[:, :1], patches], dim=1) + self.decoder_pos_embed  # (N, 1 + L, Dd)
        x = self.decoder_norm(self.decoder_blocks(x))
        return self.decoder_pred(x[:, 1:])  # (N, L, p*p*3), CLS dropped

    def forward_loss(
        self, imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor, region_mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss_rec, loss_region) of predictions (N, L, p*p*3) against the image's patches (`masked_losses`)."""
        return masked_losses(pred, self.target(imgs)[0], mask, region_mask)

    def forward(
        self,
        imgs: torch.Tensor,
        mask: torch.Tensor,
        region_mask: torch.Tensor | None = None,
        region_weight: float = 0.0,
    ) -> MAEOutput:
        """imgs: (N, 3, H, W); mask: (N, L) bool, True = masked; region_mask: (N, L) bool patches of the
        fully masked facial region (from CRFR-P), or None. loss = loss_rec + region_weight * loss_region."""
        idx = mask_to_indices(mask)
        latent = self.forward_encoder(imgs, idx.keep_idx)  # (N, 1 + L_keep, D)
        pred = self.forward_decoder(latent, idx.restore_idx)  # (N, L, p*p*3)
        loss_rec, loss_region = self.forward_loss(imgs, pred, mask, region_mask)
        loss = loss_rec + region_weight * loss_region if region_weight else loss_rec
        return MAEOutput(
            loss=loss, loss_rec=loss_rec, loss_region=loss_region, pred=pred, latent=latent, pooled=latent[:, 1:].mean(dim=1)
        )

    def reconstruct(self, imgs: torch.Tensor, mask: torch.Tensor, paste_visible: bool = True) -> torch.Tensor:
        """Reconstructed images in the input's space: (N, 3, H, W).

        With norm_pix_loss the predictions of masked patches are un-normalized with the target patch's
        own mean and std (as MAE's visualisation does: it shows structure, not the model's colour guess).
        paste_visible: visible patches are the input's own pixels; otherwise every patch is predicted.
        Gradients flow unless the caller wraps this in `torch.no_grad()`.
        """
        pred = self.forward(imgs, mask).pred  # (N, L, p*p*3)
        _, mean, std = self.target(imgs)
        pixels = pred.to(imgs.dtype) * std + mean  # (N, L, p*p*3)
        if paste_visible:
            pixels = torch.where(mask.unsqueeze(-1), pixels, self.patchify(imgs))
        return self.unpatchify(pixels)
