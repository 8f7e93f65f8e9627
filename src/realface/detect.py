"""Detection on images and videos: faces found and cropped the way the model was trained, scored in batches,
turned into verdicts with the model's stored threshold and confidence band, and explained with heatmaps.

`Scanner` is shared by `realface detect`, `realface evaluate` and `realface serve`, so all give the same answer.
It runs on whatever engine the model has (`realface.model`: ONNX Runtime by default, no torch import).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from realface.errors import InputError, RealfaceError
from realface.eval.thresholds import decide, distance_confidence, video_verdict
from realface.faces.media import DEFAULT_LIMITS, read_image
from realface.faces.pipeline import Face, FacePipeline, PipelineConfig
from realface.faces.sniff import Content, media_kind, sniff_file, unsupported_message
from realface.limits import DecodeLimits
from realface.model import Model, finish_map
from realface.preprocessing import normalize

TOP_FRAMES = 3  # frames listed as "the frames that drove" a video verdict
VIDEO_BATCH = 8  # a video's faces are scored this many at a time while its later frames decode
ARRAYS = ("overlay", "sheet")  # in-memory images of a result, left out of its JSON


@dataclass
class FaceResult:
    frame: int  # video frame index; -1 for an image
    face: int  # index of the face in the image (0 for the main face of a video)
    bbox: list[float]  # x0, y0, x1, y1 in source pixels
    p_fake: float  # the model's probability that the face is forged
    confidence: float  # in [0, 1]: evidential 1 - u, or distance of p_fake from the threshold
    verdict: str  # "real", "fake" or "uncertain"
    heatmap: str | None = None  # path of the overlay PNG, with --heatmap
    found_by: str = ""  # the step of the face pipeline that found the face (realface.faces.pipeline.FOUND_BY)
    overlay: np.ndarray | None = field(default=None, repr=False, compare=False)  # (S, S, 3) uint8 RGB heatmap on the crop


@dataclass
class FileResult:
    path: str
    kind: str  # "image" or "video"
    status: str  # "ok", "no_face" (read fine, no face found) or "error" (could not be read)
    message: str = ""
    p_fake: float | None = None  # image: max over faces; video: confidence-weighted mean over frames
    confidence: float | None = None
    verdict: str | None = None  # "real", "fake", "uncertain"; None when there is no face
    faces: list[FaceResult] = field(default_factory=list)
    frames_sampled: int = 0  # videos: frames sampled
    frames_without_face: list[int] = field(default_factory=list)  # videos: sampled frames with no main face
    top_frames: list[int] = field(default_factory=list)  # videos: the frames that drove the verdict
    contact_sheet: str | None = None  # videos with --heatmap: all frames' overlays in one image
    sheet: np.ndarray | None = field(default=None, repr=False, compare=False)  # that image, (H, W, 3) uint8 RGB

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: every field but the in-memory images."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ARRAYS}
        out["faces"] = [{f.name: getattr(face, f.name) for f in fields(face) if f.name not in ARRAYS} for face in self.faces]
        out["frames_without_face"] = list(self.frames_without_face)
        out["top_frames"] = list(self.top_frames)
        return out


def overlay(crop: np.ndarray, heat: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """Crop (S, S, 3) uint8 RGB with a JET-coloured heat map (h, w) in [0, 1] blended over it."""
    heat = cv2.resize(heat.astype(np.float32), (crop.shape[1], crop.shape[0]), interpolation=cv2.INTER_LINEAR)
    colour = cv2.applyColorMap(np.clip(heat * 255, 0, 255).astype(np.uint8), cv2.COLORMAP_JET)[..., ::-1]
    return np.clip(crop * (1 - alpha) + colour * alpha, 0, 255).astype(np.uint8)


def contact_sheet(tiles: list[np.ndarray], captions: list[str], columns: int = 8) -> np.ndarray:
    """Tiles (S, S, 3) uint8 in a grid, each with its caption; (rows*S, columns*S, 3) uint8 RGB."""
    size = tiles[0].shape[0]
    rows = (len(tiles) + columns - 1) // columns
    sheet = np.zeros((rows * size, columns * size, 3), np.uint8)
    for i, (tile, text) in enumerate(zip(tiles, captions)):
        r, c = divmod(i, columns)
        tile = tile.copy()
        cv2.putText(tile, text, (3, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (255, 255, 255), 1, cv2.LINE_AA)
        sheet[r * size : (r + 1) * size, c * size : (c + 1) * size] = tile
    return sheet


def _write_rgb(path: Path, rgb: np.ndarray) -> str:
    """Write an RGB image as PNG (lossless: a heatmap's colours are its values); returns the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
        raise RealfaceError(f"could not write {path}")
    return str(path)


class Scanner:
    """Scores the faces of images and videos with one loaded model."""

    def __init__(
        self,
        model: Model,
        *,
        frames: int = 32,
        batch_size: int = 32,
        heatmap_dir: Path | None = None,
        heatmaps: bool = False,
        assume_cropped: bool = False,
        limits: DecodeLimits = DEFAULT_LIMITS,
    ) -> None:
        """heatmaps: draw each face's heatmap over its crop (results' `overlay`, videos' `sheet`); heatmap_dir:
        that, and written there as PNG files (the results name them). assume_cropped: an image with no detected
        face is taken as a face crop (for data sets of crops). limits: what decoding one input may cost (pixels,
        memory; `scan` can pass per-call limits instead)."""
        self.model = model
        self.limits = limits
        self.batch_size = batch_size
        self.heatmap_dir = Path(heatmap_dir) if heatmap_dir is not None else None
        self.heatmaps = heatmaps or heatmap_dir is not None
        if self.heatmaps and model.engine.map_kind is None:
            raise RealfaceError(
                f"this model's heatmaps need gradients, which its {model.engine.name} engine has not: use --backend torch"
            )
        self.pipeline = FacePipeline(
            PipelineConfig.for_crop(model.pre.crop, frames=frames, assume_cropped=assume_cropped)
        )

    # -- scoring -------------------------------------------------------------------------------

    def _inputs(self, crops: list[np.ndarray]) -> np.ndarray:
        """(N, 3, S, S) float32 model input from crops (any side)."""
        pre = self.model.pre
        size = pre.img_size
        views = [c if c.shape[0] == size else cv2.resize(c, (size, size), interpolation=cv2.INTER_AREA) for c in crops]
        return np.stack([normalize(v, pre) for v in views])

    def score(self, crops: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, list[np.ndarray] | None]:
        """p(fake) (N,), confidence (N,), and with heatmaps on, heat maps (N of (S, S) in [0, 1], each at its
        crop's resolution).

        crops: aligned face crops (S, S, 3) uint8 RGB, as the face pipeline makes them.
        """
        engine, decision = self.model.engine, self.model.decision
        probs, conf, heats = [], [], []
        for start in range(0, len(crops), self.batch_size):
            chunk = crops[start : start + self.batch_size]
            pred = engine.run(self._inputs(chunk), maps=self.heatmaps)
            p = decision.calibrate(pred.prob_fake.astype(np.float32))
            if decision.confidence == "evidential" and pred.uncertainty is not None:
                c = 1.0 - pred.uncertainty.astype(np.float32)
            else:
                c = distance_confidence(p, decision.threshold)
            probs.append(p)
            conf.append(c)
            if self.heatmaps:
                heats.extend(finish_map(m, engine.map_kind, crop.shape[0]) for m, crop in zip(pred.maps, chunk))
        return np.concatenate(probs), np.concatenate(conf), (heats if self.heatmaps else None)

    def _verdicts(self, probs: np.ndarray, conf: np.ndarray) -> list[str]:
        d = self.model.decision
        return [str(v) for v in decide(probs, d.threshold, conf, d.band)]

    # -- inputs --------------------------------------------------------------------------------

    def scan(self, path: Path, display_name: str | None = None) -> FileResult:
        """One image or video file, read as its content says (not its name); unreadable input (over the
        limits included) gives status "error" with a one-line message."""
        path = Path(path)
        name = display_name or str(path)
        kind = media_kind(path)
        try:
            content = sniff_file(path)
            kind = content.kind
            return self.scan_content(path, name, content)
        except InputError as err:
            return FileResult(path=name, kind=kind, status="error", message=str(err))

    def scan_content(
        self, path: Path, name: str, content: Content, limits: DecodeLimits | None = None
    ) -> FileResult:
        """One file whose content `sniff_file` told; raises InputError, and LimitError over `limits`
        (default: the scanner's), for the caller to report."""
        limits = limits or self.limits
        if content.kind == "image":
            rgb = read_image(path, limits)
            limits.check_time()
            return self.scan_image(rgb, name)
        if content.kind == "video":
            return self.scan_video(path, name, limits)
        raise InputError(unsupported_message(content))

    def scan_image(self, rgb: np.ndarray, name: str) -> FileResult:
        faces = sorted(self.pipeline.faces_in_image(rgb), key=lambda f: (f.bbox[0], f.bbox[1]))  # left to right
        if not faces:
            return FileResult(path=name, kind="image", status="no_face", message="no face found")
        probs, conf, heats = self.score([f.crop for f in faces])
        verdicts = self._verdicts(probs, conf)
        results = [
            FaceResult(
                -1, i, [round(float(v), 1) for v in face.bbox], float(probs[i]), float(conf[i]), verdicts[i],
                found_by=face.found_by, overlay=None if heats is None else overlay(face.crop, heats[i]),
            )  # fmt: skip
            for i, face in enumerate(faces)
        ]
        if self.heatmap_dir is not None:
            for r in results:
                r.heatmap = _write_rgb(self._heat_path(name, f"face{r.face}"), r.overlay)
        top = int(np.argmax(probs))  # an image is as fake as its most suspicious face
        return FileResult(
            path=name, kind="image", status="ok", p_fake=float(probs[top]), confidence=float(conf[top]),
            verdict=verdicts[top], faces=results,
        )  # fmt: skip

    def scan_video(self, path: Path, name: str, limits: DecodeLimits | None = None) -> FileResult:
        limits = limits or self.limits
        scores = FaceScores(self, VIDEO_BATCH)  # faces are scored while later frames decode
        frames = self.pipeline.faces_in_video(path, limits, found=scores.add)
        limits.check_time()
        with_face = [f for f in frames if f.face is not None]
        missing = [f.frame for f in frames if f.face is None]
        if not with_face:
            return FileResult(
                path=name, kind="video", status="no_face", message="no face found in any sampled frame",
                frames_sampled=len(frames), frames_without_face=missing,
            )  # fmt: skip
        probs, conf, heats = scores.of([f.face for f in with_face])
        verdicts = self._verdicts(probs, conf)
        results = [
            FaceResult(
                f.frame, 0, [round(float(v), 1) for v in f.face.bbox], float(p), float(c), v, found_by=f.face.found_by,
                overlay=None if heats is None else overlay(f.face.crop, heats[i]),
            )  # fmt: skip
            for i, (f, p, c, v) in enumerate(zip(with_face, probs, conf, verdicts))
        ]
        d = self.model.decision
        video = video_verdict(probs, conf, d.threshold, d.band, d.confidence == "evidential", TOP_FRAMES)
        sheet = None
        if heats is not None:
            sheet = contact_sheet([r.overlay for r in results], [f"#{r.frame} p={r.p_fake:.2f}" for r in results])
        sheet_path = None
        if self.heatmap_dir is not None:
            for r in results:
                r.heatmap = _write_rgb(self._heat_path(name, f"frame{r.frame:05d}"), r.overlay)
            sheet_path = _write_rgb(self._heat_path(name, "sheet"), sheet)
        return FileResult(
            path=name, kind="video", status="ok", p_fake=video.score, confidence=video.confidence, verdict=video.verdict,
            faces=results, frames_sampled=len(frames), frames_without_face=missing,
            top_frames=[int(with_face[i].frame) for i in video.drivers], contact_sheet=sheet_path, sheet=sheet,
        )  # fmt: skip

    def _heat_path(self, name: str, suffix: str) -> Path:
        """DIR/<file name>_<hash of the full path>_<suffix>.png: files of the same name never collide."""
        assert self.heatmap_dir is not None
        stem = Path(name).name.replace(".", "_") or "input"
        digest = hashlib.sha1(name.encode()).hexdigest()[:6]
        return self.heatmap_dir / f"{stem}_{digest}_{suffix}.png"


class FaceScores:
    """Scores faces as they come, `batch` at a time (a video's faces while its later frames are decoded), and
    looks them up afterwards; a face asked for and not yet scored is scored then."""

    def __init__(self, scanner: Scanner, batch: int) -> None:
        self.scanner = scanner
        self.batch = batch
        self.pending: list[Face] = []
        self.scored: dict[int, tuple[Face, float, float, np.ndarray | None]] = {}  # by id(face)

    def add(self, faces: list[Face]) -> None:
        self.pending.extend(faces)
        if len(self.pending) >= self.batch:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        probs, conf, heats = self.scanner.score([f.crop for f in self.pending])
        for i, face in enumerate(self.pending):
            self.scored[id(face)] = (face, float(probs[i]), float(conf[i]), None if heats is None else heats[i])
        self.pending = []

    def of(self, faces: list[Face]) -> tuple[np.ndarray, np.ndarray, list[np.ndarray] | None]:
        """p(fake), confidence and heat maps (or None) of `faces`, as `Scanner.score` gives them."""
        self.pending.extend(f for f in faces if id(f) not in self.scored)
        self.flush()
        rows = [self.scored[id(f)] for f in faces]
        probs = np.array([r[1] for r in rows], dtype=np.float32)
        conf = np.array([r[2] for r in rows], dtype=np.float32)
        return probs, conf, (None if not self.scanner.heatmaps else [r[3] for r in rows])


def check_output_folder(path: Path, option: str) -> None:
    """RealfaceError unless `path` is a writable folder or could be made one; creates nothing (checked before
    any work, so that a scan never runs to fail at its end)."""
    import os

    path = Path(path)
    if path.exists():
        if not path.is_dir():
            raise RealfaceError(f"{option} {path} is a file, not a folder")
        if not os.access(path, os.W_OK | os.X_OK):
            raise RealfaceError(f"{option} {path} is not writable")
        return
    parent = path.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise RealfaceError(f"{option} {path} cannot be created: {parent} is a file")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise RealfaceError(f"{option} {path} cannot be created: {parent} is not writable")


# -- the command ---------------------------------------------------------------------------------


def collect_inputs(paths: list[str]) -> list[Path | FileResult]:
    """Files behind the arguments, in order: files as given (whatever their name: content decides), folders
    recursively (files with an image or video suffix); an argument that names nothing readable (missing, or a
    folder without media) becomes an error result in its place."""
    from realface.faces.media import MEDIA_SUFFIXES

    items: list[Path | FileResult] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in MEDIA_SUFFIXES)
            items.extend(found or [FileResult(str(path), "folder", "error", "no image or video files in folder")])
        elif path.is_file():
            items.append(path)
        else:
            items.append(FileResult(str(path), media_kind(path), "error", "input not found"))
    return items


