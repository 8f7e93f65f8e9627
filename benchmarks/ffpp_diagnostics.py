"""Two checks behind BENCHMARKS.md "The self-teacher off the blends": what the FF++ sample fakes change, and whether a
model scores a video for its forgery or for the size of its face.

    python benchmarks/ffpp_diagnostics.py change              # each fake against its own original, lower face
    python benchmarks/ffpp_diagnostics.py size MODEL [MODEL ...]

`change`: both videos' same frames (16, spread over the video), aligned with the original's landmarks as the shipped
crop is (224 px, margin 1.3); mean absolute difference (0-255) over the crop, inside the lower face (the `lower` SBI
hull: nose base, jaw, mouth) and outside it, at 224 px and at the model's 96 px; a JPEG q90 re-save of the original
crop for scale (a mild re-encoding).
`size`: every video's 32 sampled frames saved as PNG at full size and scaled so the face box is about 120 px (all
videos alike), each set scored by `realface detect --model MODEL`; the mean p(fake) per video and size.
"""

from __future__ import annotations

import argparse
import csv
import io
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from realface.data.sbi import MASK_HULLS
from realface.faces.align import align_face
from realface.faces.detect import make_detector
from realface.faces.landmarks import find_landmarks
from realface.faces.media import probe_video, read_frames, sample_frames

REPO = Path(__file__).resolve().parents[1]
FACE_SIDE = 120  # face box side the `size` check scales every video to


def videos(shared: Path) -> list[dict[str, str]]:
    with (shared / "ffpp-videos" / "manifest.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def lower_face_change(shared: Path, frames: int = 16) -> None:
    root, rows = shared / "ffpp-videos", videos(shared)
    originals = {v["group"]: v["path"] for v in rows if v["label"] == "real"}
    detector = make_detector("dlib-hog")
    for fake in (v for v in rows if v["label"] == "fake" and v["group"] in originals):
        paths = root / fake["path"], root / originals[fake["group"]]
        n = min(probe_video(p).count for p in paths)
        wanted = list(range(0, n, max(1, n // frames)))[:frames]
        forged, source = (dict(read_frames(p, wanted)) for p in paths)
        sums = []
        for i in sorted(forged.keys() & source.keys()):
            found = detector.detect(source[i])
            if not found:
                continue
            landmarks = find_landmarks(source[i], max(found, key=lambda d: d.area).box)
            a, b = align_face(source[i], landmarks), align_face(forged[i], landmarks)
            mask = np.zeros(a.crop.shape[:2], np.uint8)
            cv2.fillConvexPoly(mask, cv2.convexHull(MASK_HULLS["lower"](a.landmarks).astype(np.int32)), 1)
            buf = io.BytesIO()
            Image.fromarray(a.crop).save(buf, "JPEG", quality=90)
            jpeg = np.asarray(Image.open(buf))
            row = []
            for side in (224, 96):
                def at(x: np.ndarray) -> np.ndarray:
                    return cv2.resize(x, (side, side), interpolation=cv2.INTER_AREA).astype(np.float32)

                inside = cv2.resize(mask, (side, side), interpolation=cv2.INTER_NEAREST).astype(bool)
                diff = np.abs(at(a.crop) - at(b.crop)).mean(axis=2)
                row += [diff.mean(), diff[inside].mean(), diff[~inside].mean(), np.abs(at(a.crop) - at(jpeg)).mean()]
            sums.append(row)
        m = np.mean(sums, axis=0)
        print(f"{fake['path']} ({len(sums)} frames): 224 px all {m[0]:.1f}, lower face {m[1]:.1f}, rest {m[2]:.1f} "
              f"(JPEG q90 {m[3]:.1f}); 96 px all {m[4]:.1f}, lower face {m[5]:.1f}, rest {m[6]:.1f} (JPEG q90 {m[7]:.1f})")


def face_size(shared: Path, models: list[Path]) -> None:
    detector = make_detector("dlib-hog")
    with tempfile.TemporaryDirectory() as tmp:
        for video in videos(shared):
            name = video["path"].replace("/", "_").removesuffix(".mp4")
            scale = None
            for i, rgb in sample_frames(shared / "ffpp-videos" / video["path"], 32)[1]:
                if scale is None:
                    found = detector.detect(rgb)
                    x0, _, x1, _ = max(found, key=lambda d: d.area).box if found else (0, 0, FACE_SIDE, 0)
                    scale = min(1.0, FACE_SIDE / (x1 - x0))
                img = Image.fromarray(rgb)
                for tag, s in (("full", 1.0), ("face120", scale)):
                    folder = Path(tmp) / tag / name
                    folder.mkdir(parents=True, exist_ok=True)
                    size = (round(img.width * s), round(img.height * s))
                    (img if s == 1.0 else img.resize(size, Image.LANCZOS)).save(folder / f"{i:05d}.png")
        for model in models:
            for tag in ("full", "face120"):
                out = subprocess.run([sys.executable, "-m", "realface", "detect", str(Path(tmp) / tag), "--csv", "--model",
                                      str(model), "--no-progress"], capture_output=True, text=True, check=True).stdout
                scores = defaultdict(list)
                for r in csv.DictReader(out.splitlines()):
                    if r["p_fake"]:
                        scores[Path(r["path"]).parent.name].append(float(r["p_fake"]))
                cells = ", ".join(f"{k} {np.mean(v):.3f}" for k, v in sorted(scores.items()))
                print(f"{model} {tag}: {cells}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("check", choices=("change", "size"))
    parser.add_argument("models", type=Path, nargs="*", help="(size) exported models or finetune runs")
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "data")
    args = parser.parse_args()
    if args.check == "size" and not args.models:
        parser.error("size: name the models to score")
    if args.check == "change":
        lower_face_change(args.shared)
    else:
        face_size(args.shared, args.models)


if __name__ == "__main__":
    main()
