from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


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
    out = tmp_path_factory.mktemp("utk_crops")
    report = preprocess(images, out, config=PipelineConfig(crop_size=112, assume_cropped=True), progress=False)
    assert report.ok
    return out
