"""MAE: patch order, loss on masked patches only, the region weight, reconstruction, overfitting real faces."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from realface.models.mae import MaskedAutoencoder
from realface.models.masking import sample_masks
from realface.models.encoders import build_encoder
from realface.models.encoders.vit import EncoderSpec, encoder_from_spec

SMALL = EncoderSpec(embed_dim=64, depth=2, heads=2, patch=16)


def _mae(img_size: int = 64, norm_pix_loss: bool = True, seed: int = 0) -> MaskedAutoencoder:
    torch.manual_seed(seed)
    encoder = encoder_from_spec(SMALL, img_size=img_size)
    return MaskedAutoencoder(encoder, decoder_dim=32, decoder_depth=1, decoder_heads=2, norm_pix_loss=norm_pix_loss)


def _masks(n: int, grid: tuple[int, int], seed: int = 0) -> torch.Tensor:
    return sample_masks("random", n, grid, 0.75, torch.Generator().manual_seed(seed)).mask


def test_wraps_the_encoder_without_copying() -> None:
    encoder = encoder_from_spec(SMALL, img_size=64)
    mae = MaskedAutoencoder(encoder, decoder_dim=32, decoder_depth=1, decoder_heads=2)
    assert mae.encoder is encoder


def test_patchify_matches_the_encoder_token_order() -> None:
    mae = _mae(img_size=64)
    imgs = torch.randn(2, 3, 64, 64)
    patches = mae.patchify(imgs)  # (N, L, p*p*3) with (p, p, 3) inside a patch
    assert patches.shape == (2, 16, 16 * 16 * 3)
    torch.testing.assert_close(mae.unpatchify(patches), imgs)
    conv = mae.encoder.patch_embed.proj
    weight = conv.weight.permute(0, 2, 3, 1).reshape(conv.out_channels, -1)  # (D, p*p*3) in patchify's layout
    torch.testing.assert_close(mae.encoder.patch_embed(imgs), patches @ weight.T + conv.bias, rtol=1e-4, atol=1e-4)


def test_forward_shapes_and_finite() -> None:
    mae = _mae()
    mask = _masks(3, (4, 4))
    out = mae(torch.randn(3, 3, 64, 64), mask)
    assert out.pred.shape == (3, 16, 768)
    assert out.latent.shape == (3, 1 + 4, 64)
    assert torch.isfinite(out.loss) and float(out.loss_region) == 0.0


@pytest.mark.parametrize("norm_pix_loss", [True, False])
def test_loss_is_mse_on_masked_patches_only(norm_pix_loss: bool) -> None:
    mae = _mae(norm_pix_loss=norm_pix_loss)
    imgs = torch.randn(2, 3, 64, 64)
    mask = _masks(2, (4, 4))
    pred = torch.randn(2, 16, 768)
    target = mae.patchify(imgs)
    if norm_pix_loss:
        target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6).sqrt()
    expected = ((pred - target) ** 2).mean(-1)[mask].mean()
    loss_rec, loss_region = mae.forward_loss(imgs, pred, mask, None)
    torch.testing.assert_close(loss_rec, expected)
    assert float(loss_region) == 0.0
    changed = pred.clone()
    changed[~mask] += 5.0  # visible patches do not count
    torch.testing.assert_close(mae.forward_loss(imgs, changed, mask, None)[0], loss_rec)
    changed[mask] += 5.0
    assert mae.forward_loss(imgs, changed, mask, None)[0] > loss_rec + 1.0


def test_region_weight_adds_the_mean_loss_of_the_region_patches() -> None:
    mae = _mae()
    imgs = torch.randn(2, 3, 64, 64)
    mask = _masks(2, (4, 4))
    region_mask = torch.zeros_like(mask)
    region_mask[0, mask[0].nonzero()[:3, 0]] = True  # 3 masked patches of sample 0
    region_mask[1, (~mask[1]).nonzero()[0, 0]] = True  # a visible patch never counts
    base = mae(imgs, mask, region_mask, region_weight=0.0)
    weighted = mae(imgs, mask, region_mask, region_weight=2.5)
    per_patch = ((base.pred - mae.target(imgs)[0]) ** 2).mean(-1)  # (N, L)
    # per face, then over faces: sample 0 has 3 region patches, sample 1 none (counts 0)
    torch.testing.assert_close(base.loss_region, per_patch[0][region_mask[0] & mask[0]].mean() / 2)
    torch.testing.assert_close(base.loss, base.loss_rec)
    torch.testing.assert_close(weighted.loss, base.loss_rec + 2.5 * base.loss_region)
    assert weighted.loss > base.loss
    # the region term pulls gradients toward the region's patches only
    grads = []
    for w in (0.0, 2.5):
        pred = base.pred.detach().clone().requires_grad_(True)
        rec, reg = mae.forward_loss(imgs, pred, mask, region_mask)
        (rec + w * reg).backward()
        grads.append(pred.grad.abs().sum(-1))  # (N, L)
    extra = grads[1] - grads[0]
    assert (extra[region_mask & mask] > 0).all() and torch.allclose(extra[~(region_mask & mask)], torch.zeros(()))


def test_reconstruct_keeps_visible_pixels_and_unnormalizes_with_patch_stats() -> None:
    mae = _mae(norm_pix_loss=True)
    imgs = torch.randn(2, 3, 64, 64)
    mask = _masks(2, (4, 4))
    with torch.no_grad():
        rec = mae.reconstruct(imgs, mask)
        pred = mae(imgs, mask).pred
    assert rec.shape == imgs.shape
    patches, rec_patches = mae.patchify(imgs), mae.patchify(rec)
    torch.testing.assert_close(rec_patches[~mask], patches[~mask])
    mean, std = patches.mean(-1, keepdim=True), (patches.var(-1, keepdim=True) + 1e-6).sqrt()
    torch.testing.assert_close(rec_patches[mask], (pred * std + mean)[mask])


def test_tiny_model_overfits_eight_real_faces(shared_data: Path) -> None:
    files = sorted((shared_data / "utkface" / "images").glob("*.jpg"))[:8]
    faces = [np.asarray(Image.open(f).convert("RGB").resize((64, 64), Image.BICUBIC), np.float32) / 255 for f in files]
    imgs = (torch.from_numpy(np.stack(faces)).permute(0, 3, 1, 2) - 0.5) / 0.25  # (8, 3, 64, 64)
    torch.manual_seed(0)
    encoder = encoder_from_spec(EncoderSpec(embed_dim=128, depth=4, heads=4, patch=16), img_size=64)
    mae = MaskedAutoencoder(encoder, decoder_dim=128, decoder_depth=2, decoder_heads=4, norm_pix_loss=True)
    mask = _masks(8, encoder.grid)
    opt = torch.optim.AdamW(mae.parameters(), lr=2e-3, weight_decay=0.0)
    losses = []
    for _ in range(150):
        loss = mae(imgs, mask).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.mean(losses[-5:]) < losses[0] / 5, (losses[0], losses[-5:])


def test_registered_encoder_trains_through_mae() -> None:
    torch.manual_seed(0)
    mae = MaskedAutoencoder(build_encoder("vit_tiny_patch16", img_size=32), decoder_dim=32, decoder_depth=1, decoder_heads=2)
    mask = _masks(2, (2, 2))
    mae(torch.randn(2, 3, 32, 32), mask).loss.backward()
    assert mae.encoder.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    assert mae.encoder.pos_embed.grad is not None
