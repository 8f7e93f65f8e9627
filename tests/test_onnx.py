"""The torch-free inference path: exported models carry an ONNX graph that ONNX Runtime runs with the same
weights; it gives PyTorch's p(fake) and heatmaps, and detection imports neither torch nor timm."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from realface.bundle import Bundle, export_bundle
from realface.detect import Scanner
from realface.faces.align import CropSettings
from realface.model import Decision, load_model
from realface.models.detectors import DetectorConfig, build_detector, options_for
from realface.preprocessing import Preprocessing, read_rgb

KINDS = [  # (detector, encoder, options): every detector kind that exports, on both encoder families
    ("classifier", "resnet18", {"mask_weight": 1.0}),
    ("classifier", "vit_tiny_patch16", {}),
    ("rffr", "resnet18", {"mae_mask_cell": 16}),
    ("rffr", "vit_tiny_patch16", {}),
    ("competitive", "resnet18", {}),
]


@pytest.fixture(scope="module")
def faces(utk_crops: Path) -> list[np.ndarray]:
    return [read_rgb(str(p)) for p in sorted(utk_crops.rglob("*.jpg"))[:6]]


def export_random(tmp_path: Path, name: str, encoder: str, options: dict) -> Path:
    torch.manual_seed(0)
    config = DetectorConfig(name=name, encoder=encoder, img_size=64, drop_path=0.0, options=options_for(name, options))
    detector = build_detector(config).eval()
    for module in detector.modules():  # BatchNorm statistics away from their defaults, as after training
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 1.5)
    bundle = Bundle(
        detector, config, Preprocessing(img_size=64, crop=CropSettings(size=64)), Decision(threshold=0.5, band=0.1),
        {"name": "random"}, Path("."),
    )  # fmt: skip
    return export_bundle(bundle, tmp_path / f"{name}-{encoder}", calibration=torch.randn(4, 3, 64, 64))


@pytest.mark.parametrize("name, encoder, options", KINDS, ids=[f"{n}-{e}" for n, e, _ in KINDS])
def test_onnx_matches_pytorch(tmp_path: Path, faces, name: str, encoder: str, options: dict) -> None:
    folder = export_random(tmp_path, name, encoder, options)
    config = json.loads((folder / "config.json").read_text())
    assert (folder / "model.onnx").stat().st_size < 2_000_000  # the weights are not copied into the graph
    onnx_model, torch_model = load_model(folder, "onnx"), load_model(folder, "torch")
    assert (onnx_model.engine.name, torch_model.engine.name) == ("onnx", "torch")
    with_maps = config["graph"]["map"] is not None
    onnx_scan = Scanner(onnx_model, heatmaps=with_maps).score(faces)
    torch_scan = Scanner(torch_model, heatmaps=with_maps).score(faces)
    np.testing.assert_allclose(onnx_scan[0], torch_scan[0], atol=1e-4)  # p(fake)
    np.testing.assert_allclose(onnx_scan[1], torch_scan[1], atol=1e-4)  # confidence
    assert np.ptp(onnx_scan[0]) > 0  # different faces, different scores: not a constant graph
    if with_maps:
        for a, b, face in zip(onnx_scan[2], torch_scan[2], faces):
            assert a.shape == face.shape[:2]
            np.testing.assert_allclose(a, b, atol=1e-4)


def test_heatmaps_that_need_gradients_are_refused_on_onnx_and_drawn_by_torch(tmp_path: Path, faces) -> None:
    folder = export_random(tmp_path, "classifier", "vit_tiny_patch16", {})  # no cell head: gradient x input
    assert json.loads((folder / "config.json").read_text())["graph"]["map"] is None
    from realface.errors import RealfaceError

    with pytest.raises(RealfaceError, match="need gradients"):
        Scanner(load_model(folder, "onnx"), heatmaps=True)
    model = load_model(folder, maps=True)  # auto picks the engine that can draw them
    assert model.engine.name == "torch"
    heats = Scanner(model, heatmaps=True).score(faces[:2])[2]
    assert heats[0].shape == faces[0].shape[:2] and 0 <= heats[0].min() and heats[0].max() <= 1


def test_onnx_backend_needs_a_graph(tiny_model: Path, tmp_path: Path) -> None:
    import shutil

    from realface.errors import RealfaceError

    folder = tmp_path / "no-graph"
    shutil.copytree(tiny_model, folder)
    (folder / "model.onnx").unlink()
    assert load_model(folder).engine.name == "torch"  # auto: PyTorch runs it
    with pytest.raises(RealfaceError, match="no ONNX graph"):
        load_model(folder, "onnx")
    with pytest.raises(RealfaceError, match="runs on the CPU"):
        load_model(tiny_model, "onnx", "cuda")


def test_detection_imports_neither_torch_nor_timm(shared_data: Path) -> None:
    """`realface detect` on a real face with the shipped model, in a fresh interpreter."""
    crop = sorted((shared_data / "dfdc").rglob("*.jpg"))[0]
    code = (
        "import json, sys\n"
        "from realface.cli import main\n"
        f"rc = main(['detect', {str(crop)!r}, '--json', '--no-progress'])\n"
        "assert rc == 0, rc\n"
        "print(json.dumps(sorted(m for m in ('torch', 'timm', 'torchvision') if m in sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    report, loaded = out.stdout.rsplit("\n", 2)[0], out.stdout.strip().splitlines()[-1]
    assert json.loads(loaded) == []
    result = json.loads(report)["results"][0]
    assert result["status"] == "ok" and 0 <= result["p_fake"] <= 1
    assert json.loads(report)["model"]["backend"] == "onnx"
