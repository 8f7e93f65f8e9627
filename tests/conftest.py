from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def load_benchmark(name: str) -> ModuleType:
    """The script benchmarks/NAME.py as a module (benchmarks/ is not a package)."""
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """`../shared/data` beside the repository: real faces and videos (see its README.md)."""
    if not SHARED_DATA.is_dir():
        pytest.fail(f"shared data not found at {SHARED_DATA}; CI runs with ../shared beside the clone")
    return SHARED_DATA


@pytest.fixture(scope="session")
def utk_crops(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """16 real UTKFace faces through `realface preprocess` (aligned 112 px crops + landmarks): a folder."""
    from realface.faces.pipeline import PipelineConfig
    from realface.faces.preprocess import preprocess

    images = sorted((shared_data / "utkface" / "images").glob("*.jpg"))[:16]
    manifest = tmp_path_factory.mktemp("utk_manifest") / "manifest.csv"
    manifest.write_text("path,label\n" + "".join(f"{p},real\n" for p in images))
    out = tmp_path_factory.mktemp("utk_crops")
    report = preprocess([manifest], out, config=PipelineConfig(crop_size=112, assume_cropped=True), progress=False)
    assert report.ok
    return out


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An exported detector bundle (vit_tiny at 64 px with a cell head, random weights, crops of 64 px, with its
    ONNX graph) for tests of the plumbing (detect, serve, evaluate); its verdicts mean nothing. Threshold 0.5,
    band 0.1."""
    import torch

    from realface.bundle import Bundle, Decision, export_bundle
    from realface.data.faceset import Preprocessing
    from realface.faces.align import CropSettings
    from realface.models.detectors import ClassifierOptions, DetectorConfig, build_detector

    torch.manual_seed(0)
    config = DetectorConfig(name="classifier", img_size=64, options=ClassifierOptions(mask_weight=1.0))
    bundle = Bundle(
        detector=build_detector(config).eval(),
        config=config,
        pre=Preprocessing(img_size=64, crop=CropSettings(size=64)),
        decision=Decision(threshold=0.5, band=0.1, policy="fixed"),
        card={"name": "test model (random weights)"},
        source=Path("."),
    )
    return export_bundle(bundle, tmp_path_factory.mktemp("tiny_model") / "weights")


@pytest.fixture
def hold_scans(monkeypatch: pytest.MonkeyPatch):
    """hold_scans(app) -> held: every scan of the service `app` first sets `held.started`, records its arguments in
    `held.calls`, then waits (at most 30 s) for `held.release`: a test can keep the job slots busy at will."""
    import threading
    from types import SimpleNamespace

    def hold(app):
        scanner = app.state.service.scanner
        held = SimpleNamespace(started=threading.Event(), release=threading.Event(), calls=[])
        real_scan = scanner.scan_content

        def held_scan(*args):
            held.calls.append(args)
            held.started.set()
            assert held.release.wait(30)
            return real_scan(*args)

        monkeypatch.setattr(scanner, "scan_content", held_scan)
        return held

    return hold
