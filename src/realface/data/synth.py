"""Write self-blended pseudo-fakes to disk so a person can look at them (`realface synth-sbi`)."""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from realface.data.faceset import read_rgb
from realface.data.sbi import SBIConfig, self_blend
from realface.errors import InputError, RealfaceError

MANIFEST_NAME = "manifest.csv"  # what synth_sbi writes in its output folder
MANIFEST_COLUMNS = ("path", "label", "mask", "sheet", "source", "blend_ratio", "hull")


@dataclass(frozen=True)
class SBIFace:
    """A real face to blend: its crop file and its (68, 2) landmarks in that crop's pixels."""

    path: Path
    landmarks: np.ndarray


def _manifest_file(path: Path) -> Path:
    return path / MANIFEST_NAME if path.is_dir() else path


def _faces_from_manifests(
    inputs: Sequence[Path], reader: Callable[[Path], Sequence[Any]]
) -> tuple[list[SBIFace], int]:
    """Real faces with landmarks from face manifests, and how many records were skipped."""
    faces: list[SBIFace] = []
    skipped = 0
    for given in inputs:
        manifest = _manifest_file(Path(given))
        if not manifest.is_file():
            raise RealfaceError(f"{given}: no face manifest there; run `realface preprocess` first")
        for record in reader(manifest):
            label = getattr(record, "label", None)
            if record.landmarks is None or (label not in (None, "", "real")):
                skipped += 1  # SBI blends real faces only, and needs their landmarks
                continue
            faces.append(SBIFace(manifest.parent / record.path, np.asarray(record.landmarks, np.float64)))
    return faces, skipped


def _write(path: Path, rgb: np.ndarray) -> None:
    image = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR) if rgb.ndim == 3 else rgb
    if not cv2.imwrite(str(path), image):
        raise RealfaceError(f"{path}: cannot write the file")


def contact_sheet(real: np.ndarray, fake: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Side by side real | fake | mask (white = source weight 1): (H, 3W, 3) uint8 RGB."""
    grey = np.rint(np.clip(mask, 0.0, 1.0) * 255).astype(np.uint8)
    return np.hstack([real, fake, np.repeat(grey[..., None], 3, axis=2)])


def synth_sbi_faces(
    faces: Sequence[SBIFace],
    out: Path,
    *,
    count: int | None,
    seed: int,
    config: SBIConfig,
    progress: bool = True,
) -> int:
    """Blend `count` pseudo-fakes (default: one per face, cycling over faces when more) into `out`.

    For fake number i, named NAME = f"{i:06d}_{crop stem}", writes NAME_fake.png, NAME_mask.png (blend
    weight x 255) and NAME_sheet.jpg (real | fake | mask), then `out/manifest.csv` listing them
    (columns MANIFEST_COLUMNS, paths relative to `out`). Fake i uses the generator seeded (seed, i), so
    it does not depend on the others. A face that cannot be read or blended is reported and skipped.
    Returns the number of fakes written.
    """
    if not faces:
        raise RealfaceError("no real face with landmarks to blend")
    n = len(faces) if count is None else count
    if n < 1:
        raise RealfaceError(f"--count must be at least 1, got {n}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, str]] = []
    errors: list[str] = []
    for i in tqdm(range(n), desc="synth-sbi", unit="face", disable=not progress):
        face = faces[i % len(faces)]
        name = f"{i:06d}_{face.path.stem}"
        try:
            real = read_rgb(face.path)
            result = self_blend(real, face.landmarks, np.random.default_rng([seed, i]), config)
        except InputError as err:
            errors.append(f"{face.path}: {err}")
            continue
        _write(out / f"{name}_fake.png", result.fake)
        _write(out / f"{name}_mask.png", np.rint(result.mask * 255).astype(np.uint8))
        _write(out / f"{name}_sheet.jpg", contact_sheet(real, result.fake, result.mask))
        rows.append(
            {
                "path": f"{name}_fake.png",
                "label": "fake",
                "mask": f"{name}_mask.png",
                "sheet": f"{name}_sheet.jpg",
                "source": str(face.path),
                "blend_ratio": f"{result.ratio:.4f}",
                "hull": result.hull,
            }
        )
    with open(out / MANIFEST_NAME, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=MANIFEST_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    for message in errors:
        tqdm.write(f"skipped {message}")
    if not rows:
        raise RealfaceError(f"no pseudo-fake could be made ({len(errors)} faces failed)")
    return len(rows)


def synth_sbi(
    inputs: list[Path],
    out: Path,
    *,
    count: int | None,
    seed: int,
    config: SBIConfig,
    progress: bool = True,
    reader: Callable[[Path], Sequence[Any]] | None = None,
) -> int:
    """Pseudo-fakes from the real faces of `realface preprocess` manifests (files, or folders holding one).

    Records without landmarks or with a label other than "real" are skipped. `reader` reads one manifest
    into records with `path` (relative to the manifest's folder, or absolute), `landmarks` and `label`;
    it defaults to realface.faces.manifest.read_face_manifest. See `synth_sbi_faces` for what is written.
    Returns the number of fakes written.
    """
    if reader is None:
        from realface.faces.manifest import read_face_manifest

        reader = read_face_manifest
    faces, skipped = _faces_from_manifests(inputs, reader)
    if not faces:
        raise RealfaceError(f"no real face with landmarks in {', '.join(map(str, inputs))} ({skipped} skipped)")
    return synth_sbi_faces(faces, out, count=count, seed=seed, config=config, progress=progress)
