"""`realface preprocess`: turn images and videos into aligned face crops, landmarks and a manifest.

Output folder (`suffix` is empty, or `.shard{i}of{n}` with --shard i/n so shards can share a folder):
- `crops/xx/<name>.jpg`: the aligned crops (JPEG quality 95);
- `manifest{suffix}.csv`: one row per face: path (crop, relative to the folder), source, frame (-1 for
  images), face (index in the image, largest first; 0 for a video's main face), x0, y0, x1, y1 (box in
  source pixels), score (detector; for a whole-image box the HOG score of its fit; -1 for a box assumed
  under --assume-cropped), landmarks (68 x, y crop pixels, space separated, 0.1 px), label, found_by (the
  step of the face pipeline that found the face: hog, hog-padded, cnn, whole-image, or assumed), then every
  extra column of the input manifests;
- `errors{suffix}.csv`: source, message: one line per input that gave no face at all;
- `no_face{suffix}.csv`: source, frame, reason: sampled video frames where the main face is missing
  (kept apart from the manifest, whose every row is a crop);
- `journal{suffix}.jsonl`: append-only record of every finished input, flushed to disk after each one.
  A re-run skips inputs already in it; the CSV files above are rebuilt from it (atomically) at the end;
- `preprocess.json`: the pipeline settings; a re-run with other settings into the same folder is refused;
- with `--format webdataset`, also `faces{suffix}-000000.tar`, ...: each face as `<key>.jpg` and
  `<key>.json` (the manifest row, landmarks as a list), 5,000 faces a shard.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import os
import re
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from realface.errors import InputError, RealfaceError
from realface.faces.media import MediaItem, expand_inputs
from realface.faces.pipeline import FacePipeline, PipelineConfig, no_face_message

FORMATS: tuple[str, ...] = ("folder", "webdataset")
MANIFEST_COLUMNS: tuple[str, ...] = (
    "path", "source", "frame", "face", "x0", "y0", "x1", "y1", "score", "landmarks", "label", "found_by",
)  # fmt: skip
JPEG_QUALITY = 95
FACES_PER_TAR = 5000


@dataclass(frozen=True)
class PreprocessReport:
    """What a preprocess run did; counts of faces, frames and errors cover the whole journal."""

    out: Path
    manifest: Path
    errors_file: Path
    inputs: int  # inputs selected (after --shard)
    skipped: int  # of those, already done by an earlier run
    processed: int  # done by this run
    inputs_ok: int  # inputs in the journal with at least one face
    faces: int  # rows of the manifest
    no_face_frames: int  # sampled video frames without the main face
    errors: int  # inputs without any face, or unreadable
    tars: tuple[Path, ...] = ()

    @property
    def ok(self) -> bool:
        """False when nothing at all could be processed."""
        return self.inputs_ok > 0

    def summary(self) -> str:
        lines = [
            f"inputs: {self.inputs} selected, {self.skipped} already done, {self.processed} processed now",
            f"faces: {self.faces} from {self.inputs_ok} inputs; video frames without a face: {self.no_face_frames}",
            f"errors: {self.errors}" + (f" (see {self.errors_file})" if self.errors else ""),
            f"output: {self.manifest}" + (f" and {len(self.tars)} webdataset tar shard(s)" if self.tars else ""),
        ]
        if not self.ok:
            lines.append("nothing could be processed")
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# one input -> one journal record


def crop_name(source: str, frame: int, face: int) -> str:
    """Crop path relative to the output folder, unique per (source, frame, face), with no dots in its stem."""
    digest = hashlib.sha1(source.encode()).hexdigest()
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", Path(source).stem)[:60]
    frame_part = f"_f{frame:06d}" if frame >= 0 else ""
    return f"crops/{digest[:2]}/{stem}-{digest[2:10]}{frame_part}_{face}.jpg"


def format_landmarks(landmarks) -> str:
    """(68, 2) -> "x0 y0 x1 y1 ..." rounded to 0.1 px."""
    return " ".join(f"{v:.1f}" for v in landmarks.reshape(-1).tolist())


def _face_row(pipeline_face, source: str, frame: int, index: int, out: Path) -> dict:
    import cv2

    rel = crop_name(source, frame, index)
    path = out / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    bgr = cv2.cvtColor(pipeline_face.crop, cv2.COLOR_RGB2BGR)
    if not cv2.imwrite(str(path), bgr, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]):
        raise RealfaceError(f"cannot write {path}")
    x0, y0, x1, y1 = pipeline_face.bbox
    return {
        "path": rel,
        "frame": frame,
        "face": index,
        "x0": round(x0, 1),
        "y0": round(y0, 1),
        "x1": round(x1, 1),
        "y1": round(y1, 1),
        "score": round(pipeline_face.score, 4),
        "landmarks": format_landmarks(pipeline_face.landmarks),
        "found_by": pipeline_face.found_by,
    }


def process_item(pipeline: FacePipeline, item: MediaItem, out: Path) -> dict:
    """Faces of one input written as crops; returns its journal record (errors recorded, not raised)."""
    from realface.faces.media import read_image

    source = str(item.path)
    record: dict = {"source": source, "label": item.label, "extra": item.extra, "faces": [], "no_face": []}
    try:
        if item.kind == "image":
            rgb = read_image(item.path)
            faces = pipeline.faces_in_image(rgb)
            if not faces:
                raise InputError(no_face_message(rgb.shape[0], rgb.shape[1], pipeline.config))
            record["faces"] = [_face_row(f, source, -1, k, out) for k, f in enumerate(faces)]
        elif item.kind == "video":
            frames = pipeline.faces_in_video(item.path)
            if all(f.face is None for f in frames):
                decodable = sum(f.note != "frame not decodable" for f in frames)
                raise InputError(f"no face found in any of the {decodable} sampled frames")
            record["faces"] = [_face_row(f.face, source, f.frame, 0, out) for f in frames if f.face is not None]
            record["no_face"] = [{"frame": f.frame, "reason": f.note} for f in frames if f.face is None]
        else:
            raise InputError(f"unsupported file type {item.path.suffix or '(none)'!r}")
    except InputError as err:
        record["error"] = str(err)
    except (RealfaceError, MemoryError) as err:
        record["error"] = f"{type(err).__name__}: {err}"
    return record


# Worker-process state: one pipeline (models loaded once) per worker process.
_WORKER: tuple[FacePipeline, Path] | None = None


def _init_worker(config: PipelineConfig, out: Path) -> None:
    global _WORKER
    _WORKER = (FacePipeline(config), out)


def _work(item: MediaItem) -> dict:
    assert _WORKER is not None, "worker not initialised"
    pipeline, out = _WORKER
    try:
        return process_item(pipeline, item, out)
    except Exception as err:  # keep the run going; the message names the failure
        message = " ".join(str(err).split())
        return {"source": str(item.path), "label": item.label, "extra": item.extra, "faces": [], "no_face": [],
                "error": f"unexpected {type(err).__name__}: {message}"}  # fmt: skip


# ---------------------------------------------------------------------------------------------
# journal and outputs


class Journal:
    """Append-only JSON-lines file of finished inputs; each line is flushed and synced when written."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.records: dict[str, dict] = {}
        if path.exists():
            text = path.read_text(encoding="utf-8")
            for line in text.splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut short by an interruption: that input is simply redone
                self.records[record["source"]] = record
            needs_newline = bool(text) and not text.endswith("\n")
        else:
            needs_newline = False
        self._fh = path.open("a", encoding="utf-8")
        if needs_newline:
            self._fh.write("\n")

    def add(self, record: dict) -> None:
        self.records[record["source"]] = record
        self._fh.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        self._fh.close()


