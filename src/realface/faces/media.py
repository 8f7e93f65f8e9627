"""Inputs of the face pipeline: list media files, read images robustly, sample video frames.

Images are read with Pillow (it reports truncated files, unlike OpenCV) and returned as RGB uint8 in the
orientation their EXIF tag asks for. Videos are decoded with PyAV; frames are addressed by presentation
order (frame 0 is the first frame shown).

Sizes are checked before decoding (`realface.limits.DecodeLimits`): an image's from its header, a video's from
its container and then from each frame's header, which FFmpeg checks before it allocates the frame.
"""

from __future__ import annotations

import csv
import queue
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np

from realface.errors import InputError, RealfaceError
from realface.faces.sniff import IMAGE_SUFFIXES, MEDIA_SUFFIXES, VIDEO_SUFFIXES, media_kind  # noqa: F401
from realface.limits import DecodeLimits

# Pillow format names we accept (MPO is a multi-picture JPEG as written by some cameras).
IMAGE_FORMATS: frozenset[str] = frozenset({"JPEG", "MPO", "PNG", "WEBP", "BMP", "DIB"})
# Larger images and video frames are refused rather than risking the machine's memory (the CLI's limit).
MAX_IMAGE_PIXELS = 200_000_000
DEFAULT_LIMITS = DecodeLimits(max_pixels=MAX_IMAGE_PIXELS)
# How FFmpeg threads its decoding ("AUTO": frame and slice threads, one per core, outside the GIL; "NONE").
DECODE_THREADS = "AUTO"
T = TypeVar("T")


@dataclass(frozen=True)
class MediaItem:
    """One input file; `label` and `extra` come from a CSV manifest (empty otherwise)."""

    path: Path  # absolute
    kind: str  # "image", "video" or "unsupported"
    label: str = ""
    extra: dict[str, str] = field(default_factory=dict)


def _read_manifest(path: Path) -> list[MediaItem]:
    """Rows of a CSV manifest with a `path` column (relative to the manifest's folder)."""
    with path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames is None or "path" not in reader.fieldnames:
            raise RealfaceError(f"{path}: a manifest needs a 'path' column, found {reader.fieldnames}")
        items = []
        for row in reader:
            rel = (row.pop("path") or "").strip()
            if not rel:
                continue
            label = (row.pop("label", "") or "").strip()
            extra = {k: (v or "") for k, v in row.items() if k is not None}
            media = (path.parent / rel).absolute()
            items.append(MediaItem(media, media_kind(media), label, extra))
    return items


def expand_inputs(paths: list[Path]) -> list[MediaItem]:
    """Every media input behind `paths`, sorted by path, each file once (the first mention wins).

    A folder contributes its image and video files, recursively (other files are ignored); a `.csv` file
    is a manifest; any other file is taken as given (an unsupported type is reported when processed).
    Raises RealfaceError when a path does not exist or nothing is found.
    """
    items: list[MediaItem] = []
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise RealfaceError(f"input not found: {path}")
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in MEDIA_SUFFIXES)
            items.extend(MediaItem(p.absolute(), media_kind(p)) for p in files)
        elif path.suffix.lower() == ".csv":
            items.extend(_read_manifest(path))
        else:
            items.append(MediaItem(path.absolute(), media_kind(path)))
    seen: dict[str, MediaItem] = {}
    for item in items:
        seen.setdefault(str(item.path), item)
    if not seen:
        raise RealfaceError(f"no image or video files found in {', '.join(str(p) for p in paths)}")
    return [seen[key] for key in sorted(seen)]


# ---------------------------------------------------------------------------------------------
# images


def _existing_file(path: Path) -> Path:
    """`path` as a Path; InputError for a missing or empty file (checked before any decoder sees it)."""
    path = Path(path)
    if not path.is_file():
        raise InputError("file not found")
    if path.stat().st_size == 0:
        raise InputError("empty file (0 bytes)")
    return path


