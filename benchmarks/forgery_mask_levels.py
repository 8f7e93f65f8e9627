"""The grey levels behind `realface.data.forgery_mask`'s DIFF_NOISE and DIFF_FULL.

Blurred, in-face |fake - aligned real| (the map's raw difference, before DIFF_NOISE/DIFF_FULL scale it) for:
- identical faces: a real crop against itself rotated 4 degrees, scaled 1.03 and shifted (2, -3) px, so the
  difference is only what resampling two crops leaves;
- DFDC train pairs: each fake against the real of its group.
Prints the 50th/90th/99th percentile of the pixels inside the face, for the median face (and, for DFDC, the
10th and 90th percentile face).

    python benchmarks/forgery_mask_levels.py --faces runs/recipe-cpu/faces [--pairs 200]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

from realface.data.faceset import read_face
from realface.data.forgery_mask import aligned_difference, face_hull_mask
from realface.data.labelled import build_items
from realface.faces.align import apply_matrix
from realface.faces.manifest import read_face_manifest


def in_face_difference(fake, fake_lms, real, real_lms) -> np.ndarray:
    """The map's raw difference at the pixels inside the fake's (ungrown) landmark hull."""
    return aligned_difference(fake, fake_lms, real, real_lms)[face_hull_mask(fake_lms, fake.shape[:2], growth=0.0) > 0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--faces", type=Path, required=True, help="the recipe's faces folder (dfdc/ and utkface/)")
    parser.add_argument("--pairs", type=int, default=200)
    args = parser.parse_args()
    levels = (50, 90, 99)

    same = []
    for rec in read_face_manifest(args.faces / "utkface")[: args.pairs]:
        face = read_face(rec)
        h, w = face.shape[:2]
        moved = cv2.getRotationMatrix2D((w / 2, h / 2), 4.0, 1.03)
        moved[:, 2] += (2.0, -3.0)
        real = cv2.warpAffine(face, moved, (w, h), borderMode=cv2.BORDER_REFLECT_101)
        same.append(np.percentile(in_face_difference(face, rec.landmarks, real, apply_matrix(moved, rec.landmarks)), levels))
    print(f"identical faces, {len(same)}: median face's pixel percentiles {levels}:", np.median(same, 0).round(1))

    records = [r for r in read_face_manifest(args.faces / "dfdc" / "manifest.csv") if r.extra.get("split") == "train"]
    pairs = [it for it in build_items(records) if it.partner is not None][: args.pairs]
    dfdc = np.array([
        np.percentile(in_face_difference(read_face(it.record), it.record.landmarks, read_face(it.partner), it.partner.landmarks), levels)
        for it in pairs
    ])  # fmt: skip
    for q in (10, 50, 90):
        print(f"DFDC pairs, {len(pairs)}: {q}th percentile face's pixel percentiles {levels}:", np.percentile(dfdc, q, 0).round(1))


if __name__ == "__main__":
    main()
