"""Read what `realface preprocess` wrote, so training never detects faces again.

`read_face_manifest` accepts:
- a face manifest CSV (`manifest.csv` or a shard's `manifest.shard{i}of{n}.csv`);
- a preprocess output folder: all its `manifest*.csv` files, shards merged;
- WebDataset tar shards written by `realface preprocess --format webdataset` (`<key>.jpg` + `<key>.json`),
  or a folder of them: each face is read straight from the tar by its byte offset (`FaceRecord.offset`);
- a plain folder of face crops (images, searched recursively) with no manifest: each image is one face
  with `landmarks` None (region masks then need landmarks found some other way), label taken from a
  `real`/`fake` folder name on its path when there is one, else "".
"""

from __future__ import annotations

import csv
import json
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from realface.errors import RealfaceError
from realface.faces.align import CropSettings
from realface.faces.media import IMAGE_SUFFIXES

SETTINGS_FILE = "preprocess.json"  # written by `realface preprocess` next to its manifest

_FIXED = ("path", "source", "frame", "face", "x0", "y0", "x1", "y1", "score", "landmarks", "label")
_LABEL_FOLDERS = ("real", "fake")


@dataclass(frozen=True)
class FaceRecord:
    """One aligned face crop and what preprocess knew about it."""

    path: Path  # the crop, absolute
    landmarks: np.ndarray | None  # (68, 2) float32 crop pixels; None for a plain folder of crops
    label: str = ""
    source: str = ""  # the image or video it came from
    frame: int = -1  # video frame index; -1 for an image
    face: int = 0  # index of the face within its frame or image (preprocess numbers them 0, 1, ...)
    extra: dict[str, str] = field(default_factory=dict)  # other columns carried from the input manifest
    offset: int = -1  # byte offset of the JPEG inside `path` when `path` is a tar shard; -1 = a plain file
    size: int = 0  # byte size of that JPEG


def parse_landmarks(text: str) -> np.ndarray:
    """"x0 y0 x1 y1 ..." -> (68, 2) float32."""
    values = np.array(text.split(), dtype=np.float32)
    if values.size != 136:
        raise ValueError(f"expected 136 landmark numbers, got {values.size}")
    return values.reshape(68, 2)


def _read_csv(path: Path) -> list[FaceRecord]:
    records = []
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames is None or "path" not in reader.fieldnames:
            raise RealfaceError(f"{path}: not a face manifest (no 'path' column)")
        for line, row in enumerate(reader, start=2):
            try:
                landmarks = parse_landmarks(row["landmarks"]) if row.get("landmarks") else None
                frame = int(row.get("frame") or -1)
                face = int(row.get("face") or 0)
            except ValueError as err:
                raise RealfaceError(f"{path}:{line}: {err}") from None
            records.append(
                FaceRecord(
                    path=(path.parent / row["path"]).absolute(),
                    landmarks=landmarks,
                    label=row.get("label") or "",
                    source=row.get("source") or "",
                    frame=frame,
                    face=face,
                    extra={k: v or "" for k, v in row.items() if k not in _FIXED and k is not None},
                )
            )
    return records


def _read_tar(path: Path) -> list[FaceRecord]:
    """Faces of one WebDataset shard: `<key>.json` (a manifest row, landmarks as a list) + `<key>.jpg`."""
    try:
        with tarfile.open(path) as tar:
            members = {m.name: m for m in tar.getmembers() if m.isfile()}
            records = []
            for name, member in members.items():
                image = members.get(name[: -len(".json")] + ".jpg") if name.endswith(".json") else None
                if image is None:
                    continue
                meta = json.load(tar.extractfile(member))
                landmarks = meta.get("landmarks")
                records.append(
                    FaceRecord(
                        path=path.absolute(),
                        landmarks=np.asarray(landmarks, np.float32).reshape(68, 2) if landmarks else None,
                        label=str(meta.get("label") or ""),
                        source=str(meta.get("source") or ""),
                        frame=int(meta.get("frame") or -1),
                        face=int(meta.get("face") or 0),
                        extra={k: str(v) for k, v in meta.items() if k not in _FIXED},
                        offset=image.offset_data,
                        size=image.size,
                    )
                )
    except (tarfile.TarError, json.JSONDecodeError, ValueError) as err:
        raise RealfaceError(f"{path}: not a readable face shard ({err})") from None
    return sorted(records, key=lambda r: r.offset)


def _label_from_path(path: Path) -> str:
    for part in reversed(path.parts[:-1]):
        if part.lower() in _LABEL_FOLDERS:
            return part.lower()
    return ""


def read_face_manifest(path: Path) -> list[FaceRecord]:
    """Face records from a manifest file, a preprocess output folder, or a plain folder of crops."""
    path = Path(path)
    if path.is_file():
        return _read_tar(path) if path.suffix == ".tar" else _read_csv(path)
    if not path.is_dir():
        raise RealfaceError(f"face manifest or folder not found: {path}")
    manifests = sorted(path.glob("manifest*.csv"))
    if manifests:
        return [record for manifest in manifests for record in _read_csv(manifest)]
    shards = sorted(path.glob("*.tar"))
    if shards:
        return [record for shard in shards for record in _read_tar(shard)]
    crops = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not crops:
        raise RealfaceError(f"{path}: no manifest*.csv and no face images")
    return [FaceRecord(path=p.absolute(), landmarks=None, label=_label_from_path(p.relative_to(path))) for p in crops]


def crop_settings_file(path: Path, levels: int = 4) -> Path | None:
    """The preprocess.json of the preprocess output that holds `path` (a crop, shard or manifest), if any."""
    folder = Path(path).absolute()
    folder = folder if folder.is_dir() else folder.parent
    for _ in range(levels):
        if (folder / SETTINGS_FILE).is_file():
            return folder / SETTINGS_FILE
        folder = folder.parent
    return None


def read_crop_settings(settings_file: Path) -> CropSettings:
    """The crop settings a preprocess run recorded ("crop", or those of its "pipeline" in older runs)."""
    try:
        data = json.loads(Path(settings_file).read_text(encoding="utf-8"))
        if "crop" in data:
            return CropSettings.from_dict(data["crop"])
        pipe = data["pipeline"]
        return CropSettings(size=int(pipe["crop_size"]), margin=float(pipe["margin"]), detector=str(pipe["detector"]))
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise RealfaceError(f"{settings_file}: unreadable crop settings ({err})") from None


def crop_settings_of(records: list[FaceRecord]) -> CropSettings | None:
    """The one crop setting every record was made with, from the preprocess.json of the run that made it; None
    when no record comes from a preprocess run (plain folders of crops). Records made with different settings,
    or some with and some without, raise RealfaceError: a model must be trained on crops made one way."""
    by_file: dict[Path | None, CropSettings | None] = {}
    for folder in {r.path.parent for r in records}:
        file = crop_settings_file(folder)
        if file not in by_file:
            by_file[file] = read_crop_settings(file) if file is not None else None
    settings = set(by_file.values())
    if len(settings) > 1:
        shown = "; ".join(f"{f or 'no preprocess.json'}: {c}" for f, c in sorted(by_file.items(), key=lambda kv: str(kv[0])))
        raise RealfaceError(f"the training faces were cropped in different ways ({shown}); preprocess them alike")
    return next(iter(settings)) if settings else None
