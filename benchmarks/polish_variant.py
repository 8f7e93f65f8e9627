"""The `cpu` preset's polish from a finished fine-tuning stage, with RecipeConfig fields replaced, then exported and
measured by the recipe's own code (DFDC val, robustness, heatmaps, FF++ videos): the polish rows of BENCHMARKS.md
("Reenactment-like blends in the polish", "The self-teacher off the blends").

    python benchmarks/polish_variant.py runs/polish-x sbi_hulls=lower polish_sbi_ratio=1.0 teacher_sbi=False

WORK (--work, default runs/recipe-cpu-timed) is a `make default-model` work folder: its finetune stage is where the
polish starts, its faces what it reads. OUT-export gets the weights and card; OUT/card.json the card. A value is a
Python literal; `*_hulls` values are comma-separated names. ~20-30 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import ast
import json
import time
from dataclasses import fields, replace
from pathlib import Path

from realface.recipe import PRESETS, RecipeConfig, export_and_measure, export_card, polish_stage

REPO = Path(__file__).resolve().parents[1]


def parse_changes(pairs: list[str]) -> dict[str, object]:
    """KEY=VALUE pairs as RecipeConfig fields (an error for a name it does not have)."""
    names = {f.name for f in fields(RecipeConfig)}
    changes: dict[str, object] = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        if key not in names or not value:
            raise SystemExit(f"not a RecipeConfig field=value: {pair}")
        changes[key] = tuple(value.split(",")) if key.endswith("hulls") else ast.literal_eval(value)
    return changes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="the polish run folder to write")
    parser.add_argument("changes", nargs="*", metavar="FIELD=VALUE", help="RecipeConfig fields replaced in the cpu preset")
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "recipe-cpu-timed")
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "data")
    args = parser.parse_args()
    cfg = replace(PRESETS["cpu"], **parse_changes(args.changes))
    dfdc = args.work / "faces" / "dfdc" / "manifest.csv"
    start = time.perf_counter()
    polish_stage(cfg, dfdc, [args.work / "faces" / "utkface"], args.out, args.work / "finetune", progress=False)
    seconds = time.perf_counter() - start
    export = Path(f"{args.out}-export")
    card = export_and_measure(cfg, args.out, dfdc, args.shared, export, preset="cpu+" + ",".join(args.changes),
                              times={"polish": seconds}, note="benchmarks/polish_variant.py " + " ".join(args.changes))
    export_card(card, export, args.out)
    print(json.dumps({"polish_s": round(seconds), "auc": round(card["dfdc_val"]["auc"], 4),
                      "coverage": round(card["dfdc_val"]["coverage"], 3),
                      "ffpp": {r["video"]: r["p_fake"] and round(r["p_fake"], 3) for r in card["ffpp_videos"]}}))


if __name__ == "__main__":
    main()