def detect_paths(scanner: Scanner, items: list[Path | FileResult], progress: bool = True) -> list[FileResult]:
    """Each input scanned (an error result from `collect_inputs` passes through)."""
    from tqdm import tqdm

    results = []
    for item in tqdm(items, desc="detect", unit="file", disable=not progress or len(items) < 2):
        results.append(item if isinstance(item, FileResult) else scanner.scan(item))
    return results


def format_table(results: list[FileResult]) -> str:
    """A readable table: one line per file, then one indented line per face; a heatmap column when any was
    written (an image's heatmap on its line when it has one face, a video's contact sheet on its line)."""
    heat = any(r.contact_sheet or any(f.heatmap for f in r.faces) for r in results)
    rows = [("file", "kind", "faces", "found by", "p(fake)", "confidence", "verdict") + (("heatmap",) if heat else ())]

    def add(*cells: str, heatmap: str | None = None) -> None:
        rows.append(cells + ((heatmap or "",) if heat else ()))

    for r in results:
        if r.status != "ok":
            add(r.path, r.kind, "0", "-", "-", "-", "error: " + r.message if r.status == "error" else r.message)
            continue
        found_by = ",".join(dict.fromkeys(f.found_by for f in r.faces))  # each path once, in order
        one_face = r.kind == "image" and len(r.faces) == 1
        add(r.path, r.kind, str(len(r.faces)), found_by, f"{r.p_fake:.3f}", f"{r.confidence:.2f}", r.verdict.upper(),
            heatmap=r.faces[0].heatmap if one_face else r.contact_sheet)  # fmt: skip
        if r.kind == "image" and len(r.faces) > 1:
            for f in r.faces:
                at = f"  face {f.face} at {[int(v) for v in f.bbox]}"
                add(at, "", "", f.found_by, f"{f.p_fake:.3f}", f"{f.confidence:.2f}", f.verdict, heatmap=f.heatmap)
        if r.kind == "video":
            add(f"  {len(r.faces)}/{r.frames_sampled} frames with a face; driven by frames {r.top_frames}", *[""] * 6)
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)


CSV_COLUMNS = (
    "path", "kind", "status", "frame", "face", "x0", "y0", "x1", "y1", "p_fake", "confidence", "verdict", "found_by",
    "heatmap", "message",
)  # fmt: skip


def csv_rows(results: list[FileResult]) -> list[dict[str, Any]]:
    """One row per face (and one per file without a face), for `--csv`."""
    rows = []
    for r in results:
        if not r.faces:
            rows.append({"path": r.path, "kind": r.kind, "status": r.status, "message": r.message})
        for f in r.faces:
            x0, y0, x1, y1 = f.bbox
            rows.append({
                "path": r.path, "kind": r.kind, "status": r.status, "frame": f.frame, "face": f.face,
                "x0": x0, "y0": y0, "x1": x1, "y1": y1, "p_fake": round(f.p_fake, 6),
                "confidence": round(f.confidence, 6), "verdict": f.verdict, "found_by": f.found_by,
                "heatmap": f.heatmap or "", "message": r.message,
            })  # fmt: skip
    return rows