def _to_rgb8(img: "Image.Image") -> np.ndarray:  # noqa: F821  (PIL imported lazily)
    """Any Pillow mode to (H, W, 3) uint8 RGB; 16-bit and 32-bit grey are scaled, alpha is dropped."""
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        arr = np.asarray(img).astype(np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        grey = np.clip(np.round(arr * (255.0 / top)), 0, 255).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        top = 1.0 if arr.max(initial=0) <= 1.0 else 255.0
        grey = np.clip(np.round(arr * (255.0 / top)), 0, 255).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if img.mode != "RGB":
        img = img.convert("RGBA").convert("RGB") if img.mode in ("P", "PA", "LA") else img.convert("RGB")
    return np.ascontiguousarray(np.asarray(img, dtype=np.uint8))


def read_image(path: Path, limits: DecodeLimits = DEFAULT_LIMITS) -> np.ndarray:
    """Decode an image file to (H, W, 3) uint8 RGB, upright per its EXIF orientation.

    Raises InputError (one line) for a missing, empty, corrupt, truncated or unsupported file, and its
    subclass LimitError for one over `limits` (checked from the header, before decoding).
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = _existing_file(path)
    # Our limit replaces Pillow's "decompression bomb" check (which refuses above 2 x 89 MP, in its own words,
    # before ours could apply): `limits.check_image` below reads the size from the header, before decoding.
    Image.MAX_IMAGE_PIXELS = None
    try:
        with Image.open(path) as img:
            if img.format not in IMAGE_FORMATS:
                raise InputError(f"unsupported image format {img.format}")
            limits.check_image(*img.size, img.mode)
            limits.check_time()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                img.load()
            img = ImageOps.exif_transpose(img) or img
            return _to_rgb8(img)
    except InputError:
        raise
    except UnidentifiedImageError:
        raise InputError("not a readable image (corrupt, or not an image file)") from None
    except (OSError, ValueError, SyntaxError, EOFError) as err:
        message = " ".join(str(err).split()) or type(err).__name__
        raise InputError(f"corrupt or truncated image: {message}") from None


# ---------------------------------------------------------------------------------------------
# videos


def sample_indices(count: int, n: int) -> list[int]:
    """`n` frame indices spread uniformly over `count` frames, first and last included, no repeats."""
    if count <= 0 or n <= 0:
        return []
    if n == 1:
        return [count // 2]
    return sorted(set(np.linspace(0, count - 1, min(n, count)).round().astype(int).tolist()))


@dataclass(frozen=True)
class VideoInfo:
    """Frame count and presentation timestamps of a video stream, from a scan of its packets."""

    count: int
    width: int
    height: int
    pts: tuple[int, ...] | None  # sorted presentation timestamps, one per frame; None when unknown
    keyframes: tuple[int, ...]  # frame indices of keyframes (seek points); () when pts is None


def _open(path: Path, limits: DecodeLimits):  # -> av.container.InputContainer
    """The video at `path`, opened; its frames are never decoded above the limits' frame size.

    FFmpeg's `max_pixels` guards the frames that opening decodes to learn the stream's parameters and, set on
    the stream's decoder, every frame after: a larger frame is refused before its buffer is allocated.
    """
    import av

    path = _existing_file(path)
    max_pixels = str(limits.frame_pixels())
    try:
        container = av.open(str(path), options={"max_pixels": max_pixels})
    except (av.error.FFmpegError, OSError, ValueError, UnicodeDecodeError) as err:
        reason = getattr(err, "strerror", None) or str(err)
        raise InputError(f"not a readable video: {' '.join(str(reason).split())}") from None
    if not container.streams.video:
        container.close()
        raise InputError("no video stream in file")
    container.streams.video[0].codec_context.options = {"max_pixels": max_pixels}
    return container


def probe_video(path: Path, limits: DecodeLimits = DEFAULT_LIMITS) -> VideoInfo:
    """Count the frames of a video by reading its packets (no decoding; milliseconds).

    Raises LimitError when the container's frame size is over `limits` (or unknown: FFmpeg leaves it unset
    when the first frame it looked at was over the limit).
    """
    import av

    container = _open(path, limits)
    try:
        stream = container.streams.video[0]
        limits.check_frame(stream.codec_context.width, stream.codec_context.height)
        pts: list[int] = []
        key_pts: list[int] = []
        missing = 0
        try:
            for packet in container.demux(stream):
                if packet.size == 0:
                    continue
                if packet.pts is None:
                    missing += 1
                    continue
                pts.append(packet.pts)
                if packet.is_keyframe:
                    key_pts.append(packet.pts)
        except av.error.FFmpegError:
            pass  # a damaged tail: keep what was read
        width, height = stream.codec_context.width, stream.codec_context.height
    finally:
        container.close()
    if missing or len(set(pts)) != len(pts):
        return VideoInfo(len(pts) + missing, width, height, None, ())
    order = sorted(pts)
    rank = {p: i for i, p in enumerate(order)}
    return VideoInfo(len(order), width, height, tuple(order), tuple(sorted(rank[p] for p in key_pts)))


def read_frames(
    path: Path, indices: list[int], info: VideoInfo | None = None, limits: DecodeLimits = DEFAULT_LIMITS
) -> Iterator[tuple[int, np.ndarray]]:
    """Decode the frames at `indices` (sorted, presentation order): yields (index, (H, W, 3) uint8 RGB).

    Only what is needed is decoded: the decoder seeks to the keyframe before a wanted frame when that
    skips work, and frames nobody asked for are dropped before conversion to RGB (non-reference frames
    among them are not even decoded). Frames that cannot be decoded are simply not yielded; the caller
    compares with `indices`. Raises InputError when the file cannot be opened as a video, LimitError for a
    frame over `limits` (from its header, before it is decoded) or past their deadline.
    """
    info = info or probe_video(path, limits)
    wanted = sorted(set(i for i in indices if 0 <= i < info.count))
    if not wanted:
        return
    container = _open(path, limits)
    try:
        stream = container.streams.video[0]
        stream.thread_type = DECODE_THREADS
        ctx = stream.codec_context
        if info.pts is None:
            yield from _decode_sequential(container, stream, wanted, limits)
            return
        index_of = {p: i for i, p in enumerate(info.pts)}
        want = set(wanted)
        wanted_pts = {info.pts[i] for i in wanted}
        keyframes = info.keyframes or (0,)
        position = -1  # index of the last frame decoded
        eof = False
        for target in wanted:
            if target <= position:
                continue
            key = max((k for k in keyframes if k <= target), default=0)
            if key > position + 1 or position < 0:
                container.seek(info.pts[key], stream=stream, backward=True, any_frame=False)
                ctx.flush_buffers()
            done = False
            if eof:
                break
            for packet in container.demux(stream):
                # Frames that are not wanted and no other frame refers to need not be decoded.
                ctx.skip_frame = "DEFAULT" if packet.pts in wanted_pts or packet.pts is None else "NONREF"
                limits.check_time()
                frames = _decode(packet, ctx, limits)
                for frame in frames:
                    idx = index_of.get(frame.pts)
                    if idx is None:
                        continue
                    position = max(position, idx)
                    if idx in want:
                        limits.check_frame(frame.width, frame.height)
                        yield idx, frame.to_ndarray(format="rgb24")
                    if position >= target:
                        done = True
                if packet.size == 0:
                    eof = True
                if done or eof:
                    break
            else:
                eof = True
    finally:
        container.close()


def _decode(packet, ctx, limits: DecodeLimits) -> list:
    """The frames one packet decodes to; [] for a damaged packet, LimitError for a frame over the limits.

    FFmpeg refuses a frame over its `max_pixels` with EINVAL (ArgumentError) before allocating it, and may
    leave the size unset in `ctx` (then "unknown, or over"); damaged data gives other errors.
    """
    import av

    try:
        return packet.decode()
    except av.error.ArgumentError:
        limits.check_frame(ctx.width, ctx.height)
        return []
    except av.error.FFmpegError:
        return []


def _decode_sequential(container, stream, wanted: list[int], limits: DecodeLimits) -> Iterator[tuple[int, np.ndarray]]:
    """Decode from the start, counting frames; for streams whose packets carry no usable timestamps."""
    want = set(wanted)
    last = wanted[-1]
    idx = -1
    for packet in container.demux(stream):
        limits.check_time()
        for frame in _decode(packet, stream.codec_context, limits):
            idx += 1
            if idx in want:
                limits.check_frame(frame.width, frame.height)
                yield idx, frame.to_ndarray(format="rgb24")
            if idx >= last:
                return


def sample_frames(
    path: Path, n: int, limits: DecodeLimits = DEFAULT_LIMITS
) -> tuple[list[int], Iterator[tuple[int, np.ndarray]]]:
    """Indices of `n` frames spread uniformly over the video, and an iterator over those decoded.

    The frames are decoded ahead in a background thread (see `prefetch`), so decoding overlaps with whatever
    the caller does with each frame. Raises InputError when the file is not a video or has no frames, and
    LimitError (also from the iterator) for frames over `limits`.
    """
    info = probe_video(path, limits)
    if info.count == 0:
        raise InputError("video has no frames")
    indices = sample_indices(info.count, n)
    return indices, prefetch(read_frames(path, indices, info, limits))


_DONE = object()


def prefetch(items: Iterator[T], depth: int = 4) -> Iterator[T]:
    """Yield what `items` yields, produced up to `depth` items ahead in a background thread.

    Worth it when producing releases the GIL (FFmpeg decoding does), so it runs while the consumer works.
    An exception raised by `items` is raised here, in order; closing this iterator early stops the thread
    and closes `items` (from that thread, the one running it).
    """
    buffer: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                buffer.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put((item, None)):
                    return
            put((_DONE, None))
        except BaseException as err:  # handed to the consumer, which raises it
            put((_DONE, err))
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=produce, name="realface-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item, err = buffer.get()
            if err is not None:
                raise err
            if item is _DONE:
                return
            yield item
    finally:
        stop.set()
        thread.join()
