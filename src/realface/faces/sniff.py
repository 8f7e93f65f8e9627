"""What a file holds, from its first bytes (its magic number), not from its name.

`realface detect` and `realface serve` both decide with `sniff` how to read an input, so an mp4 named `.jpg`
or a JPEG named `.gif` gets the same answer from both. The name's suffix is only a fallback for content with
no recognizable signature (a damaged file is then reported by the decoder its name points to).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from realface.errors import InputError

HEAD_BYTES = 64  # bytes read to recognize a file
IMAGE_SUFFIXES: frozenset[str] = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp"})
VIDEO_SUFFIXES: frozenset[str] = frozenset({".mp4", ".avi", ".mov", ".webm", ".mkv"})
MEDIA_SUFFIXES: frozenset[str] = IMAGE_SUFFIXES | VIDEO_SUFFIXES
BMP_HEADER_SIZES = frozenset({12, 40, 52, 56, 64, 108, 124})  # BITMAPINFOHEADER and its variants
HEIF_BRANDS = frozenset({b"avif", b"avis", b"heic", b"heix", b"hevc", b"hevx", b"mif1", b"msf1"})
QUICKTIME_ATOMS = frozenset({b"moov", b"mdat", b"wide", b"free", b"skip", b"pnot"})


@dataclass(frozen=True)
class Content:
    """What a file holds."""

    kind: str  # "image", "video" or "unsupported"
    suffix: str  # the usual suffix of its format (".jpg", ".mp4", ...); "" when unknown
    name: str  # its format in words, for messages: "JPEG", "MP4", "GIF image", "text", "unknown"


def media_kind(path: Path) -> str:
    """'image', 'video' or 'unsupported', from a file name's suffix alone."""
    suffix = Path(path).suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        return "image"
    if suffix in VIDEO_SUFFIXES:
        return "video"
    return "unsupported"


def _by_signature(head: bytes) -> Content | None:
    """The format whose magic number `head` starts with; None when none matches."""
    if head.startswith(b"\xff\xd8\xff"):
        return Content("image", ".jpg", "JPEG")
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return Content("image", ".png", "PNG")
    if head.startswith(b"BM") and len(head) >= 18 and int.from_bytes(head[14:18], "little") in BMP_HEADER_SIZES:
        return Content("image", ".bmp", "BMP")
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return Content("image", ".webp", "WebP")
    if head.startswith(b"RIFF") and head[8:12] == b"AVI ":
        return Content("video", ".avi", "AVI")
    if head.startswith(b"\x1a\x45\xdf\xa3"):  # EBML: Matroska, or its WebM profile
        return Content("video", ".webm", "WebM") if b"webm" in head else Content("video", ".mkv", "Matroska")
    if head[4:8] == b"ftyp":  # ISO base media: MP4, QuickTime, 3GP, or HEIF/AVIF still images
        brand = head[8:12]
        if brand in HEIF_BRANDS:
            return Content("unsupported", ".heic", "HEIF/AVIF image")
        return Content("video", ".mov", "QuickTime") if brand == b"qt  " else Content("video", ".mp4", "MP4")
    if head[4:8] in QUICKTIME_ATOMS:  # old QuickTime files start with a bare atom
        return Content("video", ".mov", "QuickTime")
    if head.startswith((b"GIF87a", b"GIF89a")):
        return Content("unsupported", ".gif", "GIF image")
    if head.startswith((b"II*\x00", b"MM\x00*")):
        return Content("unsupported", ".tiff", "TIFF image")
    if head.startswith(b"%PDF"):
        return Content("unsupported", ".pdf", "PDF document")
    if head.startswith((b"PK\x03\x04", b"\x1f\x8b", b"7z\xbc\xaf")):
        return Content("unsupported", "", "archive")
    return None


def _is_text(head: bytes) -> bool:
    """UTF-8 (or ASCII) text: printable characters and whitespace only (a cut multi-byte tail allowed)."""
    for cut in range(4):  # `head` may end inside a multi-byte character
        try:
            text = head[: len(head) - cut].decode("utf-8")
            break
        except UnicodeDecodeError:
            continue
    else:
        return False
    return bool(text) and all(ch.isprintable() or ch in "\t\r\n\f" for ch in text)


def sniff(head: bytes, name: str | None = None) -> Content:
    """What bytes starting with `head` hold: by magic number, then text, then the suffix of `name`."""
    found = _by_signature(head)
    if found is not None:
        return found
    if _is_text(head):
        return Content("unsupported", ".txt", "text")
    suffix = Path(name or "").suffix.lower()
    kind = media_kind(Path("file" + suffix))
    if kind != "unsupported":  # unrecognized bytes under a media name: its decoder says what is wrong
        return Content(kind, suffix, f"{suffix[1:]} file")
    return Content("unsupported", "", f"{suffix} file" if suffix else "unknown")


def sniff_file(path: Path) -> Content:
    """What the file at `path` holds; InputError for a missing or empty file."""
    path = Path(path)
    if not path.is_file():
        raise InputError("file not found")
    with path.open("rb") as fh:
        head = fh.read(HEAD_BYTES)
    if not head:
        raise InputError("empty file (0 bytes)")
    return sniff(head, path.name)


def unsupported_message(content: Content) -> str:
    """One line refusing `content`, naming what is accepted."""
    return (
        f"unsupported file type: {content.name}; use an image ({', '.join(sorted(IMAGE_SUFFIXES))}) "
        f"or a video ({', '.join(sorted(VIDEO_SUFFIXES))})"
    )
