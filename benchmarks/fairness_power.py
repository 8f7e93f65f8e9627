"""How small a false-positive-rate gap the fairness table can show with the groups it has: the gap target's power.

Issue 16's target is a gap between the highest and lowest group's false-positive rate of at most 0.02, *upper end
of its 95% interval included*. With groups of a few hundred photos and false alarms near 1%, the interval is wide
by itself, and the highest-minus-lowest of several noisy groups is above zero even when every group is served
alike. This script measures how often a model with *no gap at all* would meet the target: for each overall
false-positive rate p, it draws many data sets in which every group of a column has exactly the rate p (binomial
counts, with the group sizes of a real fairness report), and computes the gap and its interval with the same
function the report uses (`realface.eval.groups.group_table`, the same bootstrap). It prints, per column and p,
the median gap, the median upper end and the share of data sets that meet the target.

    python benchmarks/fairness_power.py runs/fairness/report/metrics.json [--fpr 0.005 0.01 0.02] [--sims 60]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from realface.eval.groups import group_table

TARGET_GAP = 0.02  # as in benchmarks/fairness.py


def group_sizes(metrics: Path) -> dict[str, dict[str, int]]:
    """{column: {group: faces}} of the first data set of an evaluate metrics.json with groups."""
    datasets = json.loads(metrics.read_text())["datasets"]
    columns = next(d["groups"]["columns"] for d in datasets.values() if "groups" in d)
    return {c: {name: g["n"] for name, g in col["groups"].items()} for c, col in columns.items()}


def simulate(sizes: dict[str, int], fpr: float, sims: int, bootstrap: int, seed: int) -> np.ndarray:
    """(sims, 2): the gap and its interval's upper end for `sims` data sets where every group has rate `fpr`."""
    rng = np.random.default_rng(seed)
    names = np.repeat(list(sizes), list(sizes.values()))
    out = np.zeros((sims, 2))
    for i in range(sims):
        called = np.concatenate([rng.random(n) < fpr for n in sizes.values()])  # each group: rate fpr exactly
        table = group_table(np.zeros(names.size, np.int64), called.astype(float), np.zeros(names.size, bool), names,
                            0.5, bootstrap=bootstrap, seed=i)  # fmt: skip
        gap = table["gaps"]["fpr"]
        out[i] = gap["value"], gap["ci"][1]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("metrics", type=Path, help="metrics.json of a fairness report (for its group sizes)")
    ap.add_argument("--fpr", type=float, nargs="+", default=[0.005, 0.01, 0.013, 0.02, 0.032])
    ap.add_argument("--sims", type=int, default=60, help="simulated data sets per column and rate")
    ap.add_argument("--bootstrap", type=int, default=1000, help="resamples per interval (fairness.py's default)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    print("| column | groups (faces) | FPR of every group | median gap | median upper end | share meeting <= 0.02 |")
    print("|---|---|---|---|---|---|")
    for column, sizes in group_sizes(args.metrics).items():
        shown = ", ".join(f"{name} {n}" for name, n in sizes.items())
        for fpr in args.fpr:
            result = simulate(sizes, fpr, args.sims, args.bootstrap, args.seed)
            met = float((result[:, 1] <= TARGET_GAP + 1e-12).mean())
            print(f"| {column} | {shown} | {fpr:.3f} | {np.median(result[:, 0]):.3f} | {np.median(result[:, 1]):.3f} "
                  f"| {met:.2f} |")  # fmt: skip


if __name__ == "__main__":
    main()
