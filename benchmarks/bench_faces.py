"""Face pipeline throughput: video frames/s and images/s for decode + detect + landmarks + align + crop.

Runs `FacePipeline` in this process (one core for dlib), then `preprocess` with 2 workers (crops written
as JPEG, manifest and journal included) on the FF++ sample videos, and on UTKFace images. Prints Markdown
table rows and the command. Peak memory is this process's maximum resident set size (ru_maxrss); worker
processes report theirs separately (RUSAGE_CHILDREN: the largest child).

    python benchmarks/bench_faces.py [--frames 32] [--images 200] [--data ../shared/data]
"""

from __future__ import annotations

import argparse
import csv
import resource
import sys
import tempfile
import time
from pathlib import Path

import av

from realface.faces.media import read_image
from realface.faces.pipeline import FacePipeline, PipelineConfig
from realface.faces.preprocess import preprocess


def _maxrss_mib(who: int = resource.RUSAGE_SELF) -> float:
    return resource.getrusage(who).ru_maxrss / 1024  # Linux reports KiB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--images", type=int, default=200)
    args = parser.parse_args()
    config = PipelineConfig(frames=args.frames)
    pipeline = FacePipeline(config)
    pipeline.faces_in_image(read_image(next((args.data / "utkface" / "images").glob("*.jpg"))))  # load models

    videos = sorted((args.data / "ffpp-videos").rglob("*.mp4"))
    print("| input | resolution | frames | with face | seconds | frames/s |")
    print("|---|---|---|---|---|---|")
    groups: dict[str, list[float]] = {}
    for video in videos:
        start = time.perf_counter()
        frames = pipeline.faces_in_video(video)
        seconds = time.perf_counter() - start
        face = next(f.face for f in frames if f.face is not None)
        with av.open(str(video)) as c:
            res = f"{c.streams.video[0].width}x{c.streams.video[0].height}"
        groups.setdefault(res, []).extend([len(frames), seconds])
        found = sum(f.face is not None for f in frames)
        print(f"| {video.parent.name}/{video.name} | {res} | {len(frames)} | {found} | {seconds:.2f} | {len(frames) / seconds:.1f} |")
        assert face.crop.shape[0] == config.crop_size
    for res, values in groups.items():
        n, s = sum(values[0::2]), sum(values[1::2])
        print(f"| **all {res} videos, 1 process** | {res} | {n:.0f} | | {s:.2f} | **{n / s:.1f}** |")

    rows = list(csv.DictReader((args.data / "utkface" / "manifest.csv").open()))[:: max(1, 23704 // args.images)]
    paths = [args.data / "utkface" / r["path"] for r in rows][: args.images]
    start = time.perf_counter()
    found = sum(bool(pipeline.faces_in_image(read_image(p))) for p in paths)
    seconds = time.perf_counter() - start
    print(f"| UTKFace images, 1 process | 200x200 | {len(paths)} | {found} | {seconds:.2f} | **{len(paths) / seconds:.1f} images/s** |")
    self_mib = _maxrss_mib()

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        report = preprocess(videos, Path(tmp) / "v", config=config, workers=2, progress=False)
        seconds = time.perf_counter() - start
        n = report.faces + report.no_face_frames
        print(f"| all 7 videos, `preprocess --workers 2` | mixed | {n} | {report.faces} | {seconds:.2f} | **{n / seconds:.1f}** |")
        small = [v for v in videos if v.name in ("519.mp4", "519_515.mp4")]  # the 640x480 ones
        start = time.perf_counter()
        report = preprocess(small, Path(tmp) / "s", config=config, workers=2, progress=False)
        seconds = time.perf_counter() - start
        n = report.faces + report.no_face_frames
        print(f"| 640x480 videos, `preprocess --workers 2` | 640x480 | {n} | {report.faces} | {seconds:.2f} | **{n / seconds:.1f}** |")
        start = time.perf_counter()
        report = preprocess(paths, Path(tmp) / "i", config=config, workers=2, progress=False)
        seconds = time.perf_counter() - start
        print(f"| UTKFace images, `preprocess --workers 2` | 200x200 | {len(paths)} | {report.inputs_ok} | {seconds:.2f} | **{len(paths) / seconds:.1f} images/s** |")
    print()
    print(f"peak memory: {self_mib:.0f} MiB (single process), {_maxrss_mib(resource.RUSAGE_CHILDREN):.0f} MiB (largest worker)")
    print(f"command: {Path(sys.executable).name} benchmarks/bench_faces.py --frames {args.frames} --images {args.images}")


if __name__ == "__main__":
    main()
