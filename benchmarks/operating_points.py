"""Would a stricter operating point meet issue 16's targets? False alarms on photos per group at several thresholds.

A model's threshold is fitted on DFDC val (its val_scores.csv) by a policy: `eer` (what `finetune` stores by
default) or `target_fpr` at a few DFDC-val false-positive rates. Each threshold is one number for everybody (no
per-group threshold). For each this prints the threshold, what it does to DFDC val (TPR, FPR, and the coverage
of the confident band refitted around it by `fit_decision`, the rule `finetune` stores), and what it does on the
unseen UTKFace photos that `benchmarks/fairness.py` scored (its report's scores.csv): the false-positive rate with
its bootstrap interval and the largest gap per group column with its interval, as `realface evaluate --groups`
computes them. No scoring is redone: both score files are read as they are.

    python benchmarks/fairness.py --model runs/RUN --out runs/fairness/RUN
    python benchmarks/operating_points.py runs/RUN/val_scores.csv runs/fairness/RUN/scores.csv
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np

from realface.eval.calibration import apply_temperature, probabilities_to_logits
from realface.eval.groups import group_table
from realface.eval.report import fmt, markdown_grid
from realface.eval.thresholds import FAKE, REAL, decide
from realface.train.finetune import fit_decision

COLUMNS = ("race", "gender", "age")
TARGET_GAP = 0.02  # issue 16: the largest gap of each column, upper end of its interval included


def read_scores(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def with_ci(entry: dict | None) -> str:
    """A value with its interval ({"value", "ci"}); n/a for None (a column with fewer than two groups has no gap)."""
    if entry is None:
        return "n/a"
    return f"{fmt(entry['value'])} [{fmt(entry['ci'][0])}, {fmt(entry['ci'][1])}]" if entry["ci"] else fmt(entry["value"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("val_scores", type=Path, help="a finetune run's val_scores.csv (DFDC val)")
    parser.add_argument("photo_scores", type=Path, help="scores.csv of a benchmarks/fairness.py report (all reals)")
    parser.add_argument("--fpr", type=float, nargs="+", default=[0.10, 0.05, 0.02],
                        help="DFDC val false-positive rates of the target_fpr thresholds")  # fmt: skip
    parser.add_argument("--bootstrap", type=int, default=1000)
    args = parser.parse_args()

    val = read_scores(args.val_scores)
    vy = np.array([int(r["label"]) for r in val])
    vs = np.array([float(r["score"]) for r in val])
    photos = read_scores(args.photo_scores)
    ps = np.array([float(r["score"]) for r in photos])
    if any(r["label"] != "0" for r in photos):
        raise SystemExit(f"{args.photo_scores}: expected real photos only")
    zeros, none = np.zeros(ps.size, dtype=int), np.zeros(ps.size, dtype=bool)
    groups = {c: np.array([r[f"by:{c}"] for r in photos]) for c in COLUMNS}

    policies = [("eer", {})] + [("target_fpr", {"fpr": f}) for f in args.fpr]
    head = ["DFDC val policy", "threshold", "DFDC val TPR", "DFDC val FPR", "confident band covers",
            "DFDC fakes told fake", "DFDC fakes told real", "photo FPR [95% CI]", "photos told fake",
            *(f"{c} gap [95% CI]" for c in COLUMNS), "issue 16 targets met"]  # fmt: skip
    rows = []
    for policy, params in policies:
        decision = fit_decision(vy, vs, None, policy, params)  # the rule finetune stores, with this policy
        t, band = decision["threshold"]["value"], decision["band"]
        # the rule holds on calibrated p(fake): val_scores.csv holds the raw ones, the photos' scores are calibrated
        # by the model's stored temperature, the one fit_decision finds again on the same val scores
        cal = np.asarray(apply_temperature(probabilities_to_logits(vs), decision["temperature"]))
        told = decide(cal[vy == 1], t, None, band)  # the verdicts `detect` would give the DFDC val fakes
        called = ps >= t
        overall = group_table(zeros, ps, none, np.full(ps.size, "all"), t, bootstrap=args.bootstrap)["groups"]["all"]
        gaps = {c: group_table(zeros, ps, none, g, t, bootstrap=args.bootstrap)["gaps"]["fpr"] for c, g in groups.items()}
        met = overall["fpr"] <= 0.10 and all(g["ci"] and g["ci"][1] <= TARGET_GAP for g in gaps.values() if g)
        name = "eer" if policy == "eer" else f"FPR <= {params['fpr']:g}"
        rows.append([name, fmt(t), fmt(float((cal[vy == 1] >= t).mean())), fmt(float((cal[vy == 0] >= t).mean())),
                     fmt(decision["val"]["coverage"]), fmt(float((told == FAKE).mean())), fmt(float((told == REAL).mean())),
                     with_ci({"value": float(called.mean()), "ci": overall["ci"]["fpr"]}),
                     fmt(float((decide(ps, t, None, band) == FAKE).mean())),
                     *(with_ci(g) for g in gaps.values()), "yes" if met else "no"])  # fmt: skip
    print(f"DFDC val: {args.val_scores} ({vy.size} faces); photos: {args.photo_scores} ({ps.size} reals); "
          f"{args.bootstrap} bootstrap resamples, 95% intervals.\n")
    print(markdown_grid(head, rows))


if __name__ == "__main__":
    main()
