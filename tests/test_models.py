"""Encoders (registry, visible-token equivalence, load_init), self-distillation's EMA teacher, the pretrainer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from timm.layers import resample_abs_pos_embed

from realface.errors import RealfaceError
from realface.models.distill import SelfDistillation, momentum_schedule
from realface.models.masking import sample_masks
from realface.models.pretrainer import ModelConfig, Pretrainer, build_pretrainer
from realface.models.encoders import ENCODERS, build_encoder, weights_to_be_loaded
from realface.models.encoders.vit import SPECS, load_init, sincos_pos_embed_2d


@pytest.mark.parametrize("name", sorted(ENCODERS))
def test_every_registered_encoder_gives_its_map_and_trains(name: str) -> None:
    """The Encoder contract for every registered backbone: map at the stated stride and width, pooled vector,
    gradients to every parameter, layer numbers within [0, num_layers]."""
    torch.manual_seed(0)
    info = ENCODERS[name]
    size = 2 * info.stride
    encoder = build_encoder(name, img_size=size).train()
    x = torch.randn(2, 3, size, size)
    fmap, pooled = encoder.features(x)
    assert fmap.shape == (2, info.channels, 2, 2) and pooled.shape == (2, info.channels)
    assert encoder.stride == info.stride and encoder.out_channels == info.channels
    (fmap.square().mean() + pooled.mean()).backward()
    for pname, param in encoder.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), pname
        assert 0 <= encoder.layer_of(pname) <= encoder.num_layers
    layers = {encoder.layer_of(p) for p, _ in encoder.named_parameters()}
    assert len(layers) >= 4  # stem, stages/blocks: lr decay has depth to work with


@pytest.mark.parametrize("name", sorted(SPECS))
def test_every_vit_runs_on_all_and_on_visible_tokens(name: str) -> None:
    torch.manual_seed(0)
    encoder = build_encoder(name, img_size=32).eval()
    spec = SPECS[name]
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        full = encoder.forward_features(x)
        visible = encoder.forward_visible(x, torch.tensor([[0, 3], [1, 2]]))
    assert full.shape == (2, 1 + 4, spec.embed_dim) and visible.shape == (2, 1 + 2, spec.embed_dim)
    assert torch.isfinite(full).all() and torch.isfinite(visible).all()
    assert len(encoder.blocks) == spec.depth and encoder.blocks[0].attn.num_heads == spec.heads
    assert all(block.attn.fused_attn for block in encoder.blocks)  # F.scaled_dot_product_attention


def test_forward_visible_with_all_tokens_equals_forward_features() -> None:
    torch.manual_seed(0)
    encoder = build_encoder("vit_tiny_patch16", img_size=64).eval()
    x = torch.randn(3, 3, 64, 64)
    keep = torch.arange(16).expand(3, -1)
    torch.testing.assert_close(encoder.forward_visible(x, keep), encoder.forward_features(x))


def test_forward_visible_equals_timm_blocks_on_the_gathered_tokens() -> None:
    torch.manual_seed(0)
    encoder = build_encoder("vit_tiny_patch16", img_size=64).eval()
    x = torch.randn(2, 3, 64, 64)
    keep = sample_masks("random", 2, (4, 4), 0.75, torch.Generator().manual_seed(0)).mask.logical_not()
    keep_idx = torch.stack([row.nonzero()[:, 0] for row in keep])  # (2, 4)
    # reference: timm's own pieces, token by token
    tokens = encoder._pos_embed(encoder.patch_embed(x))  # (N, 1 + L, D), CLS first
    gathered = torch.cat([tokens[:, :1], torch.stack([tokens[i, 1 + keep_idx[i]] for i in range(2)])], dim=1)
    reference = encoder.norm(encoder.blocks(gathered))
    torch.testing.assert_close(encoder.forward_visible(x, keep_idx), reference)


def test_encoders_built_for_loading_skip_the_random_init_only_inside_the_context() -> None:
    def fc1_std(encoder) -> float:
        return float(encoder.blocks[0].mlp.fc1.weight.detach().std())

    torch.manual_seed(0)
    trained = build_encoder("vit_tiny_patch16", img_size=32)
    assert 0.015 < fc1_std(trained) < 0.025  # timm's truncated normal, std 0.02
    with weights_to_be_loaded():
        loaded = build_encoder("vit_tiny_patch16", img_size=32)
    assert not 0.015 < fc1_std(loaded) < 0.025  # PyTorch's default init: timm's was skipped
    loaded.load_state_dict(trained.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval().forward_features(x), trained.eval().forward_features(x))
    assert 0.015 < fc1_std(build_encoder("vit_tiny_patch16", img_size=32)) < 0.025  # outside: initialised again


def test_build_encoder_rejects_unknown_names_and_sizes() -> None:
    with pytest.raises(RealfaceError, match="unknown encoder"):
        build_encoder("vit_huge_patch14")
    with pytest.raises(RealfaceError, match="multiple of the encoder"):
        build_encoder("vit_tiny_patch16", img_size=100)


def test_sincos_pos_embed_distinguishes_positions() -> None:
    table = sincos_pos_embed_2d(64, (5, 9))
    assert table.shape == (45, 64)
    distances = torch.cdist(table, table)
    assert (distances + torch.eye(45) * 1e3).min() > 0.1  # all rows distinct
    assert distances[0, 1] < distances[0, 8]  # a neighbour is closer than a far column


def test_load_init_round_trip_with_module_prefix(tmp_path: Path) -> None:
    torch.manual_seed(0)
    source = build_encoder("vit_tiny_patch16", img_size=64)
    path = tmp_path / "init.safetensors"
    save_file({f"module.{k}": v.contiguous() for k, v in source.state_dict().items()}, str(path))
    torch.manual_seed(1)
    target = build_encoder("vit_tiny_patch16", img_size=64)
    report = load_init(target, path)
    assert report.missing == () and report.unexpected == () and not report.resized_pos_embed
    for key, value in source.state_dict().items():
        torch.testing.assert_close(target.state_dict()[key], value)


def test_load_init_pth_mae_checkpoint_interpolates_pos_embed(tmp_path: Path) -> None:
    torch.manual_seed(0)
    source = build_encoder("vit_tiny_patch16", img_size=64)  # 4x4 grid
    state = {f"encoder.{k}": v for k, v in source.state_dict().items()}
    state["decoder_pred.weight"] = torch.zeros(3, 3)  # MAE decoder keys are not the encoder's
    path = tmp_path / "mae.pth"
    torch.save({"model": state, "epoch": 3}, path)
    target = build_encoder("vit_tiny_patch16", img_size=96)  # 6x6 grid
    report = load_init(target, path)
    assert report.resized_pos_embed and report.unexpected == ("decoder_pred.weight",) and report.missing == ()
    expected = resample_abs_pos_embed(source.pos_embed.detach(), new_size=[6, 6], old_size=[4, 4], num_prefix_tokens=1)
    torch.testing.assert_close(target.pos_embed.detach(), expected)
    torch.testing.assert_close(target.pos_embed[:, 0], source.pos_embed[:, 0])
    torch.testing.assert_close(target.blocks[3].mlp.fc1.weight, source.blocks[3].mlp.fc1.weight)
    assert torch.isfinite(target.forward_features(torch.randn(1, 3, 96, 96))).all()


def test_load_init_rejects_other_sizes_and_missing_files(tmp_path: Path) -> None:
    path = tmp_path / "small.safetensors"
    save_file({k: v.contiguous() for k, v in build_encoder("vit_small_patch16", img_size=32).state_dict().items()}, str(path))
    with pytest.raises(RealfaceError, match="shape"):
        load_init(build_encoder("vit_tiny_patch16", img_size=32), path)
    with pytest.raises(RealfaceError, match="not found"):
        load_init(build_encoder("vit_tiny_patch16", img_size=32), tmp_path / "none.safetensors")


def test_momentum_schedule_hand_values() -> None:
    assert momentum_schedule(0, 100) == pytest.approx(0.996)
    assert momentum_schedule(50, 100) == pytest.approx(0.998)
    assert momentum_schedule(100, 100) == pytest.approx(1.0)
    assert momentum_schedule(25, 100, base=0.9, final=1.0) == pytest.approx(1.0 - 0.1 * (2**0.5 / 2 + 1) / 2)
    assert momentum_schedule(500, 100) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        momentum_schedule(0, 0)


def _pretrainer(**kw: object) -> Pretrainer:
    torch.manual_seed(0)
    cfg = ModelConfig(img_size=32, decoder_dim=32, decoder_depth=1, decoder_heads=2, proj_dim=16, proj_hidden=32, **kw)
    return build_pretrainer(cfg)


def test_ema_teacher_is_not_updated_by_gradients() -> None:
    model = _pretrainer(distill_weight=1.0, mask="random")
    distill = model.distill
    assert distill is not None
    teacher = {k: v.clone() for k, v in distill.teacher_encoder.state_dict().items()}
    assert all(not p.requires_grad for p in distill.teacher_encoder.parameters())
    assert all(not p.requires_grad for p in distill.teacher_projector.parameters())
    assert not any(id(p) in {id(q) for q in distill.teacher_encoder.parameters()} for p in model.encoder.parameters())
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    imgs = torch.randn(4, 3, 32, 32)
    mask = model.sample_masks(4, torch.Generator().manual_seed(0)).mask
    model.train()
    assert not distill.teacher_encoder.training
    for _ in range(2):
        out = model(imgs, mask)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    assert float(out.parts["distill"]) > 0
    assert all(p.grad is None for p in distill.teacher_encoder.parameters())
    for k, v in distill.teacher_encoder.state_dict().items():
        torch.testing.assert_close(v, teacher[k], rtol=0, atol=0)
    student = model.encoder.state_dict()
    assert not torch.equal(student["blocks.0.attn.qkv.weight"], teacher["blocks.0.attn.qkv.weight"])
    # only update_teacher moves it: t <- m t + (1 - m) s
    m = model.after_step(0, 10)
    assert m == pytest.approx(0.996)
    for k, v in distill.teacher_encoder.state_dict().items():
        torch.testing.assert_close(v, m * teacher[k] + (1 - m) * student[k])
    distill.update_teacher(0.0)
    torch.testing.assert_close(distill.teacher_projector[0].weight, distill.projector[0].weight)


def test_pretrainer_loss_combines_switched_terms(tmp_path: Path) -> None:
    imgs = torch.randn(3, 3, 32, 32)
    frac = torch.zeros(3, 2, 2, 7)
    frac[..., 1] = 1.0  # skin everywhere, eyes in one patch
    frac[:, 0, 1, 1], frac[:, 0, 1, 4] = 0.5, 0.5
    plain = _pretrainer(region_weight=0.0, distill_weight=0.0)
    assert plain.distill is None and plain.after_step(0, 10) == 1.0
    masks = plain.sample_masks(3, torch.Generator().manual_seed(0), frac)
    out = plain(imgs, masks.mask, masks.region_mask)
    torch.testing.assert_close(out.loss, out.parts["rec"])
    assert float(out.parts["distill"]) == 0.0
    full = _pretrainer(region_weight=0.5, distill_weight=0.3)
    out = full(imgs, masks.mask, masks.region_mask)
    parts = out.parts
    torch.testing.assert_close(parts["total"], parts["rec"] + 0.5 * parts["region"] + 0.3 * parts["distill"])
    assert float(parts["region"]) > 0 and float(parts["distill"]) > 0
    # the state dict is safetensors-compatible (no shared tensors) and rebuilds the same model
    path = tmp_path / "model.safetensors"
    save_file(full.state_dict(), str(path))
    rebuilt = build_pretrainer(ModelConfig.from_dict(json.loads(json.dumps(full.config.to_dict()))))
    rebuilt.load_state_dict(load_file(str(path)))
    torch.testing.assert_close(rebuilt(imgs, masks.mask, masks.region_mask).loss, out.loss)


def test_model_config_round_trip_and_checks() -> None:
    cfg = ModelConfig(encoder="vit_small_patch16", img_size=112, mask="block", distill_weight=0.0)
    assert ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    bad = [
        {"encoder": "resnet50"},
        {"img_size": 100},
        {"mask": "grid"},
        {"mask_ratio": 1.0},
        {"decoder_dim": 100, "decoder_heads": 8},
        {"region_weight": -1.0},
        {"ema_momentum": 1.2},
    ]
    for kw in bad:
        with pytest.raises(RealfaceError):
            ModelConfig(**kw)  # type: ignore[arg-type]
    with pytest.raises(RealfaceError, match="unknown model config keys"):
        ModelConfig.from_dict({"encoder": "vit_tiny_patch16", "lr": 1.0})


def test_self_distillation_standalone_loss_range() -> None:
    torch.manual_seed(0)
    encoder = build_encoder("vit_tiny_patch16", img_size=32)
    distill = SelfDistillation(encoder, proj_dim=16, hidden=32)
    assert "student" not in dict(distill.named_children())  # a reference, not a submodule
    imgs = torch.randn(2, 3, 32, 32)
    latent = encoder.forward_visible(imgs, torch.tensor([[0], [2]]))
    loss = distill(imgs, latent)
    assert 0.0 <= loss.item() <= 4.0
    loss.backward()
    assert encoder.blocks[0].attn.qkv.weight.grad is not None
