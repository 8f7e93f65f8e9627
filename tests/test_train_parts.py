"""Schedules, checkpoints and the sample views that training is built on."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from realface.data.faceset import geometric_view, random_resized_box
from realface.errors import RealfaceError
from realface.train import checkpoint as ckpt
from realface.train.engine import TrainConfig, WeightAverage
from realface.train.schedule import cosine_lr, param_groups, scaled_lr


def test_cosine_lr_hand_values():
    # warmup 10 steps to 1.0, then cosine over 90 steps down to 0.1
    assert cosine_lr(0, 100, 10, 1.0, 0.1) == 0.0
    assert cosine_lr(5, 100, 10, 1.0, 0.1) == pytest.approx(0.5)
    assert cosine_lr(10, 100, 10, 1.0, 0.1) == pytest.approx(1.0)
    assert cosine_lr(55, 100, 10, 1.0, 0.1) == pytest.approx(0.1 + 0.9 * 0.5)  # half way: cos(pi/2) = 0
    assert cosine_lr(100, 100, 10, 1.0, 0.1) == pytest.approx(0.1)
    assert scaled_lr(1.5e-4, 512) == pytest.approx(3e-4)


def test_param_groups_exclude_norms_and_biases_from_decay():
    model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
    groups = param_groups(model, weight_decay=0.05)
    decayed = [p for g in groups if g["weight_decay"] > 0 for p in g["params"]]
    assert len(decayed) == 1 and decayed[0] is model[0].weight


def test_train_config_checks_batch_split():
    with pytest.raises(RealfaceError, match="multiple of accum"):
        TrainConfig(batch_size=10, accum_steps=3)
    with pytest.raises(RealfaceError, match="does not split"):
        TrainConfig(batch_size=6).micro_batch(4)
    assert TrainConfig(batch_size=16, accum_steps=2).micro_batch(2) == 4


def test_weight_average_hand_values():
    """min(decay, (1 + step) / (10 + step)) of the average, the rest of the new weights; BatchNorm's running
    statistics are averaged too and its step counter copied."""
    model = nn.Sequential(nn.Linear(1, 1, bias=False), nn.BatchNorm1d(1))
    with torch.no_grad():
        model[0].weight.fill_(1.0)
    average = WeightAverage(model, decay=0.5)
    with torch.no_grad():
        model[0].weight.fill_(3.0)
        model[1].running_mean.fill_(2.0)
        model[1].num_batches_tracked.fill_(7)
    average.update(model, step=0)  # keeps 1/10 of the average
    assert average.model[0].weight.item() == pytest.approx(0.1 * 1.0 + 0.9 * 3.0)
    assert average.model[1].running_mean.item() == pytest.approx(0.9 * 2.0)
    assert average.model[1].num_batches_tracked.item() == 7
    average.update(model, step=100)  # past the ramp: keeps `decay`
    assert average.model[0].weight.item() == pytest.approx(0.5 * 2.8 + 0.5 * 3.0)
    assert not average.model[0].weight.requires_grad and not average.model.training
    with pytest.raises(RealfaceError, match="ema decay"):
        TrainConfig(ema=1.0)


def test_checkpoint_round_trip_and_atomic_overwrite(tmp_path):
    state = {"w": torch.randn(3, 4), "step": torch.tensor(7)}
    ckpt.save_checkpoint(tmp_path, "last", state, {"epoch": 0}, {"optimizer": {"lr": torch.tensor(0.1)}})
    ckpt.save_checkpoint(tmp_path, "last", {k: v + 1 for k, v in state.items()}, {"epoch": 1})
    loaded = ckpt.load_weights(tmp_path / "last" / ckpt.WEIGHTS)
    torch.testing.assert_close(loaded["w"], state["w"] + 1)
    assert ckpt.read_json(tmp_path / "last" / ckpt.META) == {"epoch": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last"]  # no temporary folders left
    fp16 = tmp_path / "half.safetensors"
    ckpt.save_weights(fp16, state, dtype=torch.float16)
    assert ckpt.load_weights(fp16)["w"].dtype == torch.float32
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not safetensors")
    with pytest.raises(RealfaceError, match="not a readable safetensors"):
        ckpt.load_weights(bad)


def test_geometric_view_moves_labels_with_pixels():
    labels = np.zeros((200, 200), np.uint8)
    labels[20:90, 30:80] = 3
    labels[120:190, 100:180] = 5
    rgb = np.repeat((labels * 40)[..., None], 3, axis=2)
    for seed in range(20):
        img, lab = geometric_view(rgb, labels, 64, np.random.default_rng(seed))
        agree = np.mean(img[..., 0] == lab * 40)
        assert img.shape == (64, 64, 3) and lab.shape == (64, 64)
        assert agree > 0.9, f"seed {seed}: labels and pixels disagree on {1 - agree:.0%} of pixels"


def test_random_resized_box_inside_image():
    rng = np.random.default_rng(0)
    for _ in range(100):
        x0, y0, w, h = random_resized_box(rng, 50, 80, (0.2, 1.0))
        assert 0 <= x0 and 0 <= y0 and x0 + w <= 80 and y0 + h <= 50 and w > 0 and h > 0


def test_crop_cache_gives_the_decoded_crops_across_worker_processes(utk_crops, tmp_path) -> None:
    """Samples read through the cache equal those decoded from the files, in worker processes and the epoch
    after (served from the memory map then), and closing the cache removes its file."""
    from torch.utils.data import DataLoader

    from realface.data.faceset import CropCache, Preprocessing
    from realface.faces.align import CropSettings
    from realface.data.labelled import DetectionFaces, build_items
    from realface.faces.manifest import read_face_manifest

    records = read_face_manifest(utk_crops / "manifest.csv")[:12]  # 112 px crops of real faces
    pre = Preprocessing(img_size=64, crop=CropSettings(size=112))
    cache = CropCache(tmp_path / "crops.u8", records, pre.crop.size)
    plain = DetectionFaces(build_items(records, sbi_ratio=1.0), pre, seed=3)
    cached = DetectionFaces(build_items(records, sbi_ratio=1.0), pre, seed=3, cache=cache)
    expected = torch.stack([plain[i]["image"] for i in range(len(plain))])
    for epoch in range(2):  # the first fills the map in the workers, the second reads it
        loader = DataLoader(cached, batch_size=len(cached), num_workers=2)
        assert torch.equal(next(iter(loader))["image"], expected)
    assert cache._written is None  # (the parent process never opened the map: the workers filled it)
    assert np.memmap(cache.path, np.uint8, "r")[-len(records):].all()
    cache.close()
    assert not cache.path.exists()
