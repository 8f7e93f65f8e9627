"""`realface pretrain` end to end on real faces: checkpoints, pictures, exact resume, DDP equivalence."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from realface.cli import main
from realface.train import checkpoint as ckpt

TINY = [
    "--img-size", "64", "--decoder-dim", "64", "--decoder-depth", "1", "--decoder-heads", "4",
    "--batch-size", "8", "--workers", "0", "--precision", "fp32", "--no-progress", "--warmup-epochs", "0.5",
]  # fmt: skip


def losses(run: Path) -> list[float]:
    with (run / "log.csv").open() as f:
        return [float(row["loss"]) for row in csv.DictReader(f)]


def test_pretrain_cli_writes_checkpoints_log_and_pictures(utk_crops, tmp_path):
    run = tmp_path / "run"
    assert main(["pretrain", "--data", str(utk_crops), "--out", str(run), "--epochs", "2", *TINY]) == 0
    config = ckpt.read_json(run / "config.json")
    assert config["model"]["mask"] == "crfr-p" and config["preprocessing"]["img_size"] == 64
    assert config["num_faces"] == 16 and config["layout"] == "contiguous"  # a ViT: no channels to move last
    for tag in ("last", "best"):
        weights = ckpt.load_weights(run / tag / "model.safetensors")
        assert any(k.startswith("mae.encoder.blocks") for k in weights)
    assert ckpt.read_json(run / "last" / "meta.json")["epoch"] == 1
    assert len(losses(run)) == 4  # 16 faces / batch 8 = 2 steps, 2 epochs
    assert (run / "samples" / "epoch_001.png").stat().st_size > 1000
    assert (run / "samples" / "epoch_002.png").is_file()


def test_resume_continues_exactly(utk_crops, tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    args = ["pretrain", "--data", str(utk_crops), *TINY]
    assert main([*args, "--out", str(straight), "--epochs", "3"]) == 0
    assert main([*args, "--out", str(resumed), "--epochs", "1", "--tensorboard"]) == 0
    assert main([*args, "--out", str(resumed), "--epochs", "3", "--resume", "--tensorboard"]) == 0
    assert losses(resumed) == pytest.approx(losses(straight), rel=1e-6, abs=1e-7)
    # TensorBoard holds the same per-step numbers as log.csv, across the resume, and one point per epoch
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    board = EventAccumulator(str(resumed / "tensorboard"))
    board.Reload()
    steps = [(e.step, e.value) for e in board.Scalars("train/loss")]
    assert [s for s, _ in steps] == [1, 2, 3, 4, 5, 6]
    assert [v for _, v in steps] == pytest.approx(losses(resumed), rel=1e-6)
    assert [e.step for e in board.Scalars("epoch/train_loss")] == [2, 4, 6]
    assert {"train/lr", "train/images_per_s", "train/rec"} <= set(board.Tags()["scalars"])
    a = ckpt.load_weights(straight / "last" / "model.safetensors")
    b = ckpt.load_weights(resumed / "last" / "model.safetensors")
    assert all(float((a[k] - b[k]).abs().max()) < 1e-5 for k in a)


def test_pretrain_refuses_to_overwrite_and_reports_bad_options(utk_crops, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["pretrain", "--data", str(utk_crops), "--out", str(run), "--epochs", "1", *TINY]) == 0
    assert main(["pretrain", "--data", str(utk_crops), "--out", str(run), "--epochs", "1", *TINY]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert main(["pretrain", "--data", str(utk_crops), "--out", str(tmp_path / "x"), "--mask", "nope", *TINY]) == 2
    assert "unknown masking" in capsys.readouterr().err
    assert main(["pretrain", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "y"), *TINY]) == 2


@pytest.mark.skipif(shutil.which("torchrun", path=str(Path(sys.executable).parent)) is None, reason="no torchrun")
def test_torchrun_two_processes_match_one(utk_crops, tmp_path):
    """DDP with gloo on 2 CPU processes gives the same losses as 1 process with the same global batch."""
    single, double = tmp_path / "single", tmp_path / "double"
    args = ["pretrain", "--data", str(utk_crops), "--epochs", "1", *TINY]
    assert main([*args, "--out", str(single)]) == 0
    torchrun = str(Path(sys.executable).parent / "torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [torchrun, "--standalone", "--nproc_per_node", "2", "-m", "realface", *args, "--out", str(double)]
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert ckpt.read_json(double / "config.json")["world_size"] == 2
    assert losses(double) == pytest.approx(losses(single), rel=1e-4)


def test_pretrain_reads_webdataset_shards(utk_crops, shared_data, tmp_path):
    """Tar shards from `preprocess --format webdataset` give the same faces as the folder, read by offset."""
    import numpy as np

    from realface.data.faceset import read_face
    from realface.faces.manifest import read_face_manifest
    from realface.faces.pipeline import PipelineConfig
    from realface.faces.preprocess import preprocess

    manifest = next(utk_crops.parent.glob("utk_manifest*/manifest.csv"))  # written by the fixture
    shards = tmp_path / "shards"
    preprocess([manifest], shards, config=PipelineConfig(crop_size=112, assume_cropped=True), fmt="webdataset", progress=False)
    tar = next(shards.glob("*.tar"))
    from_tar = sorted(read_face_manifest(tar), key=lambda r: r.source)
    from_folder = sorted(read_face_manifest(utk_crops), key=lambda r: r.source)
    assert len(from_tar) == len(from_folder) == 16
    for a, b in zip(from_tar, from_folder):
        assert a.offset > 0 and a.label == b.label == "real"
        np.testing.assert_allclose(a.landmarks, b.landmarks)
        np.testing.assert_array_equal(read_face(a), read_face(b))
    run = tmp_path / "run"
    assert main(["pretrain", "--data", str(tar), "--out", str(run), "--epochs", "1", *TINY]) == 0
    assert ckpt.read_json(run / "config.json")["num_faces"] == 16
