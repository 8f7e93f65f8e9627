"""Faces in tight crops: which path of the face pipeline finds the face, on 500 DFDC and 500 UTKFace crops
(a fixed seeded sample), and whether the fallbacks invent a face on 100 non-face pictures.

Non-faces are made here, deterministically, never downloaded: 50 synthetic pictures (noise at several grain
sizes, gradients, checkerboards, stripes, cv2-drawn shapes) and 50 square crops of scikit-image's sample
pictures that show no face (brick, grass, gravel, coffee, rocket, coins, moon, text, clock, hubble, cells,
retina, ...; not `astronaut`, `camera`, `chelsea`/`cat` or the head phantom). They are 160-260 px and
near-square, like the face crops, so every fallback step runs on them.

Prints counts per path, "no face found" counts and the seconds per image, as Markdown rows, then the measures
of the whole-image fit (`realface.faces.pipeline.whole_image_fit`) of every picture that reached that step
(neither detector found a face), the numbers behind its threshold. Non-face pictures made with another --seed
are a held-out check of that threshold.

    python benchmarks/bench_tight_crops.py [--dfdc 500] [--utkface 500] [--seed 0] [--data ../shared/data]
"""

from __future__ import annotations

import argparse
import csv
import random
import time
from collections import Counter
from pathlib import Path

import cv2
import numpy as np

from realface.faces.media import read_image
from realface.faces.pipeline import FOUND_BY, FacePipeline, PipelineConfig, whole_image_fit

# skimage.data pictures with no face in them (checked by eye); crops of these are the "photo" non-faces.
FACELESS_PICTURES = (
    "brick", "grass", "gravel", "coffee", "rocket", "coins", "moon", "text", "clock", "hubble_deep_field",
    "immunohistochemistry", "retina", "colorwheel", "cell", "page", "horse", "logo",
)  # fmt: skip


def _gray_to_rgb(image: np.ndarray) -> np.ndarray:
    """(H, W) or (H, W, 3|4) bool/uint8/float in [0, 1] -> (H, W, 3) uint8."""
    image = np.asarray(image)
    if image.dtype == bool or image.dtype.kind == "f":
        image = (np.clip(image.astype(np.float64), 0, 1) * 255).astype(np.uint8)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    return np.ascontiguousarray(image[..., :3])


