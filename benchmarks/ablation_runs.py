"""The equal-compute ablation table from finished `realface finetune` runs (each run one row).

For every run folder: its encoder, input side, pretraining (the `realface pretrain` run it started from, if any),
fine-tuning epochs, the DFDC val AUC of its selected epoch with a 95% cluster-bootstrap interval over the `group`
column (a source video and its fakes; from the run's own val_scores.csv, the whole val split), its val AUC
after each epoch, and its compute: the faces it trained on (pretraining + fine-tuning) and, with --rates, the
minutes those take on an idle machine of this kind at the measured training rates (faces/s per encoder, side
and stage; e.g. from `benchmarks/bench_encoders.py`). A run distilled from teachers (`finetune --teacher`) is not
priced: their forward passes slow its steps, and their own training is part of its compute. Equal compute means equal idle minutes, not equal steps:
runs measured while other jobs shared the cores cannot be compared by their wall time.

    python benchmarks/ablation_runs.py runs/ftA runs/ftP96 [--rates rates.json] [--bootstrap 1000]

rates.json: {"finetune": {"resnet18@128": 24.0, "resnet18@96:channels_last": 39.1, ...}, "pretrain": {...}} in
faces/s; an entry with `:LAYOUT` prices runs whose config.json records that memory layout, one starting with
`DETECTOR:` runs of a detector other than the classifier (see `rate_key`); a run with no entry is not priced.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np

from realface.eval.metrics import bootstrap_ci, roc_auc


def val_auc(run: Path, bootstrap: int) -> tuple[float, tuple[float, float]]:
    with (run / "val_scores.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    y = np.array([int(r["label"]) for r in rows])
    s = np.array([float(r["score"]) for r in rows])
    groups = [r["group"] or r["path"] for r in rows]
    return roc_auc(y, s), bootstrap_ci(roc_auc, y, s, groups, n=bootstrap)


def rate_key(key: str, config: dict, rates: dict) -> str:
    """The rates entry of a run trained as `key` (encoder@side): `key:channels_last` when the run's config records
    that layout and the rates have that entry, else `key` (a run without a recorded layout was trained contiguous,
    as every run before 2026-12-04 was); `DETECTOR:key...` for a detector other than the classifier (e.g.
    `competitive`, two encoders a face), whose rate is its own."""
    detector = config.get("detector", {}).get("name", "classifier")
    if detector not in ("classifier", "vit"):
        key = f"{detector}:{key}"
    layout = config.get("layout", "contiguous")
    return f"{key}:{layout}" if f"{key}:{layout}" in rates else key


def describe(run: Path, rates: dict, bootstrap: int) -> dict:
    config = json.loads((run / "config.json").read_text())
    meta = json.loads((run / "last" / "meta.json").read_text())
    det, train = config["detector"], config["train"]
    epochs = len(meta["history"])
    faces = config["num_train"] * epochs
    key = rate_key(f"{det['encoder']}@{det['img_size']}", config, rates.get("finetune", {}))
    minutes = faces / rates["finetune"][key] / 60 if key in rates.get("finetune", {}) else None
    teachers = [Path(t).name for t in config.get("teachers", [])]
    taught = config.get("teacher_data", "all")
    if teachers and config.get("teacher_weight", 1.0) != 1.0:
        teachers[-1] += f" (weight {config['teacher_weight']:g})"
    if teachers and taught != "all":  # e.g. "dfdc/manifest.csv": the teachers score only those faces
        teachers[-1] += f" on {', '.join('/'.join(Path(d).parts[-2:]) for d in taught)} only"
    if teachers and not config.get("teacher_sbi", True):
        teachers[-1] += " (not on SBI fakes)"
    if teachers:  # their forward passes slow every step, and their own training is compute too: not priced
        minutes = None
    pretraining = "none"
    if config.get("pretrained"):
        pre_run = Path(config["pretrained"])
        pre_cfg = json.loads((pre_run / "config.json").read_text())
        pre_epochs = len(json.loads((pre_run / "last" / "meta.json").read_text())["history"])
        model = pre_cfg["model"]
        pre_faces = pre_cfg["num_faces"] * pre_epochs
        faces += pre_faces
        pre_key = rate_key(f"{model['encoder']}@{model['img_size']}", pre_cfg, rates.get("pretrain", {}))
        if minutes is not None and pre_key in rates.get("pretrain", {}):
            minutes += pre_faces / rates["pretrain"][pre_key] / 60
        elif minutes is not None:
            minutes = None
        pretraining = (
            f"{model['mask']} mask {model['mask_ratio']:g}, cell {model['mask_cell']}, distill {model['distill_weight']:g}, "
            f"{model['img_size']} px, {pre_epochs} ep ({pre_cfg['num_faces']} reals)"
        )
    auc, (lo, hi) = val_auc(run, bootstrap)
    per_epoch = [round(h["val_auc"], 3) for h in meta["history"] if "val_auc" in h]
    return {
        "run": str(run), "encoder": det["encoder"], "img_size": det["img_size"], "detector": det["name"],
        "pretraining": pretraining, "epochs": epochs, "batch": train["batch_size"], "blr": train["base_lr"],
        "sbi_ratio": config.get("sbi_ratio"), "paired": config.get("paired", False), "teachers": teachers,
        "faces_trained": faces,
        "idle_minutes": None if minutes is None else round(minutes, 1), "val_auc": round(auc, 3),
        "ci": [round(lo, 3), round(hi, 3)], "val_auc_per_epoch": per_epoch,
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", type=Path, nargs="+")
    ap.add_argument("--rates", type=Path, default=None)
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = ap.parse_args()
    rates = json.loads(args.rates.read_text()) if args.rates else {}
    rows = [describe(run, rates, args.bootstrap) for run in args.runs]
    print("| run | encoder | pretraining | fine-tuning | faces trained | idle min | DFDC val AUC [95% CI] | per epoch |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        tune = f"{r['detector']}, {r['epochs']} ep, batch {r['batch']}, blr {r['blr']:g}, SBI {r['sbi_ratio']}" + (
            ", paired" if r["paired"] else ""
        ) + (f", teachers {' + '.join(r['teachers'])}" if r["teachers"] else "")
        print(
            f"| {Path(r['run']).name} | {r['encoder']} {r['img_size']} px | {r['pretraining']} | {tune} | "
            f"{r['faces_trained']:,} | {r['idle_minutes'] if r['idle_minutes'] is not None else '-'} | "
            f"{r['val_auc']:.3f} [{r['ci'][0]:.3f}, {r['ci'][1]:.3f}] | {', '.join(map(str, r['val_auc_per_epoch']))} |"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
