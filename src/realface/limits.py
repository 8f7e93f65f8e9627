"""What decoding one input may cost (pixels per image or frame, decoded bytes held at once, time), and what one
request to `realface serve` may cost (`ServeLimits`, light to import so that the CLI's parser can show them).

The same `DecodeLimits` guards `realface detect` (a 200-megapixel limit, no deadline) and each request of
`realface serve` (its `ServeLimits`, a memory ceiling and a deadline). Sizes are checked from headers before
anything is decoded: an image's from its header, a video's from its container and then from each frame's own
header (FFmpeg refuses to allocate a larger frame), so a small file that declares a huge picture costs nothing.

The memory ceiling is an account of the decoded pixels a request holds at once (the dominant cost; the
model's own memory is shared by all requests): an estimate per image, or per video frame times the frames
in flight, refused when over `max_bytes`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from realface.errors import InputError, RealfaceError

MEGA = 1_000_000
MIB = 1 << 20
# Bytes a decoded image costs per pixel at its peak: the decoded picture, its RGB copy, the copy turned upright
# by its EXIF tag, and the border-padded copy the face detector may search (12 B); 16-bit and float pictures
# pass through float64 on their way to 8-bit RGB (about twice that).
IMAGE_BYTES_PER_PIXEL = 12
WIDE_IMAGE_BYTES_PER_PIXEL = 24
WIDE_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I", "F"})
# Bytes a video costs per pixel of its frame size: frames queued as RGB (prefetch depth 4, FRAMES_IN_FLIGHT = 4
# with the face search, one being converted: 9 x 3 B) and the decoder's own YUV frames (threads and reference
# frames, about 8 x 1.5 B).
VIDEO_BYTES_PER_PIXEL = 39
API_KEY_ENV = "REALFACE_API_KEY"  # where `realface serve` reads its API key when --api-key is not given


class LimitError(InputError):
    """An input over a size limit: readable, but refused rather than decoded."""


class TimeLimitError(LimitError):
    """The work on one input ran past its deadline."""


@dataclass(frozen=True)
class DecodeLimits:
    """Limits on decoding one input (an image, or every frame of a video)."""

    max_pixels: int = 200 * MEGA  # largest image or video frame, pixels (width x height, from the header)
    max_bytes: int | None = None  # memory ceiling: decoded bytes one input may hold at once; None = none
    deadline: float | None = None  # time.monotonic() by which the work must end; None = no time limit
    time_limit_s: float | None = None  # the time limit behind `deadline`, for messages

    def __post_init__(self) -> None:
        if self.max_pixels < 1:
            raise ValueError(f"max_pixels must be positive, got {self.max_pixels}")
        if self.max_bytes is not None and self.max_bytes < 1:
            raise ValueError(f"max_bytes must be positive, got {self.max_bytes}")

    @classmethod
    def with_time_limit(cls, seconds: float | None, **fields: object) -> "DecodeLimits":
        """Limits whose deadline is `seconds` from now (None: no deadline)."""
        deadline = None if seconds is None else time.monotonic() + seconds
        return cls(deadline=deadline, time_limit_s=seconds, **fields)  # type: ignore[arg-type]

    def frame_pixels(self) -> int:
        """Largest video frame accepted: the pixel limit, or less where the memory ceiling says so."""
        if self.max_bytes is None:
            return self.max_pixels
        return max(1, min(self.max_pixels, self.max_bytes // VIDEO_BYTES_PER_PIXEL))

    def check_image(self, width: int, height: int, mode: str = "RGB") -> None:
        """LimitError for an image over the pixel limit or the memory ceiling (call before decoding it)."""
        pixels = width * height
        if pixels > self.max_pixels:
            raise LimitError(f"image too large: {width}x{height} is over {self.max_pixels / MEGA:g} megapixels")
        per_pixel = WIDE_IMAGE_BYTES_PER_PIXEL if mode in WIDE_MODES else IMAGE_BYTES_PER_PIXEL
        if self.max_bytes is not None and pixels * per_pixel > self.max_bytes:
            raise LimitError(
                f"image too large: decoding {width}x{height} ({mode}) needs about {pixels * per_pixel / MIB:.0f} MiB, "
                f"over the {self.max_bytes / MIB:g} MiB a request may use"
            )

    def check_frame(self, width: int, height: int) -> None:
        """LimitError for a video frame size over the limits (from the container, or a frame's header)."""
        limit = self.frame_pixels()
        if width <= 0 or height <= 0:
            raise LimitError(f"video frame size unknown, or over {limit / MEGA:g} megapixels")
        if width * height > limit:
            why = "megapixels" if limit == self.max_pixels else "megapixels (the memory a request may use)"
            raise LimitError(f"video frames too large: {width}x{height} is over {limit / MEGA:g} {why}")

    def check_time(self) -> None:
        """TimeLimitError once the deadline has passed."""
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise TimeLimitError(f"processing took longer than the limit of {self.time_limit_s:g} s")


@dataclass(frozen=True)
class ServeLimits:
    """What one request may cost the service, and how many are served at once."""

    max_upload_mb: float = 50.0  # largest uploaded file, MiB (checked while it streams in)
    max_video_seconds: float = 300.0  # longest video accepted, seconds (from its packets, before decoding)
    max_image_megapixels: float = 50.0  # largest image or video frame, megapixels (from headers, before decoding)
    max_request_mb: float = 1024.0  # memory ceiling: decoded pixels one request may hold at once, MiB
    max_jobs: int = 2  # jobs at once (checking and scanning; the model scans one at a time)
    queue_length: int = 32  # requests beyond max_jobs that may wait (receiving their upload or queued); more get 503
    queue_wait_s: float = 30.0  # longest wait for a job slot once the upload is in; then 503
    retry_after_s: int = 5  # the Retry-After header sent with a 503
    header_timeout_s: float = 10.0  # a request's headers must arrive within this many seconds
    upload_idle_s: float = 10.0  # longest pause in an upload, and the grace before its rate counts
    min_upload_kib_s: float = 64.0  # slowest average upload rate accepted after the grace, KiB/s
    max_processing_s: float = 120.0  # longest scan of one upload, seconds

    def __post_init__(self) -> None:
        positive = {
            "--max-upload-mb": self.max_upload_mb, "--max-video-seconds": self.max_video_seconds,
            "--max-image-megapixels": self.max_image_megapixels, "--max-request-mb": self.max_request_mb,
            "--queue-wait": self.queue_wait_s, "--header-timeout": self.header_timeout_s,
            "--upload-idle-timeout": self.upload_idle_s, "--min-upload-rate": self.min_upload_kib_s,
            "--max-processing-seconds": self.max_processing_s,
        }  # fmt: skip
        for option, value in positive.items():
            if not value > 0:
                raise RealfaceError(f"{option} must be positive, got {value}")
        if not 1 <= self.max_jobs <= 32:
            raise RealfaceError(f"--max-jobs must be within 1..32 (one model serves them in turn), got {self.max_jobs}")
        if not 0 <= self.queue_length <= 1024:
            raise RealfaceError(f"--queue must be within 0..1024, got {self.queue_length}")
        if self.retry_after_s < 1:
            raise RealfaceError(f"retry_after_s must be at least 1 second, got {self.retry_after_s}")

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * MIB)

    def decode_limits(self) -> DecodeLimits:
        """The limits of one scan, its deadline starting now."""
        return DecodeLimits.with_time_limit(
            self.max_processing_s,
            max_pixels=int(self.max_image_megapixels * 1e6),
            max_bytes=int(self.max_request_mb * MIB),
        )