def synthetic_nonfaces(count: int, seed: int) -> list[tuple[str, np.ndarray]]:
    """`count` textures and drawings (name, (S, S, 3) uint8 RGB), S in 160..260, the same for the same seed."""
    rng = np.random.default_rng(seed)
    kinds = ("noise", "gradient", "checkerboard", "stripes", "shapes")
    pictures = []
    for i in range(count):
        kind = kinds[i % len(kinds)]
        size = int(rng.integers(160, 261))
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) / size
        colours = rng.integers(0, 256, size=(2, 3))
        if kind == "noise":  # grain from 1 to 32 pixels
            grain = int(2 ** rng.integers(0, 6))
            small = rng.integers(0, 256, size=(max(1, size // grain), max(1, size // grain), 3)).astype(np.uint8)
            image = cv2.resize(small, (size, size), interpolation=cv2.INTER_CUBIC)
        elif kind == "gradient":  # linear at an angle, or radial
            angle = rng.uniform(0, np.pi)
            if i % 2:
                t = np.clip(np.hypot(xx - rng.uniform(0, 1), yy - rng.uniform(0, 1)), 0, 1)
            else:
                t = np.cos(angle) * xx + np.sin(angle) * yy
                t = (t - t.min()) / np.ptp(t)
            image = (colours[0] * (1 - t[..., None]) + colours[1] * t[..., None]).astype(np.uint8)
        elif kind == "checkerboard":
            cell = int(rng.integers(8, 64))
            mask = ((np.arange(size)[:, None] // cell + np.arange(size)[None, :] // cell) % 2).astype(bool)
            image = np.where(mask[..., None], colours[0], colours[1]).astype(np.uint8)
        elif kind == "stripes":
            period, angle = rng.uniform(6, 60), rng.uniform(0, np.pi)
            t = 0.5 + 0.5 * np.sin(2 * np.pi * size * (np.cos(angle) * xx + np.sin(angle) * yy) / period)
            image = (colours[0] * (1 - t[..., None]) + colours[1] * t[..., None]).astype(np.uint8)
        else:  # filled and outlined circles, rectangles, lines and polygons on a plain background
            image = np.full((size, size, 3), colours[0], np.uint8)
            for _ in range(int(rng.integers(3, 12))):
                colour = tuple(int(c) for c in rng.integers(0, 256, 3))
                thickness = int(rng.choice([-1, 1, 2, 4]))
                p, q = rng.integers(0, size, 2), rng.integers(0, size, 2)
                shape = rng.integers(0, 4)
                if shape == 0:
                    cv2.circle(image, (int(p[0]), int(p[1])), int(rng.integers(5, size // 3)), colour, thickness)
                elif shape == 1:
                    cv2.rectangle(image, (int(p[0]), int(p[1])), (int(q[0]), int(q[1])), colour, thickness)
                elif shape == 2:
                    cv2.line(image, (int(p[0]), int(p[1])), (int(q[0]), int(q[1])), colour, max(1, thickness))
                else:
                    points = rng.integers(0, size, (int(rng.integers(3, 7)), 2)).astype(np.int32)
                    cv2.fillPoly(image, [points], colour)
        pictures.append((f"synthetic-{i:02d}-{kind}", np.ascontiguousarray(image)))
    return pictures


def photo_nonfaces(count: int, seed: int) -> list[tuple[str, np.ndarray]]:
    """`count` square crops (a quarter to all of the shorter side, resized to 160..260 px) of faceless pictures."""
    from skimage import data

    rng = np.random.default_rng(seed)
    pictures = []
    for i in range(count):
        name = FACELESS_PICTURES[i % len(FACELESS_PICTURES)]
        image = _gray_to_rgb(getattr(data, name)())
        h, w = image.shape[:2]
        side = int(rng.integers(min(h, w) // 4, min(h, w) + 1))
        y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        size = int(rng.integers(160, 261))
        crop = cv2.resize(image[y : y + side, x : x + side], (size, size), interpolation=cv2.INTER_AREA)
        pictures.append((f"{name}-{i:02d}", np.ascontiguousarray(crop)))
    return pictures


def nonfaces(seed: int = 0) -> list[tuple[str, np.ndarray]]:
    """The 100 non-face pictures: 50 synthetic, 50 photo crops."""
    return synthetic_nonfaces(50, seed) + photo_nonfaces(50, seed)


def sample_crops(data: Path, name: str, count: int, seed: int) -> list[Path]:
    """`count` files of data/<name>/manifest.csv (all splits), a fixed sample for a seed."""
    folder = data / name
    with (folder / "manifest.csv").open(newline="") as fh:
        paths = sorted(folder / row["path"] for row in csv.DictReader(fh))
    return random.Random(seed).sample(paths, count)


def measure(pipeline: FacePipeline, pictures) -> tuple[Counter, float, list[str]]:
    """Counts of the path that found the first face ("none" when no face), seconds per picture, and one line
    of whole-image fit measures per picture that reached the whole-image step."""
    counts: Counter = Counter()
    fits: list[str] = []
    seconds = 0.0
    for name, rgb in pictures:
        start = time.perf_counter()
        faces = pipeline.faces_in_image(rgb)
        seconds += time.perf_counter() - start
        found_by = faces[0].found_by if faces else "none"
        counts[found_by] += 1
        if found_by in ("whole-image", "none"):
            fit = whole_image_fit(rgb)
            fits.append(f"{name} {found_by} " + " ".join(f"{k}={v:.3f}" for k, v in fit.measures.items()))
    return counts, seconds / max(1, len(pictures)), fits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    parser.add_argument("--dfdc", type=int, default=500, help="DFDC crops (train and val)")
    parser.add_argument("--utkface", type=int, default=500, help="UTKFace crops")
    parser.add_argument("--nonfaces", type=int, default=100, help="non-face pictures (at most 100)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    pipeline = FacePipeline(PipelineConfig())
    sets = {
        "DFDC crops": [(str(p), read_image(p)) for p in sample_crops(args.data, "dfdc", args.dfdc, args.seed)],
        "UTKFace crops": [(str(p), read_image(p)) for p in sample_crops(args.data, "utkface", args.utkface, args.seed)],
        "non-faces": nonfaces(args.seed)[: args.nonfaces],
    }
    pipeline.faces_in_image(sets["UTKFace crops"][0][1])  # load the models before timing
    header = ["set", "pictures", *FOUND_BY, "no face found", "s / picture"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    fits: dict[str, list[str]] = {}
    for set_name, pictures in sets.items():
        counts, per_picture, fits[set_name] = measure(pipeline, pictures)
        cells = [set_name, str(len(pictures)), *(str(counts[k]) for k in FOUND_BY), str(counts["none"])]
        print("| " + " | ".join(cells) + f" | {per_picture:.2f} |", flush=True)
    for set_name, lines in fits.items():
        print(f"\nwhole-image fits on {set_name} ({len(lines)}):")
        for line in sorted(lines, key=lambda text: -float(text.rsplit("score=", 1)[1])):
            print(f"  {line}")


if __name__ == "__main__":
    main()
