"""Detectors: every registered one trains, the RFFR residual and block layout, the competitive losses,
export, heatmaps, and building from a saved pretraining run."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from realface.data.faceset import Preprocessing
from realface.errors import RealfaceError
from realface.models.detectors import (
    DETECTORS,
    ClassifierOptions,
    DetectorConfig,
    RFFROptions,
    build_detector,
    options_for,
)
from realface.models.detectors.competitive import (
    dirichlet_alpha,
    dirichlet_uncertainty,
    edl_loss,
    fusion_weights,
    pearson_loss,
)
from realface.models.detectors.rffr import block_ids, reconstruct_by_blocks, variant_masks
from realface.models.pretrained import encoder_state, load_pretrainer
from realface.models.pretrainer import ModelConfig, build_pretrainer
from realface.train import checkpoint as ckpt
from realface.train.schedule import param_groups

SIZE = 48  # 3x3 patch grid with vit_tiny's 16-px patches: odd, so rffr with 2 blocks per side needs padding


def small_config(name: str, opts: dict | None = None, **kw: object) -> DetectorConfig:
    """A small config; rffr with 2 blocks per side unless `opts` says otherwise."""
    opts = {**({"blocks": 2} if name == "rffr" else {}), **(opts or {})}
    base = {"name": name, "encoder": "vit_tiny_patch16", "img_size": SIZE, "drop_path": 0.1}
    return DetectorConfig(**{**base, **kw}, options=options_for(name, opts))


def faces(n: int, seed: int = 0, size: int = SIZE) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def rffr_detector():
    """A random rffr detector with 2x2 blocks on the 3x3 grid; tests that change it work on a copy."""
    torch.manual_seed(0)
    return build_detector(small_config("rffr")).eval()


@pytest.fixture(scope="module")
def competitive_detector():
    """A competitive detector whose branch 2 was moved away from branch 1, so the branches disagree."""
    torch.manual_seed(0)
    detector = build_detector(small_config("competitive", {"corr_weight": 1.0})).eval()
    with torch.no_grad():
        for p in detector.branches[1].parameters():
            p.add_(0.2 * torch.randn_like(p))
    return detector


# ------------------------------------------------------------------------------------------------
# every registered detector


@pytest.mark.parametrize("name", sorted(DETECTORS))
def test_detector_trains_and_explains(name):
    torch.manual_seed(0)
    detector = build_detector(small_config(name)).train()
    images, labels = faces(2), torch.tensor([0, 1])
    out = detector(images)
    assert out.logits.shape == (2, 2) and out.prob_fake.shape == (2,)
    assert ((out.prob_fake >= 0) & (out.prob_fake <= 1)).all()
    if out.uncertainty is not None:
        assert out.uncertainty.shape == (2,) and ((out.uncertainty > 0) & (out.uncertainty <= 1)).all()
    loss, parts = detector.loss(out, labels, progress=0.5)
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert all(v.ndim == 0 and not v.requires_grad for v in parts.values())
    loss.backward()
    trainable = {n: p for n, p in detector.named_parameters() if p.requires_grad}
    frozen = {n: p for n, p in detector.named_parameters() if not p.requires_grad}
    assert trainable
    missing = [n for n, p in trainable.items() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, f"no gradient for {missing[:5]}"
    assert all(p.grad is None for p in frozen.values())
    if name == "rffr":  # the whole MAE is frozen, trainable streams are not
        assert frozen and all(n.startswith("mae.") for n in frozen)
        assert not detector.mae.training and not any(n.startswith("mae.") for n in trainable)

    detector.zero_grad(set_to_none=True)
    detector.eval()
    maps = detector.heatmap(images)
    assert maps.shape == (2, SIZE, SIZE) and torch.isfinite(maps).all()
    assert maps.min() >= 0 and maps.max() <= 1 and (maps.amax(dim=(1, 2)) == 1).all()
    assert all(p.grad is None for p in detector.parameters())  # explaining does not touch parameter grads
    assert detector.export() is detector or name == "competitive"


def test_linear_probe_trains_only_the_head():
    detector = build_detector(small_config("vit", freeze=True)).train()
    assert not detector.encoder.training  # no drop path in a frozen encoder
    out = detector(faces(2))
    detector.loss(out, torch.tensor([1, 0]))[0].backward()
    assert all(p.grad is None for p in detector.encoder.parameters())
    assert all(p.grad is not None for p in detector.head.parameters())
    groups = param_groups(detector, 0.05, detector.config.layer_decay, detector.num_layers, detector.layer_of)
    assert sum(len(g["params"]) for g in groups) == len(list(detector.head.parameters()))


def test_layer_of_orders_embeddings_blocks_and_head(competitive_detector):
    detector = competitive_detector
    depth = 12  # vit_tiny
    assert detector.num_layers == depth + 1
    assert detector.layer_of("branches.1.patch_embed.proj.weight") == 0
    assert detector.layer_of("branches.0.pos_embed") == 0
    assert detector.layer_of("branches.0.blocks.0.attn.qkv.weight") == 1
    assert detector.layer_of("branches.1.blocks.11.mlp.fc2.bias") == depth
    assert detector.layer_of("branches.1.norm.weight") == depth + 1
    assert detector.layer_of("head.fc.weight") == depth + 1
    groups = param_groups(detector, 0.05, 0.5, detector.num_layers, detector.layer_of)
    scales = sorted({g["lr_scale"] for g in groups})
    assert scales[0] == pytest.approx(0.5 ** (depth + 1)) and scales[-1] == 1.0


def test_config_checks_and_round_trip():
    cfg = small_config("rffr", {"blocks": 3}, pool="cls")
    assert DetectorConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.to_dict()["options"]["blocks"] == 3
    # configs written before options had their own dataclasses: every detector's options flat, name "vit"
    old = {"name": "vit", "encoder": "vit_tiny_patch16", "img_size": SIZE, "rffr_blocks": 4, "mask_weight": 1.0,
           "fusion_lambda": 1.0, "mae_decoder_dim": 128}  # fmt: skip
    assert DetectorConfig.from_dict(old).options == ClassifierOptions(mask_weight=1.0)
    with pytest.raises(RealfaceError, match="has no option mask_weight"):
        options_for("rffr", {"mask_weight": 1.0})
    with pytest.raises(RealfaceError, match="unknown detector"):
        small_config("resnet")
    with pytest.raises(RealfaceError, match="rffr blocks"):
        small_config("rffr", {"blocks": 4})  # a 3x3 grid holds at most 3 blocks per side
    with pytest.raises(RealfaceError, match="freeze"):
        small_config("competitive", freeze=True)
    with pytest.raises(RealfaceError, match="pool"):
        small_config("vit", pool="max")
    with pytest.raises(RealfaceError, match="unknown detector config keys"):
        DetectorConfig.from_dict({"name": "vit", "blocks": 3})


# ------------------------------------------------------------------------------------------------
# rffr


@pytest.mark.parametrize("grid,k", [((3, 3), 2), ((7, 7), 2), ((7, 7), 3), ((14, 14), 4), ((5, 9), 3), ((4, 4), 4)])
def test_block_layout_covers_every_patch_exactly_once(grid, k):
    gh, gw = grid
    ids = block_ids(grid, k)  # (L,)
    assert ids.shape == (gh * gw,)
    counts = torch.bincount(ids, minlength=k * k)
    assert len(counts) == k * k and (counts > 0).all()  # k*k blocks, none empty, each patch in exactly one
    ids2d = ids.view(gh, gw)
    for b in range(k * k):  # each block is a rectangle, bands differ by at most one patch
        rows, cols = torch.nonzero(ids2d == b, as_tuple=True)
        h, w = int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)
        assert h * w == counts[b]
        assert gh // k <= h <= -(-gh // k) and gw // k <= w <= -(-gw // k)
    masks = variant_masks(grid, k)  # (B, L)
    assert (masks.sum(dim=1) == counts.max()).all()  # one batch: every variant masks as many patches
    own = masks.gather(0, ids.view(1, -1)).squeeze(0)  # (L,) is each patch masked in its own variant?
    assert own.all()
    assert (masks & torch.nn.functional.one_hot(ids, k * k).T.bool()).sum() == gh * gw  # block b is inside variant b


@pytest.mark.parametrize("norm_pix", [False, True])
def test_rffr_residual_is_zero_on_the_models_own_reconstruction(rffr_detector, norm_pix):
    torch.manual_seed(0)
    detector = copy.deepcopy(rffr_detector)
    mae = detector.mae
    mae.norm_pix_loss = norm_pix
    # a decoder whose output is a fixed function: patch l is always predicted as pattern[l], whatever it sees
    pattern = torch.randn(mae.num_patches, mae.decoder_pred.out_features)  # (L, p*p*3)
    if norm_pix:  # the MAE predicts per-patch normalized pixels; the input's own mean and std are put back
        pattern = (pattern - pattern.mean(1, keepdim=True)) / pattern.std(1, keepdim=True)  # unbiased, as MAE.target
    mae.forward_decoder = lambda latent, restore_idx: pattern.expand(latent.shape[0], -1, -1)  # type: ignore[method-assign]
    patches = pattern.expand(2, -1, -1)  # (2, L, p*p*3)
    if norm_pix:  # then any scale and offset of a patch's pattern is its own reconstruction
        patches = patches * (torch.rand(2, mae.num_patches, 1) + 0.5) + torch.randn(2, mae.num_patches, 1)
    images = mae.unpatchify(patches.contiguous())  # the model's own reconstruction
    residual = detector.residual(images)
    assert residual.shape == images.shape
    assert residual.abs().max() < 1e-4
    shifted = torch.roll(images, shifts=SIZE // 3, dims=3)  # the same pixels in the wrong patches
    assert detector.residual(shifted).abs().mean() > 0.1


def test_rffr_batched_residual_equals_one_reconstruction_per_block(rffr_detector):
    detector, images = rffr_detector, faces(2, seed=3)
    mae, grid, p = detector.mae, detector.mae.encoder.grid, detector.mae.encoder.patch_size
    residual = detector.residual(images)  # 2x2 blocks of 1, 2, 2 and 4 patches: padded variants
    for k in (2, 3):  # 3: one patch per block, no padding
        ids, masks = block_ids(grid, k), variant_masks(grid, k)
        batched = residual if k == 2 else reconstruct_by_blocks(mae, images, masks, ids) - images
        pixel_block = ids.view(grid).repeat_interleave(p, 0).repeat_interleave(p, 1)  # (H, W)
        for b in range(k * k) if k == 2 else (0, 4, 8):  # every padded variant; corners and centre of 3x3
            with torch.no_grad():
                rec = mae.reconstruct(images, masks[b].expand(2, -1), paste_visible=False)
            where = pixel_block == b
            torch.testing.assert_close(batched[..., where], (rec - images)[..., where], atol=1e-5, rtol=1e-4)
        if k == 3:  # no padding: the variant masks are exactly the blocks
            assert torch.equal(masks, torch.nn.functional.one_hot(ids, 9).T.bool())


# ------------------------------------------------------------------------------------------------
# competitive


def test_pearson_loss_is_zero_for_uncorrelated_and_grows_with_correlation():
    g = torch.Generator().manual_seed(0)
    f1 = torch.randn(8, 64, generator=g)
    other = torch.randn(8, 64, generator=g)
    a = f1 - f1.mean(1, keepdim=True)
    b = other - other.mean(1, keepdim=True)
    orthogonal = b - (a * b).sum(1, keepdim=True) / (a * a).sum(1, keepdim=True) * a  # centred, orthogonal to a
    assert pearson_loss(f1, orthogonal) == pytest.approx(0.0, abs=1e-5)
    assert pearson_loss(f1, -3 * f1 + 2) == pytest.approx(1.0, abs=1e-5)
    weak, strong = pearson_loss(f1, f1 + 2 * other), pearson_loss(f1, f1 + 0.5 * other)
    assert 0.05 < weak < strong < 1.0


def test_edl_loss_prefers_confident_correct_and_uncertainty_falls_with_evidence():
    labels = torch.tensor([1, 0])
    confident = torch.tensor([[-6.0, 6.0], [6.0, -6.0]])  # says fake, real
    for kl_weight in (0.0, 1.0):
        right = edl_loss(confident, labels, kl_weight)
        wrong = edl_loss(confident, 1 - labels, kl_weight)
        unsure = edl_loss(torch.zeros(2, 2), labels, kl_weight)
        assert right < unsure < wrong
    u = dirichlet_uncertainty(dirichlet_alpha(torch.tensor([[0.0, 0.0], [0.0, 8.0], [-20.0, -20.0]])))
    assert u[2] == pytest.approx(1.0, abs=1e-6) and u[1] < u[0] < u[2]


def test_fusion_favours_the_less_uncertain_branch(competitive_detector):
    u = torch.tensor([[0.1, 0.9], [0.8, 0.2], [0.5, 0.5]])
    w = fusion_weights(u, lam=2.0)
    assert torch.allclose(w.sum(1), torch.ones(3))
    assert w[0, 0] > w[0, 1] and w[1, 1] > w[1, 0] and w[2, 0] == pytest.approx(0.5)
    assert fusion_weights(u, lam=8.0)[0, 0] > w[0, 0]  # a larger lambda trusts the surer branch more

    detector = competitive_detector
    with torch.no_grad():
        out = detector(faces(6, seed=1))
    ex = out.extras
    assert torch.equal(ex["weights"].argmax(1), ex["u"].argmin(1))
    fused = ex["weights"][:, :1] * ex["features_b1"] + ex["weights"][:, 1:] * ex["features_b2"]
    torch.testing.assert_close(out.logits, detector.head(fused))
    torch.testing.assert_close(out.uncertainty, (ex["weights"] * ex["u"]).sum(1))


def test_competitive_correlation_loss_moves_only_branch_two(competitive_detector):
    detector = competitive_detector
    detector.zero_grad(set_to_none=True)
    out, labels = detector(faces(2)), torch.tensor([0, 1])
    with_corr, parts = detector.loss(out, labels, progress=0.0)
    assert 0 < parts["corr"] < 1
    config = detector.config
    detector.config = dataclasses.replace(config, options=dataclasses.replace(config.options, corr_weight=0.0))
    try:
        without_corr, _ = detector.loss(out, labels, progress=0.0)
    finally:
        detector.config = config
    (with_corr - without_corr).backward()  # the gradient of the correlation term alone
    assert all(p.grad is None or p.grad.abs().max() == 0 for p in detector.branches[0].parameters())
    assert any(p.grad is not None and p.grad.abs().max() > 0 for p in detector.branches[1].parameters())
    detector.zero_grad(set_to_none=True)


def test_competitive_export_keeps_the_chosen_branch_and_head(competitive_detector):
    detector = competitive_detector
    images, calibration = faces(3, seed=5), faces(8, seed=6)
    with torch.no_grad():
        full = detector(images)
        u = detector(calibration).extras["u"].mean(0)
    chosen = int(u.argmin())
    exported = detector.export(calibration)
    assert exported.config.name == "classifier" and not exported.training
    assert sum(p.numel() for p in exported.parameters()) < sum(p.numel() for p in detector.parameters())
    with torch.no_grad():
        torch.testing.assert_close(exported(images).logits, full.extras[f"logits_b{chosen + 1}"])
        torch.testing.assert_close(detector.export()(images).logits, full.extras["logits_b1"])  # no calibration: branch 1
    rebuilt = build_detector(exported.config)  # an export reloads as a plain `vit` detector
    rebuilt.load_state_dict(exported.state_dict())


# ------------------------------------------------------------------------------------------------
# from a pretraining run


def _tiny_pretrainer(distill_weight: float = 0.1) -> tuple[ModelConfig, torch.nn.Module]:
    cfg = ModelConfig(
        encoder="vit_tiny_patch16", img_size=32, decoder_dim=32, decoder_depth=1, decoder_heads=2,
        proj_dim=16, proj_hidden=32, mask="random", distill_weight=distill_weight,
    )
    torch.manual_seed(1)
    return cfg, build_pretrainer(cfg)


def test_load_pretrainer_round_trip_and_builders_copy_the_encoder(tmp_path):
    cfg, pretrainer = _tiny_pretrainer()
    pre = Preprocessing(img_size=32)
    ckpt.save_checkpoint(tmp_path, "best", pretrainer.state_dict(), {"epoch": 0})
    ckpt.write_json(tmp_path / ckpt.CONFIG, {"kind": "pretrain", "model": cfg.to_dict(), "preprocessing": pre.to_dict()})

    loaded, loaded_pre = load_pretrainer(tmp_path)
    assert loaded_pre == pre and loaded.config == cfg and not loaded.training
    want = pretrainer.state_dict()
    got = loaded.state_dict()
    assert got.keys() == want.keys()
    for key in want:
        torch.testing.assert_close(got[key], want[key])
    state = encoder_state(loaded)
    assert state.keys() == pretrainer.encoder.state_dict().keys()

    rffr = build_detector(DetectorConfig(name="rffr", options=RFFROptions(blocks=2)).for_pretrainer(cfg), loaded)
    random_init = build_detector(DetectorConfig(name="vit").for_pretrainer(cfg))
    for encoder in (rffr.face_encoder, rffr.residual_encoder, rffr.mae.encoder):
        for key, value in encoder.state_dict().items():
            torch.testing.assert_close(value, state[key])
    assert not torch.equal(random_init.encoder.blocks[0].attn.qkv.weight, state["blocks.0.attn.qkv.weight"])
    torch.testing.assert_close(rffr.mae.decoder_pred.weight, pretrainer.mae.decoder_pred.weight)

    bigger_cfg = dataclasses.replace(DetectorConfig(name="vit").for_pretrainer(cfg), img_size=64)
    bigger = build_detector(bigger_cfg, loaded)  # pos embed resampled
    assert bigger(faces(1, size=64)).logits.shape == (1, 2)
    with pytest.raises(RealfaceError, match="differs"):
        build_detector(DetectorConfig(name="vit", encoder="vit_small_patch16", img_size=32), loaded)


def test_load_pretrainer_rejects_other_folders(tmp_path):
    with pytest.raises(RealfaceError, match="not a pretraining run"):
        load_pretrainer(tmp_path)
    cfg, pretrainer = _tiny_pretrainer(distill_weight=0.0)
    ckpt.write_json(tmp_path / ckpt.CONFIG, {"kind": "finetune", "model": cfg.to_dict(), "preprocessing": {}})
    with pytest.raises(RealfaceError, match="not a pretraining run"):
        load_pretrainer(tmp_path)
    ckpt.write_json(tmp_path / ckpt.CONFIG, {"model": cfg.to_dict(), "preprocessing": Preprocessing().to_dict()})
    ckpt.save_checkpoint(tmp_path, "last", pretrainer.state_dict(), {})
    with pytest.raises(RealfaceError, match="no checkpoint 'best'; it has: last"):
        load_pretrainer(tmp_path)
    other = dataclasses.replace(cfg, decoder_dim=64, decoder_heads=4)
    ckpt.write_json(tmp_path / ckpt.CONFIG, {"model": other.to_dict(), "preprocessing": Preprocessing().to_dict()})
    with pytest.raises(RealfaceError, match="does not match"):
        load_pretrainer(tmp_path, "last")


@pytest.mark.parametrize("encoder", ["vit_tiny_patch16", "vit_tiny_convstem16", "resnet18", "convnextv2_atto", "mobilenetv3_large_100"])
@pytest.mark.parametrize("name", sorted(DETECTORS))
def test_every_detector_trains_on_every_encoder_family(name: str, encoder: str) -> None:
    """Forward, loss (with cell targets where the detector takes them), backward: finite, gradients reach the
    encoders; the heatmap is a map of the face."""
    from realface.models.encoders import ENCODERS

    torch.manual_seed(0)
    info = ENCODERS[encoder]
    size = 2 * info.stride if info.family == "cnn" else 32
    opts = {"blocks": 2} if name == "rffr" else {"mask_weight": 1.0} if name == "classifier" else {}
    config = DetectorConfig(name=name, encoder=encoder, img_size=size, options=options_for(name, opts))
    detector = build_detector(config).train()
    images = faces(4, size=size)
    out = detector(images)
    cells = config.grid[0] * config.grid[1]
    targets = {"mask": torch.rand(4, cells), "mask_known": torch.ones(4)}
    loss, parts = detector.loss(out, torch.tensor([0, 1, 0, 1]), 0.5, targets=targets)
    assert torch.isfinite(loss) and all(torch.isfinite(v) for v in parts.values())
    assert ("mask" in parts) == (name == "classifier")
    loss.backward()
    trained = [p for p in detector.parameters() if p.requires_grad]
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in trained if p.grad is not None)
    assert sum(p.grad is not None for p in trained) > 0.9 * len(trained)
    maps = detector.eval().heatmap(images[:2])
    assert maps.shape == (2, size, size) and 0.0 <= float(maps.min()) <= float(maps.max()) <= 1.0
