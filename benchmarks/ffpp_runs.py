"""The FF++ sample videos scored by finetune runs or exported models: a report on 7 videos, never a selection.

For each model, every video of ../shared/data/ffpp-videos (one per manipulation method and three originals) gets its
video-level p(fake) and verdict from `detect`'s scanner at the model's own stored decision rule, 32 frames a video
(what the recipe's model card measures, `realface.recipe.measure_ffpp`), and whether every fake scores above every
original.

    python benchmarks/ffpp_runs.py runs/ftF96 runs/ftN96

With --frame-scores, the frames instead: each fake video's frame-level AUC against its own original's frames (same
`group` in the FF++ manifest, where the set holds it) and against every original's frames, from the per-face CSV
that `realface detect ../shared/data/ffpp-videos --frames 32 --csv > F.csv` writes for a model: whether a model has
any signal for a method, rather than how seven video means happen to rank.

    python benchmarks/ffpp_runs.py --frame-scores F.csv
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

from realface.eval.metrics import roc_auc
from realface.model import load_model
from realface.recipe import ffpp_fakes_above_originals, measure_ffpp

REPO = Path(__file__).resolve().parents[1]


def frame_aucs(scores_csv: Path, manifest: Path) -> list[tuple[str, float | None, float]]:
    """(video, frame AUC against its own original or None, frame AUC against every original) for each fake video of
    `manifest` (path,label,method,group), from `detect --csv` rows (path, p_fake; rows without a face are skipped)."""
    with manifest.open(newline="") as f:
        videos = list(csv.DictReader(f))
    frames: dict[str, list[float]] = {}
    with scores_csv.open(newline="") as f:
        for row in csv.DictReader(f):
            if row.get("p_fake"):
                frames.setdefault(Path(row["path"]).resolve().as_posix(), []).append(float(row["p_fake"]))

    def scores(video: dict[str, str]) -> list[float]:
        return frames.get((manifest.parent / video["path"]).resolve().as_posix(), [])

    originals = {v["group"]: scores(v) for v in videos if v["label"] == "real"}
    every = [p for s in originals.values() for p in s]
    out = []
    for video in (v for v in videos if v["label"] == "fake"):
        fake, own = scores(video), originals.get(video["group"])

        def auc(reals: list[float]) -> float:
            return roc_auc([1] * len(fake) + [0] * len(reals), fake + reals)

        if fake:
            out.append((video["path"], auc(own) if own else None, auc(every)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", type=Path, nargs="*", help="finetune runs or exported model folders")
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "data", help="the shared data folder")
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--frame-scores", type=Path, nargs="+", default=[], metavar="CSV",
                        help="`realface detect --csv` outputs of the FF++ folder: print frame-level AUCs instead")
    args = parser.parse_args()
    if not args.models and not args.frame_scores:
        parser.error("give models to score, or --frame-scores CSV")
    for path in args.frame_scores:
        rows = frame_aucs(path, args.shared / "ffpp-videos" / "manifest.csv")
        cells = ", ".join(f"{v}: {'-' if own is None else format(own, '.2f')} vs its original, {every:.2f} vs all" for v, own, every in rows)
        print(f"{path}: {cells}")
    for path in args.models:
        rows = measure_ffpp(load_model(path), args.shared, args.frames)
        cells = ", ".join(f"{r['method']} {'-' if r['p_fake'] is None else format(r['p_fake'], '.3f')} ({r['verdict']})"
                          for r in rows)  # fmt: skip
        above, scored = ffpp_fakes_above_originals(rows)
        print(f"{path}: {cells}; fakes above every original: {above} of {scored}")


if __name__ == "__main__":
    main()
