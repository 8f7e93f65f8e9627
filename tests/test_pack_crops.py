"""benchmarks/pack_crops.py: preprocessed crops packed into one file and unpacked elsewhere read back as the same
faces (records, landmarks, crop settings) with pixels close to the originals."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

from realface.data.faceset import read_face
from realface.faces.manifest import crop_settings_of, read_face_manifest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "pack_crops.py"


def _run(*args: object) -> None:
    subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], check=True, capture_output=True, text=True)


def test_pack_unpack_round_trip(utk_crops: Path, tmp_path: Path) -> None:
    manifest = next(utk_crops.glob("manifest*.csv"))
    pack = tmp_path / "pack.zip"
    _run("pack", pack, "--root", utk_crops.parent, "--manifests", manifest, "--side", 96, "--quality", 90, "--workers", 1)
    out = tmp_path / "unpacked"
    _run("unpack", pack, "--out", out, "--workers", 1)

    before = read_face_manifest(manifest)
    after = read_face_manifest(out / utk_crops.name / manifest.name)
    assert len(after) == len(before) == 16
    crops_bytes = sum(r.path.stat().st_size for r in before)
    assert pack.stat().st_size < crops_bytes  # 96 px WebP: smaller than the 112 px JPEGs it packs
    assert crop_settings_of(after) == crop_settings_of(before)  # preprocess.json travelled with the crops
    for b, a in zip(before, after):
        assert a.path.suffix == ".png" and a.path.is_relative_to(out)
        assert (a.label, a.source, a.extra) == (b.label, b.source, b.extra)
        np.testing.assert_allclose(a.landmarks, b.landmarks, atol=0.051)  # tenths of a pixel, as the manifest writes
        original, restored = read_face(b).astype(np.float64), read_face(a).astype(np.float64)
        assert restored.shape == original.shape  # back at the crop side, so the landmarks hold
        psnr = 10 * np.log10(255**2 / np.mean((original - restored) ** 2))
        assert psnr > 27, psnr  # what 112 -> 96 px -> 112 px and WebP 90 keep of a face
