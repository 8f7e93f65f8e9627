"""What averaging finished `realface finetune` runs would give on their validation faces: each run's AUC, the AUC of
their ensemble (mean logit of p(fake), from the runs' own val_scores.csv), and with --soup the AUC of one model
whose weights are the runs' mean (a "model soup"; the runs must share an architecture).

    python benchmarks/ensemble_runs.py runs/ftL96 runs/gpuL96 --bootstrap 300 [--soup --val runs/faces224/dfdc/manifest.csv]

Intervals: 95% cluster bootstrap over the `group` column, as in ablation_runs.py. The ensemble says what
`finetune --teacher` could at best hand to one model of one model's cost.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np

from realface.eval.metrics import bootstrap_ci, roc_auc


def _scores(run: Path) -> dict[str, tuple[int, float, str]]:
    with (run / "val_scores.csv").open(newline="") as f:
        return {r["path"]: (int(r["label"]), float(r["score"]), r["group"] or r["path"]) for r in csv.DictReader(f)}


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


def soup_auc(runs: list[Path], val: Path, workers: int) -> float:
    """The val AUC of one detector with the runs' mean weights (BatchNorm statistics averaged too)."""
    from safetensors.torch import load_file, save_file

    from realface.bundle import load_bundle
    from realface.data.labelled import DetectionFaces, build_items
    from realface.faces.manifest import read_face_manifest
    from realface.train.finetune import score_dataset, split_records

    weights = [load_file(run / "best" / "model.safetensors") for run in runs]
    with tempfile.TemporaryDirectory() as tmp:
        soup = Path(tmp)
        (soup / "best").mkdir()
        shutil.copy(runs[0] / "config.json", soup / "config.json")
        mean = {k: sum(w[k] for w in weights) / len(weights) if weights[0][k].is_floating_point() else weights[0][k]
                for k in weights[0]}  # fmt: skip
        save_file(mean, str(soup / "best" / "model.safetensors"))
        bundle = load_bundle(soup)
        _, records = split_records(read_face_manifest(val))
        faces = DetectionFaces(build_items(records), bundle.pre)
        probs, _ = score_dataset(bundle.detector, faces, 64, workers)
        return roc_auc(faces.labels(), probs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", type=Path, nargs="+")
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--soup", action="store_true", help="also score the runs' mean weights (needs --val)")
    ap.add_argument("--val", type=Path, help="the manifest whose split=val rows the runs were validated on")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    if args.soup and args.val is None:
        ap.error("--soup needs --val")

    scores = [_scores(run) for run in args.runs]
    paths = sorted(set.intersection(*(set(s) for s in scores)))
    if not paths:
        ap.error("the runs share no validation face")
    y = np.array([scores[0][p][0] for p in paths])
    groups = [scores[0][p][2] for p in paths]
    rows = []
    for run, s in zip(args.runs, scores):
        p = np.array([s[q][1] for q in paths])
        rows.append((run.name, roc_auc(y, p), bootstrap_ci(roc_auc, y, p, groups, n=args.bootstrap)))
    mean_logit = np.mean([_logit(np.array([s[q][1] for q in paths])) for s in scores], axis=0)
    rows.append(("ensemble (mean logit)", roc_auc(y, mean_logit), bootstrap_ci(roc_auc, y, mean_logit, groups, n=args.bootstrap)))
    print(f"{len(paths)} validation faces shared by {len(args.runs)} runs\n")
    print("| model | val AUC [95% CI] |\n|---|---|")
    for name, auc, (lo, hi) in rows:
        print(f"| {name} | {auc:.3f} [{lo:.3f}, {hi:.3f}] |")
    if args.soup:
        print(f"| soup (mean weights) | {soup_auc(args.runs, args.val, args.workers):.3f} |")
    logits = np.array([_logit(np.array([s[q][1] for q in paths])) for s in scores])
    print("\ncorrelation of the runs' logits:", json.dumps(np.round(np.corrcoef(logits), 3).tolist()))


if __name__ == "__main__":
    main()
