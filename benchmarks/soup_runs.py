"""Average the weights of finished finetune runs that share a starting point (a "model soup"), then score the
average on DFDC val as finetune scores its selected checkpoint (decision.json, val_scores.csv).

    python benchmarks/soup_runs.py OUT RUN RUN ... [--val runs/faces224/dfdc/manifest.csv]

The runs must share their starting weights (e.g. polishes of one detector, `finetune --init`): the averaged weights
of runs from one start stay in one basin (Wortsman et al. 2022, "Model soups"); from different starts they do not.
OUT is a finetune run folder like any other (best/ and last/ hold the average; config.json names the runs), so
`benchmarks/fairness.py --model OUT` and `benchmarks/ablation_runs.py OUT` take it. Inference costs one model.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from realface.bundle import load_bundle
from realface.data.labelled import DetectionFaces, build_items
from realface.faces.manifest import read_face_manifest
from realface.train import checkpoint as ckpt
from realface.train.finetune import record_validation, score_dataset


def soup(runs: list[Path], out: Path) -> None:
    """Write the mean of the runs' selected weights (integer buffers from the first run) as the run `out`."""
    states = [ckpt.load_weights(run / "best" / ckpt.WEIGHTS) for run in runs]
    mean = {k: sum(s[k] for s in states) / len(states) if v.is_floating_point() else v for k, v in states[0].items()}
    config = json.loads((runs[0] / ckpt.CONFIG).read_text())
    for folder in ("best", "last"):
        (out / folder).mkdir(parents=True, exist_ok=True)
        ckpt.save_weights(out / folder / ckpt.WEIGHTS, mean)
        shutil.copy(runs[0] / folder / "meta.json", out / folder / "meta.json")
    ckpt.write_json(out / ckpt.CONFIG, {**config, "soup": [str(run) for run in runs]})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("runs", type=Path, nargs="+", help="finetune runs with one starting point")
    parser.add_argument("--val", type=Path, default=Path("runs/faces224/dfdc/manifest.csv"),
                        help="the preprocessed DFDC manifest (its split=val rows are scored)")
    args = parser.parse_args()
    soup(args.runs, args.out)
    bundle = load_bundle(args.out)
    val = [r for r in read_face_manifest(args.val) if r.extra.get("split") == "val"]
    val_set = DetectionFaces(build_items(val), bundle.pre)
    probs, uncertainty = score_dataset(bundle.detector, val_set, 64, 1)
    decision = record_validation(args.out, val_set, probs, uncertainty)
    print(f"{args.out}: DFDC val AUC {decision['val']['auc']:.4f}, confident band coverage {decision['val']['coverage']:.3f}")


if __name__ == "__main__":
    main()
