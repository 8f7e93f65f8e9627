"""Masked image modeling for CNNs: sparse-acting convolutions, visible-only statistics, the U-Net MAE learning."""

from __future__ import annotations

import pytest
import torch

from realface.models.conv_mae import ConvMaskedAutoencoder
from realface.models.encoders import ENCODERS, build_encoder
from realface.models.pretrainer import ModelConfig, build_pretrainer
from realface.models.sparse import SparseMasking, visibility_at

CNNS = sorted(name for name, info in ENCODERS.items() if info.family == "cnn")


def _mask(n: int, grid: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(n, grid * grid, generator=g) < 0.6
    mask[:, 0] = False  # at least one visible cell
    return mask


@pytest.mark.parametrize("name", CNNS)
def test_masked_pixels_never_reach_visible_features(name: str) -> None:
    """Changing the pixels under the mask changes no stage's output anywhere (SparK's sparse convolution), in
    training mode, where BatchNorm uses batch statistics."""
    torch.manual_seed(0)
    mae = ConvMaskedAutoencoder(build_encoder(name, img_size=64), img_size=64, cell=16).train()
    x = torch.randn(3, 3, 64, 64)
    mask = _mask(3, 4, seed=1)
    hidden = 1 - visibility_at(mae.visibility(mask), 64, 64)
    y = x + hidden * 10 * torch.randn_like(x)
    with torch.no_grad():
        torch.manual_seed(2)
        a = mae.forward_encoder(x, mask)
        torch.manual_seed(2)
        b = mae.forward_encoder(y, mask)
    for stage_a, stage_b in zip(a, b):
        torch.testing.assert_close(stage_a, stage_b, rtol=0, atol=0)
    # and the masked cells of every stage at least as fine as the mask grid are exactly 0
    for stage in a:
        h, w = stage.shape[-2:]
        if h >= 4:
            assert (stage * (1 - visibility_at(mae.visibility(mask), h, w))).abs().max() == 0


def test_batchnorm_statistics_come_from_visible_positions_only() -> None:
    torch.manual_seed(0)
    bn = torch.nn.BatchNorm2d(4, momentum=1.0).train()
    sparse = SparseMasking(torch.nn.Sequential(bn))
    x = torch.randn(2, 4, 8, 8) * 3 + 1
    visible = torch.zeros(2, 1, 2, 2)
    visible[0, 0, 0, 1] = visible[1, 0, 1, 0] = 1
    with sparse.masked(visible):
        out = bn(x)
    m = visibility_at(visible, 8, 8).bool().expand_as(x)
    kept = x.permute(1, 0, 2, 3)[m.permute(1, 0, 2, 3)].reshape(4, -1)  # (C, visible positions)
    torch.testing.assert_close(bn.running_mean, kept.mean(dim=1))
    torch.testing.assert_close(bn.running_var, kept.var(dim=1, unbiased=True), rtol=1e-4, atol=1e-5)
    normalized = out.permute(1, 0, 2, 3)[m.permute(1, 0, 2, 3)].reshape(4, -1)
    torch.testing.assert_close(normalized.mean(dim=1), torch.zeros(4), atol=1e-5, rtol=0)
    assert out[~m].abs().max() == 0  # hidden positions stay 0
    out_plain = bn(x)  # no mask set: a plain BatchNorm again
    assert out_plain[~m].abs().max() > 0


def test_state_dict_keys_match_a_plain_encoder() -> None:
    """Pretrained CNN weights load into the detectors' plain encoder: the sparse BatchNorm keeps its keys."""
    pretrainer = build_pretrainer(ModelConfig(encoder="efficientnet_b0", img_size=64, mask="random", mask_ratio=0.6))
    plain = build_encoder("efficientnet_b0", img_size=64)
    plain.load_pretrained(pretrainer.encoder.state_dict())  # strict
    x = torch.randn(2, 3, 64, 64)
    pretrainer.eval(), plain.eval()
    with torch.no_grad():
        torch.testing.assert_close(plain.forward_map(x), pretrainer.encoder.forward_map(x))  # no mask: same model


def test_a_tiny_cnn_mae_overfits_eight_faces(utk_crops) -> None:
    """Real faces, fixed masks: the reconstruction loss on the masked cells falls far below its start."""
    from realface.data.faceset import Preprocessing, geometric_view, read_rgb, to_tensor

    torch.manual_seed(0)
    pre = Preprocessing(img_size=64)
    faces = sorted(utk_crops.glob("**/*.jpg"))[:8]
    imgs = torch.stack([to_tensor(geometric_view(read_rgb(str(p)), None, 64, None)[0], pre) for p in faces])
    model = build_pretrainer(ModelConfig(encoder="resnet18", img_size=64, mask="random", mask_ratio=0.5, distill_weight=0,
                                         decoder_dim=64, decoder_depth=1))  # fmt: skip
    mask = _mask(8, 4, seed=3)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    model.train()
    losses = []
    for _ in range(60):
        out = model(imgs, mask)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(float(out.parts["rec"]))
    assert losses[-1] < 0.35 * losses[0], losses[::10]
