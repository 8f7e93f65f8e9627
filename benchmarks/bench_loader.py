"""Training-loader cost per face: how long one item of the fine-tuning dataset takes to make, by kind (real,
labelled fake with its forgery map, SBI pseudo-fake), with and without the in-the-wild augmentations.

On 2 cores the loader's workers share the CPU with the model: a loader at L items/s per core and a model at M faces/s
leave the model M / (1 + M / L) of its speed. Single process, one torch thread, a fixed random sample of items.

    python benchmarks/bench_loader.py --faces runs/faces224/dfdc/manifest.csv --img 128 --n 300
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from bench_detectors import machine
from realface.data.augment import WildAugmentConfig
from realface.data.faceset import Preprocessing
from realface.data.labelled import DetectionFaces, build_items
from realface.faces.manifest import read_face_manifest
from realface.train.finetune import split_records, training_crop


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--faces", type=Path, required=True, help="a preprocess manifest with real and fake faces")
    ap.add_argument("--img", type=int, default=128, help="model input side")
    ap.add_argument("--grid", type=int, default=4, help="cells per side of the forgery-mask targets")
    ap.add_argument("--sbi-ratio", type=float, default=0.5)
    ap.add_argument("--n", type=int, default=300, help="items timed per setting")
    ap.add_argument("--append", type=Path, help="append the section to this Markdown file")
    args = ap.parse_args()
    torch.set_num_threads(1)

    train, _ = split_records(read_face_manifest(args.faces))
    items = build_items(train, sbi_ratio=args.sbi_ratio)
    pre = Preprocessing(img_size=args.img, crop=training_crop(train))
    sample = np.random.default_rng(0).permutation(len(items))[: args.n]
    names = {"face0": "real", "face1": "labelled fake + its map", "sbi1": "SBI pseudo-fake + its map"}
    rows = []
    load_before = os.getloadavg()[0]
    for label, augment in (("plain", None), ("augmented", WildAugmentConfig())):
        data = DetectionFaces(items, pre, augment=augment, mask_grid=(args.grid, args.grid))
        times: dict[str, list[float]] = {}
        start = time.perf_counter()
        for i in sample:
            t = time.perf_counter()
            data[int(i)]
            times.setdefault(f"{items[i].kind}{items[i].label}", []).append(time.perf_counter() - t)
        rate = len(sample) / (time.perf_counter() - start)
        rows.append((label, rate, {names[k]: 1000 * float(np.mean(v)) for k, v in sorted(times.items())}))
        print(f"{label}: {rate:.1f} items/s", file=sys.stderr)
    load_after = os.getloadavg()[0]
    kinds = list(rows[0][2])
    lines = [
        "## Training loader (`benchmarks/bench_loader.py`)",
        "",
        f"Command: `python benchmarks/bench_loader.py {' '.join(sys.argv[1:])}`.",
        f"Machine: {machine()}, one process, one torch thread. Date: {datetime.date.today().isoformat()}. Load average "
        f"{load_before:.1f} before and {load_after:.1f} after (above 2: other jobs shared the cores).",
        f"{len(sample)} random DFDC train items (reals, labelled fakes, SBI x{args.sbi_ratio}), {pre.crop.size} px crops "
        f"to {args.img} px, forgery-mask targets on a {args.grid}x{args.grid} grid.",
        "",
        "| setting | items/s | " + " | ".join(f"{k} (ms)" for k in kinds) + " |",
        "|---|---|" + "---|" * len(kinds),
        *[f"| {label} | {rate:.1f} | " + " | ".join(f"{ms[k]:.1f}" for k in kinds) + " |" for label, rate, ms in rows],
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.append is not None:
        with open(args.append, "a") as f:
            f.write("\n" + text)


if __name__ == "__main__":
    main()
