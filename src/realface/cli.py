"""The `realface` console script: parses arguments, calls one typed function per subcommand.

Heavy imports (torch, dlib, cv2) happen inside the handlers, so `realface --help` is instant.
A `RealfaceError` becomes one line on stderr and exit status 2; Ctrl-C exits 130.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from realface import __version__
from realface.errors import RealfaceError


def _shard(text: str) -> tuple[int, int]:
    """Parse `i/n` (0 <= i < n) for --shard."""
    try:
        i, n = (int(part) for part in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shard takes i/n, e.g. 0/4, got {text!r}") from None
    if not 0 <= i < n:
        raise argparse.ArgumentTypeError(f"--shard i/n needs 0 <= i < n, got {text!r}")
    return i, n


# ---------------------------------------------------------------------------------------------
# preprocess


def _add_preprocess(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "preprocess",
        help="detect, align and crop faces from images, videos, folders or CSV manifests",
        description="Turn images and videos into aligned face crops with landmarks and a manifest.",
    )
    p.add_argument("inputs", nargs="+", type=Path, help="image/video files, folders, or manifest.csv files")
    p.add_argument("--out", type=Path, required=True, help="output folder (crops + manifest.csv)")
    p.add_argument("--size", type=int, default=224, help="crop side in pixels (default 224)")
    p.add_argument("--margin", type=float, default=1.3, help="crop = face box scaled by this (default 1.3)")
    p.add_argument("--frames", type=int, default=32, help="frames sampled uniformly per video (default 32)")
    p.add_argument("--detector", default="dlib-hog", help="face detector backend (default dlib-hog)")
    p.add_argument(
        "--assume-cropped",
        action="store_true",
        help="when no face is detected in an image, use the whole image as the face box",
    )
    p.add_argument("--format", dest="fmt", choices=("folder", "webdataset"), default="folder")
    p.add_argument("--workers", type=int, default=1, help="parallel worker processes")
    p.add_argument("--shard", type=_shard, default=(0, 1), metavar="I/N", help="process only shard I of N")
    p.add_argument("--limit", type=int, default=None, help="process at most this many inputs")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(handler=_run_preprocess)


def _run_preprocess(args: argparse.Namespace) -> int:
    from realface.faces.pipeline import PipelineConfig
    from realface.faces.preprocess import preprocess

    config = PipelineConfig(
        crop_size=args.size,
        margin=args.margin,
        frames=args.frames,
        detector=args.detector,
        assume_cropped=args.assume_cropped,
    )
    report = preprocess(
        args.inputs,
        args.out,
        config=config,
        fmt=args.fmt,
        workers=args.workers,
        shard=args.shard,
        limit=args.limit,
        progress=not args.no_progress,
    )
    print(report.summary())
    return 0 if report.ok else 1


# ---------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="realface",
        description="Face forgery detection that learns what real faces look like.",
    )
    parser.add_argument("--version", action="version", version=f"realface {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in (_add_preprocess,):
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args))
    except RealfaceError as err:
        print(f"realface {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"realface {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