def _write_csv_atomic(path: Path, columns: list[str], rows: list[dict]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


def manifest_rows(records: list[dict]) -> tuple[list[str], list[dict]]:
    """Columns and rows of the face manifest from journal records (sorted by source)."""
    extra_columns: list[str] = []
    for record in records:
        for key in record.get("extra", {}):
            if key not in extra_columns and key not in MANIFEST_COLUMNS:
                extra_columns.append(key)
    rows = []
    for record in records:
        for face in record["faces"]:
            rows.append({**record.get("extra", {}), **face, "source": record["source"], "label": record["label"]})
    return list(MANIFEST_COLUMNS) + extra_columns, rows


def _write_tars(out: Path, suffix: str, columns: list[str], rows: list[dict]) -> tuple[Path, ...]:
    """Pack crops and their manifest rows into webdataset tar shards (`<key>.jpg` + `<key>.json`)."""
    for stale in out.glob(f"faces{suffix}-*.tar"):
        stale.unlink()
    tars = []
    for start in range(0, len(rows), FACES_PER_TAR):
        path = out / f"faces{suffix}-{start // FACES_PER_TAR:06d}.tar"
        tmp = path.with_name(path.name + ".tmp")
        with tarfile.open(tmp, "w") as tar:
            for row in rows[start : start + FACES_PER_TAR]:
                key = row["path"][: -len(".jpg")]
                meta = {c: row.get(c, "") for c in columns}
                meta["landmarks"] = [float(v) for v in row["landmarks"].split()]
                tar.add(out / row["path"], arcname=f"{key}.jpg")
                data = json.dumps(meta).encode()
                info = tarfile.TarInfo(f"{key}.json")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        os.replace(tmp, path)
        tars.append(path)
    return tuple(tars)


def _check_settings(out: Path, config: PipelineConfig) -> None:
    """Record the pipeline settings in the folder, or refuse when an earlier run used other ones."""
    path = out / "preprocess.json"
    settings = {"pipeline": dataclasses.asdict(config), "crop": config.crop.to_dict()}
    if path.exists():
        try:
            before = json.loads(path.read_text(encoding="utf-8")).get("pipeline")
        except (json.JSONDecodeError, AttributeError):
            before = None
        if before != settings["pipeline"]:
            raise RealfaceError(
                f"{out} holds faces made with other settings ({path.name}: {before}); use another --out folder"
            )
        return
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(settings, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _results(todo: list[MediaItem], config: PipelineConfig, out: Path, workers: int) -> Iterator[dict]:
    if workers <= 1:
        _init_worker(config, out)
        for item in todo:
            yield _work(item)
        return
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(min(workers, len(todo)), initializer=_init_worker, initargs=(config, out)) as pool:
        yield from pool.imap_unordered(_work, todo, chunksize=1)


# ---------------------------------------------------------------------------------------------


def preprocess(
    inputs: list[Path],
    out: Path,
    *,
    config: PipelineConfig,
    fmt: str = "folder",
    workers: int = 1,
    shard: tuple[int, int] = (0, 1),
    limit: int | None = None,
    progress: bool = True,
) -> PreprocessReport:
    """Detect, align and crop the faces of `inputs` into `out` (see the module docstring for the layout).

    inputs: image or video files, folders (searched recursively), or CSV manifests with a `path` column.
    shard (i, n): process the i-th of every n inputs in sorted order. limit: process at most this many
    inputs not done before. Inputs already in the journal are skipped. Per-input problems go to the
    errors file and the run goes on; raises RealfaceError only for problems with the arguments.
    """
    from tqdm import tqdm

    if fmt not in FORMATS:
        raise RealfaceError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    index, count = shard
    if not 0 <= index < count:
        raise RealfaceError(f"shard needs 0 <= i < n, got {index}/{count}")
    if workers < 1:
        raise RealfaceError(f"workers must be at least 1, got {workers}")
    if limit is not None and limit < 0:
        raise RealfaceError(f"limit must be >= 0, got {limit}")
    items = expand_inputs(list(inputs))[index::count]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _check_settings(out, config)
    suffix = "" if count == 1 else f".shard{index}of{count}"

    journal = Journal(out / f"journal{suffix}.jsonl")
    todo = [item for item in items if str(item.path) not in journal.records]
    skipped = len(items) - len(todo)
    if limit is not None:
        todo = todo[:limit]
    processed = 0
    try:
        if todo:
            with tqdm(total=len(todo), disable=not progress, unit="file", desc="preprocess") as bar:
                for record in _results(todo, config, out, workers):
                    journal.add(record)
                    processed += 1
                    bar.update(1)
    finally:
        journal.close()
        records = [journal.records[key] for key in sorted(journal.records)]
        columns, rows = manifest_rows(records)
        manifest = out / f"manifest{suffix}.csv"
        _write_csv_atomic(manifest, columns, rows)
        errors = [{"source": r["source"], "message": r["error"]} for r in records if r.get("error")]
        _write_csv_atomic(out / f"errors{suffix}.csv", ["source", "message"], errors)
        no_face = [{"source": r["source"], **nf} for r in records for nf in r.get("no_face", [])]
        _write_csv_atomic(out / f"no_face{suffix}.csv", ["source", "frame", "reason"], no_face)
    tars = _write_tars(out, suffix, columns, rows) if fmt == "webdataset" else ()
    return PreprocessReport(
        out=out,
        manifest=manifest,
        errors_file=out / f"errors{suffix}.csv",
        inputs=len(items),
        skipped=skipped,
        processed=processed,
        inputs_ok=sum(1 for r in records if r["faces"]),
        faces=len(rows),
        no_face_frames=len(no_face),
        errors=len(errors),
        tars=tars,
    )
