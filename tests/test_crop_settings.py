"""Crop settings travel with the weights: preprocess records them, training reads them (and refuses a mix),
checkpoints carry them, and detection crops faces exactly so."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from realface.bundle import load_bundle
from realface.cli import main
from realface.data.faceset import Preprocessing
from realface.errors import RealfaceError
from realface.faces.align import CropSettings
from realface.faces.manifest import crop_settings_of, read_face_manifest
from realface.train.finetune import training_crop


def _preprocess(shared_data: Path, out: Path, size: int, margin: float, count: int = 6) -> Path:
    images = sorted((shared_data / "utkface" / "images").glob("*.jpg"))[:count]
    manifest = out.parent / f"{out.name}-input.csv"
    manifest.write_text("path,label\n" + "".join(f"{p},real\n" for p in images))
    args = ["preprocess", str(manifest), "--out", str(out), "--size", str(size), "--margin", str(margin),
            "--assume-cropped", "--no-progress"]  # fmt: skip
    assert main(args) == 0
    return out


def test_settings_round_trip_from_preprocess_to_detection(shared_data: Path, tmp_path: Path) -> None:
    faces = _preprocess(shared_data, tmp_path / "faces", size=96, margin=1.5)
    recorded = json.loads((faces / "preprocess.json").read_text())["crop"]
    assert recorded == {"size": 96, "margin": 1.5, "detector": "dlib-hog", "template": "arcface5"}
    assert crop_settings_of(read_face_manifest(faces)) == CropSettings(size=96, margin=1.5)

    run = tmp_path / "ft"
    args = ["finetune", "--data", str(faces / "manifest.csv"), "--out", str(run),
            "--detector", "classifier", "--model", "resnet18", "--img-size", "64", "--pseudo-fakes", "sbi",
            "--no-labelled-fakes", "--epochs", "1", "--batch-size", "4", "--workers", "0", "--no-progress"]  # fmt: skip
    assert main(args) == 0
    bundle = load_bundle(run)
    assert bundle.pre.crop == CropSettings(size=96, margin=1.5) and bundle.pre.img_size == 64

    from realface.detect import Scanner

    pipeline = Scanner(bundle, frames=2).pipeline.config
    assert (pipeline.crop_size, pipeline.margin, pipeline.detector) == (96, 1.5, "dlib-hog")

    # a different --crop-size than the data's is refused before training
    again = args[: args.index("--out") + 1] + [str(tmp_path / "ft2")] + args[args.index("--out") + 2 :] + ["--crop-size", "112"]
    assert main(again) != 0
    assert not (tmp_path / "ft2" / "last").exists()


def test_training_refuses_faces_cropped_two_ways(shared_data: Path, tmp_path: Path) -> None:
    a = _preprocess(shared_data, tmp_path / "a", size=64, margin=1.3, count=2)
    b = _preprocess(shared_data, tmp_path / "b", size=64, margin=1.6, count=2)
    records = read_face_manifest(a) + read_face_manifest(b)
    with pytest.raises(RealfaceError, match="cropped in different ways"):
        training_crop(records)
    assert training_crop(read_face_manifest(a)) == CropSettings(size=64)


def test_checkpoints_from_before_crop_settings_still_load() -> None:
    old = {"img_size": 112, "mean": [0.5, 0.5, 0.5], "std": [0.2, 0.2, 0.2], "crop_margin": 1.3, "crop_size": 112}
    pre = Preprocessing.from_dict(old)
    assert pre.crop == CropSettings(size=112, margin=1.3) and pre.crop_size == 112
    assert Preprocessing.from_dict(pre.to_dict()) == pre
    shipped = load_bundle()  # the packaged default: written before crop settings existed
    assert shipped.pre.crop.size == shipped.card["recipe"]["crop_size"]
