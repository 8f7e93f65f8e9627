"""The FF++ sample videos scored by finetune runs or exported models: a report on 7 videos, never a selection.

For each model, every video of ../shared/data/ffpp-videos (one per manipulation method and three originals) gets its
video-level p(fake) and verdict from `detect`'s scanner at the model's own stored decision rule, 32 frames a video
(what the recipe's model card measures, `realface.recipe.measure_ffpp`), and whether every fake scores above every
original.

    python benchmarks/ffpp_runs.py runs/ftF96 runs/ftN96
"""

from __future__ import annotations

import argparse
from pathlib import Path

from realface.model import load_model
from realface.recipe import ffpp_fakes_above_originals, measure_ffpp

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", type=Path, nargs="+", help="finetune runs or exported model folders")
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "data", help="the shared data folder")
    parser.add_argument("--frames", type=int, default=32)
    args = parser.parse_args()
    for path in args.models:
        rows = measure_ffpp(load_model(path), args.shared, args.frames)
        cells = ", ".join(f"{r['method']} {'-' if r['p_fake'] is None else format(r['p_fake'], '.3f')} ({r['verdict']})"
                          for r in rows)  # fmt: skip
        above, scored = ffpp_fakes_above_originals(rows)
        print(f"{path}: {cells}; fakes above every original: {above} of {scored}")


if __name__ == "__main__":
    main()
