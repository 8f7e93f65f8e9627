"""A run made by `benchmarks/gpu_finetune.sh` on a lent GPU, made a run folder here again, and scored on the
validation faces as preprocess wrote them.

    python benchmarks/gpu_restore.py /work/.device/1 runs/gpuA96 --val runs/faces224/dfdc/manifest.csv

It unpacks run.tgz, joins the two fp16 halves of the selected weights into best/model.safetensors (fp32), keeps
the device's validation scores and decision rule (made on the packed, WebP-compressed crops) as
val_scores.packed.csv and decision.packed.json, and writes both anew from the split=val faces of `--val` at their
original quality (the decision rule with finetune's default threshold policy), so `ablation_runs.py` and the
recipe's measurements read the same faces as every other run's.
"""

from __future__ import annotations

import argparse
import shutil
import tarfile
from pathlib import Path

from safetensors.torch import load_file, save_file

from realface.bundle import load_bundle
from realface.data.labelled import DetectionFaces, build_items
from realface.eval.metrics import roc_auc
from realface.faces.manifest import read_face_manifest
from realface.train import checkpoint as ckpt
from realface.train.finetune import VAL_SCORES, record_validation, score_dataset, split_records


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("device_out", type=Path, help="the folder the device's files came back to")
    ap.add_argument("run", type=Path, help="the run folder to write")
    ap.add_argument("--val", type=Path, required=True, help="a preprocess manifest whose split=val rows are scored")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()

    args.run.mkdir(parents=True, exist_ok=True)
    with tarfile.open(args.device_out / "run.tgz") as tar:
        tar.extractall(args.run, filter="data")
    weights = {**load_file(args.device_out / "best-1.safetensors"), **load_file(args.device_out / "best-2.safetensors")}
    save_file({k: v.float() if v.is_floating_point() else v for k, v in weights.items()},
              str(args.run / "best" / "model.safetensors"))  # fmt: skip
    for name in (VAL_SCORES, ckpt.DECISION):  # the device's, made on the packed crops
        packed = args.run / name.replace(".", ".packed.", 1)
        if not packed.exists():
            shutil.move(args.run / name, packed)

    bundle = load_bundle(args.run)
    _, val = split_records(read_face_manifest(args.val))
    dataset = DetectionFaces(build_items(val), bundle.pre)
    probs, uncertainty = score_dataset(bundle.detector, dataset, batch_size=64, workers=args.workers)
    record_validation(args.run, dataset, probs, uncertainty)
    print(f"{args.run}: DFDC val AUC {roc_auc(dataset.labels(), probs):.4f} on {len(probs)} faces at their original quality")


if __name__ == "__main__":
    main()
