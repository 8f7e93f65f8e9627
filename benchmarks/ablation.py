"""A small-scale ablation of the fine-tuning choices, same budget per row, on the DFDC split.

Every row fine-tunes for the same number of optimizer steps on the same DFDC train-split faces (a fixed
random subset) and is measured on the same DFDC val-split subset (never trained on; the val split is also
the one the default model is selected on, so these are validation numbers, not a cross-dataset test):

- pretraining: none (random init) vs the recipe's real-face pretraining run (`--pretrained`);
- detector: vit vs rffr vs competitive (from the same pretraining run);
- training fakes: labelled DFDC fakes vs SBI pseudo-fakes only vs both.

    python benchmarks/ablation.py --faces runs/recipe-cpu/faces/dfdc/manifest.csv \
        --pretrained runs/recipe-cpu/pretrain --out runs/ablation [--train 2000 --val 1000 --steps 60]
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import time
from pathlib import Path

ROWS = [
    # (name, detector, pretrained, labelled fakes, sbi ratio)
    ("no pretraining, vit, labelled", "vit", False, True, 0.0),
    ("pretrained, vit, labelled", "vit", True, True, 0.0),
    ("pretrained, vit, SBI only", "vit", True, False, 1.0),
    ("pretrained, vit, labelled + SBI", "vit", True, True, 0.5),
    ("pretrained, rffr (2x2 blocks), labelled", "rffr", True, True, 0.0),
    ("pretrained, competitive, labelled", "competitive", True, True, 0.0),
]


def subset(manifest: Path, out: Path, n_train: int, n_val: int, seed: int = 0) -> Path:
    """A manifest with n_train train rows and n_val val rows drawn at random (paths made absolute)."""
    with manifest.open(newline="") as f:
        reader = csv.DictReader(f)
        rows, fields = list(reader), reader.fieldnames
    rng = random.Random(seed)
    train = [r for r in rows if r["split"] == "train"]
    val = [r for r in rows if r["split"] == "val"]
    chosen = rng.sample(train, min(n_train, len(train))) + rng.sample(val, min(n_val, len(val)))
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as f:
        writer = csv.DictWriter(f, fields)
        writer.writeheader()
        writer.writerows({**r, "path": str((manifest.parent / r["path"]).absolute())} for r in chosen)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--faces", type=Path, required=True, help="preprocessed DFDC manifest (with split)")
    parser.add_argument("--pretrained", type=Path, required=True, help="a realface pretrain run")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--train", type=int, default=2000)
    parser.add_argument("--val", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=60, help="optimizer steps per row (batch 32)")
    parser.add_argument("--crop-size", type=int, default=112)
    args = parser.parse_args()

    from realface.cli import main as cli

    data = subset(args.faces, args.out / "subset.csv", args.train, args.val)
    steps_per_epoch = max(1, args.train // 32)
    epochs = max(1, -(-args.steps // steps_per_epoch))
    results = []
    for name, detector, pretrained, labelled, sbi in ROWS:
        run = args.out / name.replace(", ", "_").replace(" ", "-").replace("(", "").replace(")", "").replace("+", "and")
        cmd = ["finetune", "--data", str(data), "--out", str(run), "--detector", detector, "--epochs", str(epochs),
               "--batch-size", "32", "--max-steps-per-epoch", str(min(steps_per_epoch, args.steps)),
               "--crop-size", str(args.crop_size), "--img-size", "112", "--rffr-blocks", "2", "--no-progress"]  # fmt: skip
        if pretrained:
            cmd += ["--pretrained", str(args.pretrained)]
        if sbi:
            cmd += ["--pseudo-fakes", "sbi", "--sbi-ratio", str(sbi)]
        if not labelled:
            cmd += ["--no-labelled-fakes"]
        if not (run / "decision.json").exists():
            start = time.perf_counter()
            if cli(cmd) != 0:
                raise SystemExit(f"row {name!r} failed")
            (run / "wall_s.txt").write_text(f"{time.perf_counter() - start:.0f}\n")
        val = json.loads((run / "decision.json").read_text())["val"]
        wall = (run / "wall_s.txt").read_text().strip()
        results.append((name, val["auc"], val["eer"], val["ap"], wall))
    print(f"{args.train} train faces, {args.val} val faces, {args.steps} steps of 32 per row\n")
    print("| row | DFDC val AUC | EER | AP | wall s |\n|---|---|---|---|---|")
    for name, auc, eer_, ap, wall in results:
        print(f"| {name} | {auc:.3f} | {eer_:.3f} | {ap:.3f} | {wall} |")


if __name__ == "__main__":
    main()
