"""End-to-end speed of detection on this machine, with the shipped default model (or --model DIR):

- seconds for one 32-frame 640x480 video (FF++ original/519.mp4): decode, detect, landmarks, align, score,
  aggregate; the model is loaded once beforehand, as `realface serve` does (and the cold `realface detect`
  command, including start-up, is timed too);
- faces/s of the classifier alone on aligned crops (batch 32), and images/s of the whole image path on UTKFace.

    python benchmarks/bench_detect.py [--model DIR] [--data ../shared/data] [--repeat 3]
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--images", type=int, default=200)
    args = parser.parse_args()

    import torch

    from realface.detect import Scanner
    from realface.model import load_model
    from realface.faces.media import read_image

    model = load_model(args.model)
    scanner = Scanner(model, frames=32)
    video = args.data / "ffpp-videos" / "original" / "519.mp4"
    rows = []

    scanner.scan(video)  # warm-up: model and dlib predictor loaded, caches filled
    times = []
    for _ in range(args.repeat):
        start = time.perf_counter()
        result = scanner.scan(video)
        times.append(time.perf_counter() - start)
    rows.append(("32-frame 640x480 video, model loaded (median)", f"{np.median(times):.2f} s",
                 f"{len(result.faces)} faces, verdict {result.verdict}"))  # fmt: skip

    cmd = [sys.executable, "-m", "realface", "detect", str(video), "--no-progress"]
    if args.model:
        cmd += ["--model", str(args.model)]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    rows.append(("the same with `realface detect` from a cold start", f"{time.perf_counter() - start:.2f} s", "imports + model load included"))

    images = sorted((args.data / "utkface" / "images").glob("*.jpg"))[: args.images]
    faces = [f.crop for f in (scanner.pipeline.faces_in_image(read_image(p)) for p in images[:64]) for f in f]
    crops = (faces * (256 // max(1, len(faces)) + 1))[:256]
    scanner.score(crops[:32])
    start = time.perf_counter()
    scanner.score(crops)
    rows.append(("classifier on aligned crops (batch 32)", f"{len(crops) / (time.perf_counter() - start):.1f} faces/s", f"{len(crops)} crops"))

    start = time.perf_counter()
    for path in images:
        scanner.scan(path)
    rows.append(("whole image path on UTKFace 200x200 (read, detect, align, score)",
                 f"{len(images) / (time.perf_counter() - start):.1f} images/s", f"{len(images)} images"))  # fmt: skip

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"model: {model.source} ({model.detector}, {model.encoder}, {model.pre.img_size} px, {model.engine.name}); "
          f"torch threads {torch.get_num_threads()}; peak memory {peak:.0f} MiB")  # fmt: skip
    print("| measurement | result | notes |\n|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
