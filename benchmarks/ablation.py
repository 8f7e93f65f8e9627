"""The ablation behind the ViT-tiny default (until 2026-12): one choice changed at a time from the `cpu-vit` recipe,
same budget per row. (The equal-wall-clock ablation over encoders that decides the CNN default is still to come.)

Every row is the recipe's own code (`realface.recipe.pretrain_stage` / `finetune_stage`) with one setting
changed from the `cpu-vit` preset without its forgery-mask loss (the base row):

- pretraining (each a full `cpu-vit`-preset pretraining run on the recipe's real faces, same epochs and batch):
  none (random init) vs MAE with random masking vs CRFR-P vs CRFR-P + self-distillation (= the recipe's, reused
  from its work folder when its settings match);
- detector: vit vs rffr vs competitive (the competitive row also reports the AUC of its one-branch export);
- training fakes: labelled DFDC fakes only vs SBI pseudo-fakes only vs both (the recipe's);
- fine-tuning: layer-wise lr decay, the recipe's (0.75) vs 0.6 vs 0.9 vs off; the base lr x4; the per-patch forgery-mask loss off vs on.

Fine-tuning budget per row: `--steps` optimizer steps of the preset's batch (64) over the DFDC train split, one
cosine cycle. Measured on the whole DFDC val split (never trained on; it is the split the default model is
selected on, so these are validation numbers, not a cross-dataset test), with a 95% cluster-bootstrap interval
over the `group` column (a source video and its fakes).

    python benchmarks/ablation.py --work runs/recipe-cpu-vit --out runs/ablation2 [--steps 150]

Resumable: finished runs are kept in OUT and reused. Prints a Markdown table and writes OUT/ablation.json.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

PRETRAININGS = {
    # name -> changes to the cpu-vit preset (None: no pretraining)
    "none": None,
    "MAE, random masking": {"mask": "random", "distill_weight": 0.0},
    "CRFR-P": {"distill_weight": 0.0},
    "CRFR-P + self-distillation": {},
}
BASE_PRETRAINING = "CRFR-P + self-distillation"
ROWS = [
    # (axis, row name, pretraining, changes to the cpu-vit preset's fine-tuning)
    *[("pretraining", name, name, {}) for name in PRETRAININGS],
    ("detector", "rffr (2x2 blocks)", BASE_PRETRAINING, {"detector": "rffr"}),
    ("detector", "competitive", BASE_PRETRAINING, {"detector": "competitive"}),
    ("training fakes", "labelled only", BASE_PRETRAINING, {"sbi_ratio": 0.0}),
    ("training fakes", "SBI only", BASE_PRETRAINING, {"labelled_fakes": False, "sbi_ratio": 1.0}),
    ("fine-tuning", "layer decay off (1.0)", BASE_PRETRAINING, {"layer_decay": 1.0}),
    ("fine-tuning", "layer decay 0.9", BASE_PRETRAINING, {"layer_decay": 0.9}),
    ("fine-tuning", "layer decay 0.6", BASE_PRETRAINING, {"layer_decay": 0.6}),
    ("fine-tuning", "base lr x4 (2e-3)", BASE_PRETRAINING, {"finetune_blr": 2e-3}),
    ("fine-tuning", "forgery-mask supervision (weight 1)", BASE_PRETRAINING, {"mask_weight": 1.0}),
]


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def pretraining_run(name: str, base, work: Path, out: Path, device: str):
    """The pretraining run folder for `name` (trained here unless the recipe's own run matches), or None."""
    from realface.recipe import pretrain_stage

    changes = PRETRAININGS[name]
    if changes is None:
        return None
    cfg = replace(base, **changes)
    recipe_run = work / "pretrain"
    config = recipe_run / "config.json"
    if not changes and config.is_file():
        model = json.loads(config.read_text())["model"]
        if (model["mask"], model["distill_weight"], model["img_size"]) == (cfg.mask, cfg.distill_weight, cfg.img_size):
            return recipe_run
    run = out / f"pretrain-{slug(name)}"
    faces = work / "faces"
    pretrain_stage(cfg, [faces / "utkface", faces / "dfdc-train-real.csv"], run, device=device, progress=True)
    return run


def pretraining_speed(run: Path) -> tuple[int, float]:
    """(images seen, images/s) of a pretraining run from its log.csv: the 90th percentile of the logged rates,
    i.e. the speed when the machine was not shared (other jobs on the same cores slow some stretches)."""
    import csv

    with (run / "log.csv").open(newline="") as f:
        speeds = [float(r["images_per_s"]) for r in csv.DictReader(f)]
    batch = json.loads((run / "config.json").read_text())["train"]["batch_size"]
    return len(speeds) * batch, float(np.percentile(speeds, 90))


def measure(run: Path, competitive: bool, workers: int) -> dict:
    """Val metrics of a finished fine-tuning run, with cluster-bootstrap intervals (and the one-branch export's)."""
    from realface.eval.metrics import average_precision, bootstrap_ci, eer, roc_auc
    from realface.eval.report import read_scores_csv
    from realface.train.finetune import VAL_SCORES

    rows = read_scores_csv(run / VAL_SCORES)
    y = np.array([r.label for r in rows])
    s = np.array([r.score for r in rows])
    groups = np.array([r.group or r.path for r in rows])
    result = {
        "auc": roc_auc(y, s),
        "auc_ci": bootstrap_ci(roc_auc, y, s, groups, n=500),
        "eer": eer(y, s)[0],
        "ap": average_precision(y, s),
    }
    if competitive:
        result["auc_exported"] = roc_auc(y, exported_scores(run, [r.path for r in rows], workers))
    return result


def exported_scores(run: Path, paths: list[str], workers: int) -> np.ndarray:
    """p(fake) of the one-branch export (branch chosen on 256 of the val faces) for the val faces, in order."""
    import tempfile

    from realface.bundle import export_bundle, load_bundle
    from realface.data.labelled import DetectionFaces, build_items
    from realface.faces.manifest import read_face_manifest
    from realface.train.finetune import calibration_batch, score_dataset, split_records

    bundle = load_bundle(run)
    config = json.loads((run / "config.json").read_text())
    _, val = split_records([r for p in config["data"] for r in read_face_manifest(Path(p))])
    val_set = DetectionFaces(build_items(val), bundle.pre)
    if [str(it.record.path) for it in val_set.items] != paths:
        raise SystemExit(f"{run}: val faces differ from {run}/val_scores.csv")
    with tempfile.TemporaryDirectory() as tmp:
        shipped = load_bundle(export_bundle(bundle, Path(tmp), calibration=calibration_batch(val_set)))
        probs, _ = score_dataset(shipped.detector, val_set, 64, workers)
    return probs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="the work folder of `realface recipe cpu-vit`")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=150, help="fine-tuning optimizer steps per row")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--rows", nargs="*", default=None, help="run only these rows, in this order (names as in the table)")
    args = parser.parse_args()

    from realface.recipe import PRESETS, finetune_stage
    from realface.train.finetune import VAL_SCORES

    # The rows run without the patch head (mask_weight 0), as the preset did when the table was first measured;
    # the forgery-mask row switches it on.
    base = replace(PRESETS["cpu-vit"], mask_weight=0.0, finetune_epochs=1, max_steps_per_epoch=args.steps)
    dfdc = args.work / "faces" / "dfdc" / "manifest.csv"
    if not dfdc.is_file():
        raise SystemExit(f"{dfdc} not found: run `realface recipe cpu-vit --work {args.work}` (its preprocess stage) first")
    args.out.mkdir(parents=True, exist_ok=True)
    by_name = {r[1]: r for r in ROWS}
    rows = ROWS if args.rows is None else [by_name[n] for n in args.rows if n in by_name]  # in the order given
    if args.rows and len(rows) != len(args.rows):
        raise SystemExit(f"unknown rows in {args.rows}; the rows are: {', '.join(r[1] for r in ROWS)}")
    pretrained = {}  # pretraining name -> run folder (or None), made when a row first needs it
    results = []
    for axis, name, pretraining, changes in rows:
        if pretraining not in pretrained:
            pretrained[pretraining] = pretraining_run(pretraining, base, args.work, args.out, args.device)
        cfg = replace(base, **(PRETRAININGS[pretraining] or {}), **changes)
        run = args.out / f"finetune-{slug(pretraining)}-{slug(name) if changes else 'base'}"
        if not (run / VAL_SCORES).is_file():
            print(f"== {axis}: {name}", flush=True)
            start = time.perf_counter()
            finetune_stage(cfg, [dfdc], run, pretrained[pretraining], device=args.device, progress=True)
            (run / "wall_s.txt").write_text(f"{time.perf_counter() - start:.0f}\n")
        row = {"axis": axis, "row": name, "pretraining": pretraining, "run": str(run), **changes,
               "wall_s": int((run / "wall_s.txt").read_text()), **measure(run, cfg.detector == "competitive", cfg.workers)}  # fmt: skip
        results.append(row)
        (args.out / "ablation.json").write_text(json.dumps(results, indent=2, default=float))

    print(f"\nDFDC val split, {args.steps} fine-tuning steps of {base.finetune_batch} faces per row\n")
    print("| axis | row | pretraining | DFDC val AUC [95% CI] | EER | AP | fine-tune wall s |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        lo, hi = r["auc_ci"]
        auc = f"{r['auc']:.3f} [{lo:.3f}, {hi:.3f}]"
        if "auc_exported" in r:
            auc += f"; one-branch export {r['auc_exported']:.3f}"
        print(f"| {r['axis']} | {r['row']} | {r['pretraining']} | {auc} | {r['eer']:.3f} | {r['ap']:.3f} | {r['wall_s']} |")
    print("\n| pretraining | images seen | images/s (2 cores, 90th percentile of the log) |\n|---|---|---|")
    for name, run in pretrained.items():
        if run is not None:
            seen, speed = pretraining_speed(run)
            print(f"| {name} | {seen} | {speed:.0f} |")


if __name__ == "__main__":
    main()
