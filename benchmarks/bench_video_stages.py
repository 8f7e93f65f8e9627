"""Where the time of a video scan goes, stage by stage, on each FF++ sample video: the floor under the video target
of the fast main job (32 uniformly sampled frames, model loaded, <= 1.2 s end to end).

Per video, medians of --repeat passes, wall and CPU seconds of this process (all its threads):
- decode: the 32 sampled frames alone, as the scan decodes them (`sample_frames`: seek to the keyframe before,
  skip non-reference frames nobody asked for, FFmpeg's own threads), to RGB;
- search: the face detector over all 32 frames whole, then near the face found (what tracking costs instead);
- landmarks + align: 68 landmarks and the aligned crop of the face of each frame;
- classify: the model on the 32 crops at once;
- scan: the whole `Scanner.scan` (decode, faces, score and verdict overlapped in threads), as `detect` and `serve`
  run it.

With --inside, a second table instead times the stages inside real scans: each stage's function is wrapped to add
up the CPU time (`time.thread_time`) of the thread that runs it, with its call count; "rest" is the scan's CPU minus
those (FFmpeg's decoding threads, ONNX Runtime's worker threads, Python around them). Median over --repeat scans.

The decode floor: a scan cannot end before its last frame is decoded, so "decode" wall is a lower bound of "scan"
whatever the face pipeline costs; "scan CPU / 2" is the other (2 cores).

    python benchmarks/bench_video_stages.py [--model DIR] [--data ../shared/data] [--repeat 5] [--inside]
"""

from __future__ import annotations

import argparse
import collections
import resource
import threading
import time
from pathlib import Path

import numpy as np


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def timed(fn):
    """(result, wall s, CPU s) of fn()."""
    c, w = cpu_s(), time.perf_counter()
    out = fn()
    return out, time.perf_counter() - w, cpu_s() - c


def inside_scans(args: argparse.Namespace) -> None:
    import realface.detect as detect
    from realface.faces.detect import WorkingScaleDetector
    from realface.faces.pipeline import FacePipeline
    from realface.model import load_model

    cpu: dict[str, float] = collections.defaultdict(float)
    calls: collections.Counter[str] = collections.Counter()
    lock = threading.Lock()

    def wrap(owner: object, name: str, stage: str) -> None:
        inner = getattr(owner, name)

        def timed_call(*a, **k):
            start = time.thread_time()
            out = inner(*a, **k)
            with lock:
                cpu[stage] += time.thread_time() - start
                calls[stage] += 1
            return out

        setattr(owner, name, timed_call)

    stages = {"search whole": (WorkingScaleDetector, "detect"), "search near": (WorkingScaleDetector, "detect_near"),
              "landmarks + align": (FacePipeline, "face_from_box"), "classify (main thread)": (detect.Scanner, "score")}
    for stage, (owner, name) in stages.items():
        wrap(owner, name, stage)
    scanner = detect.Scanner(load_model(args.model), frames=args.frames)
    print("| video | scan wall / CPU | " + " | ".join(stages) + " | rest |")
    print("|---|---|" + "---|" * (len(stages) + 1))
    for video in sorted((args.data / "ffpp-videos").glob("*/*.mp4")):
        scanner.scan(video)  # warm-up
        rows: dict[str, list[float]] = collections.defaultdict(list)
        for _ in range(args.repeat):
            cpu.clear()
            calls.clear()
            _, w, c = timed(lambda: scanner.scan(video))
            rows["wall"].append(w)
            rows["cpu"].append(c)
            rows["rest"].append(c - sum(cpu.values()))
            for stage in stages:
                rows[stage].append(cpu[stage])
        m = {k: float(np.median(v)) for k, v in rows.items()}
        cells = [f"{m[stage]:.2f} s ({calls[stage]})" for stage in stages]
        print(f"| {video.parent.name}/{video.name} | {m['wall']:.2f} / {m['cpu']:.2f} s | " + " | ".join(cells)
              + f" | {m['rest']:.2f} s |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--inside", action="store_true", help="time the stages inside real scans instead")
    args = parser.parse_args()
    if args.inside:
        inside_scans(args)
        return

    from realface.detect import Scanner
    from realface.faces.align import align_face
    from realface.faces.landmarks import find_landmarks
    from realface.faces.media import probe_video, sample_frames
    from realface.model import load_model

    scanner = Scanner(load_model(args.model), frames=args.frames)
    pipeline = scanner.pipeline
    detector = pipeline.new_detector()
    videos = sorted((args.data / "ffpp-videos").glob("*/*.mp4"))
    print("| video | frames | keyframes | decode wall / CPU | search whole / near (CPU) | landmarks + align (CPU) "
          "| classify (CPU) | scan wall / CPU |")
    print("|---|---|---|---|---|---|---|---|")
    for video in videos:
        info = probe_video(video)
        scanner.scan(video)  # warm-up: face models loaded, file in the page cache
        rows: dict[str, list[float]] = {}
        for _ in range(args.repeat):
            frames, w, c = timed(lambda: list(sample_frames(video, args.frames)[1]))
            rows.setdefault("decode_w", []).append(w)
            rows.setdefault("decode_c", []).append(c)
            found, _, c = timed(lambda: [detector.detect(rgb) for _, rgb in frames])
            rows.setdefault("search", []).append(c)
            pairs = [(rgb, d[0]) for (_, rgb), d in zip(frames, found) if d]
            _, _, c = timed(lambda: [detector.detect_near(rgb, [d.box]) for rgb, d in pairs])
            rows.setdefault("near", []).append(c)
            crops, _, c = timed(lambda: [
                align_face(rgb, find_landmarks(rgb, d.box), pipeline.config.crop_size, pipeline.config.margin).crop
                for rgb, d in pairs
            ])  # fmt: skip
            rows.setdefault("faces", []).append(c)
            _, _, c = timed(lambda: scanner.score(crops) if crops else None)
            rows.setdefault("classify", []).append(c)
            _, w, c = timed(lambda: scanner.scan(video))
            rows.setdefault("scan_w", []).append(w)
            rows.setdefault("scan_c", []).append(c)
        m = {k: float(np.median(v)) for k, v in rows.items()}
        name = f"{video.parent.name}/{video.name}"
        print(f"| {name} | {info.count} | {len(info.keyframes)} | {m['decode_w']:.2f} / {m['decode_c']:.2f} s "
              f"| {m['search']:.2f} / {m['near']:.2f} s | {m['faces']:.2f} s | {m['classify']:.2f} s "
              f"| {m['scan_w']:.2f} / {m['scan_c']:.2f} s |")


if __name__ == "__main__":
    main()
