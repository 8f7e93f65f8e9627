"""False alarms on ordinary photos, per race, gender and age: the table of the "Fairness" sections.

The faces are real UTKFace photos that no stage of the default recipe saw: the recipe reads shard 0/3 of the
UTKFace manifest only (`preprocess --shard 0/3`: every third photo in sorted path order, from the first), and
selects and fits its threshold on DFDC val. This script draws COUNT photos at random (SEED) from shard SHARD
(default 1/3; the default COUNT takes all of it), crops their faces once, with the crop settings the model
expects, into a cache under runs/, and runs `realface evaluate` on them through a protocol file that names the group columns
(race, gender, age) and UTKFace's codes, at the model's stored threshold. It writes the evaluate report and
`fairness.md` (the table, the split, and whether the targets are met) to OUT, and prints fairness.md.

Targets (issue 16): the false-positive rate over all these faces <= 0.10, and the gap between the highest and
lowest group's false-positive rate of each column <= 0.02, upper end of its 95% interval included.

    python benchmarks/fairness.py                        # the shipped default model
    python benchmarks/fairness.py --model runs/ft        # any finetune run or exported weights
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
from pathlib import Path

import numpy as np

from realface.model import load_model
from realface.eval.evaluate import evaluate
from realface.eval.groups import RATE_TITLES
from realface.eval.thresholds import band_text
from realface.eval.protocol import load_protocol
from realface.eval.report import fmt, markdown_grid
from realface.faces.media import expand_inputs
from realface.faces.pipeline import PipelineConfig
from realface.faces.preprocess import preprocess

REPO = Path(__file__).resolve().parents[1]
COLUMNS = ("race", "gender", "age")
TARGET_FPR = 0.10  # overall false-positive rate on ordinary photos
TARGET_GAP = 0.02  # false-positive-rate gap between the groups of a column, upper end of its interval


def sample_manifest(utk_manifest: Path, shard: tuple[int, int], count: int, seed: int, out: Path) -> Path:
    """Write `out`: `count` rows drawn at random (seed) from shard i/n of the manifest, taken exactly as
    `preprocess --shard i/n` takes them; paths absolute, the other columns as in the manifest."""
    index, n = shard
    items = expand_inputs([utk_manifest])[index::n]
    picked = np.sort(np.random.default_rng(seed).choice(len(items), size=min(count, len(items)), replace=False))
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "label", *COLUMNS])
        for k in picked:
            it = items[k]
            writer.writerow([str(it.path), it.label, *(it.extra[c] for c in COLUMNS)])
    return out


def _shard(text: str) -> tuple[int, int]:
    i, n = (int(p) for p in text.split("/"))
    if not 0 <= i < n:
        raise argparse.ArgumentTypeError(f"--shard i/n needs 0 <= i < n, got {text}")
    return i, n


def fairness_table(groups: dict) -> tuple[list[str], list[list[str]]]:
    """(header, rows): all faces, then each group of each column and the column's FPR gap."""

    def cell(record: dict, rate: str) -> str:
        ci = record["ci"][rate]
        return f"{fmt(record[rate])} [{fmt(ci[0])}, {fmt(ci[1])}]" if ci else fmt(record[rate])

    rates = ("fpr", "told_fake", "uncertain")
    header = ["group", "faces", *(f"{RATE_TITLES[r]} [95% CI]" for r in rates)]
    rows = [["all faces", str(groups["overall"]["n"]), *(cell(groups["overall"], r) for r in rates)]]
    for column, table in groups["columns"].items():
        rows += [[f"{column}: {name}", str(r["n"]), *(cell(r, m) for m in rates)] for name, r in table["groups"].items()]
        fpr, told = table["gaps"]["fpr"], table["gaps"]["told_fake"]
        rows.append([f"**{column}: gap** (FPR: {fpr['highest']} - {fpr['lowest']}; told: {told['highest']} - "
                     f"{told['lowest']})", "", f"**{gap_cell(fpr)}**", gap_cell(told), ""])  # fmt: skip
    return header, rows


def gap_cell(gap: dict) -> str:
    ci = gap["ci"] or [gap["value"]] * 2
    return f"{fmt(gap['value'])} [{fmt(ci[0])}, {fmt(ci[1])}]"


def verdict_check(groups: dict) -> list[str]:
    """One line per target: met or not, with the numbers."""
    overall = groups["overall"]
    high = overall["ci"]["fpr"][1] if overall["ci"]["fpr"] else overall["fpr"]
    lines = [f"- overall FPR <= {TARGET_FPR}: **{'met' if overall['fpr'] <= TARGET_FPR else 'not met'}** "
             f"(FPR {fmt(overall['fpr'])}; the upper end of its interval, {fmt(high)}, "
             f"{'within' if high <= TARGET_FPR else 'above'} the target)"]  # fmt: skip
    for column, table in groups["columns"].items():
        gap = table["gaps"]["fpr"]
        high = gap["ci"][1] if gap["ci"] else gap["value"]
        lines.append(f"- FPR gap across {column} <= {TARGET_GAP}, interval included: "
                     f"**{'met' if high <= TARGET_GAP else 'not met'}** (gap {fmt(gap['value'])}, {gap['highest']} "
                     f"vs {gap['lowest']}; upper end {fmt(high)})")  # fmt: skip
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None, help="finetune run or exported weights (default: shipped)")
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "data", help="the shared data folder")
    parser.add_argument("--shard", type=_shard, default=(1, 3), help="UTKFace shard i/n to draw from (default 1/3)")
    parser.add_argument("--count", type=int, default=8000,
                        help="faces drawn from the shard (default 8000: all of a third of UTKFace, 7,901 photos)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--age-bins", default="0,13,20,40,60", help="lower edges of the age ranges, years")
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "fairness", help="cache of samples and crops")
    parser.add_argument("--out", type=Path, default=None, help="report folder (default WORK/report)")
    parser.add_argument("--workers", type=int, default=1, help="processes cropping faces")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    bundle = load_model(args.model, device=args.device)
    i, n = args.shard
    name = f"utkface-shard{i}of{n}-n{args.count}-seed{args.seed}"
    sample = sample_manifest(args.shared / "utkface" / "manifest.csv", args.shard, args.count, args.seed,
                             args.work / name / "sample.csv")  # fmt: skip
    pipe = PipelineConfig(crop_size=bundle.pre.crop_size, margin=bundle.pre.crop_margin, assume_cropped=True)
    faces = args.work / name / f"faces-{pipe.crop_size}px-margin{pipe.margin}"
    done = preprocess([sample], faces, config=pipe, workers=args.workers)
    print(done.summary())
    protocol_file = args.work / name / "protocol.yaml"
    protocol_file.write_text(
        f"# {args.count} real UTKFace photos drawn at random (seed {args.seed}) from shard {i}/{n} of its manifest\n"
        f"name: fairness-{name}\n"
        "datasets:\n"
        f"  {name}:\n"
        f"    data: {faces.name}/manifest.csv\n"
        f"    groups: [{', '.join(COLUMNS)}]\n"
        "    codes: utkface\n"
        f"    age_bins: [{args.age_bins}]\n"
    )
    out = args.out or args.work / name / "report"
    report = evaluate(bundle, load_protocol(protocol_file), out, bootstrap=args.bootstrap)
    groups = report["datasets"][name]["groups"]
    card = report["model"].get("card") or {}
    weights = sorted(Path(bundle.source).glob("*.safetensors")) or sorted(Path(bundle.source).glob("best/*.safetensors"))
    digest = hashlib.sha256(weights[0].read_bytes()).hexdigest()[:12] if weights else "unknown"
    lines = [
        f"Model: {json.dumps(card.get('name', str(bundle.source)))} of {card.get('date', 'unknown date')} "
        f"(weights sha256 {digest}...), threshold {fmt(report['threshold']['value'])} ({report['threshold']['source']}), confidence band "
        f"{band_text(report['band'])}.",
        f"Faces: {groups['overall']['n']} real UTKFace photos, drawn at random (seed {args.seed}) from shard {i}/{n} "
        f"of ../shared/data/utkface/manifest.csv (the photos at positions {i}, {i + n}, {i + 2 * n}, ... of the "
        f"manifest sorted by path, as `preprocess --shard {i}/{n}` takes them); no stage of the recipe reads another "
        "UTKFace shard than 0/3, and the threshold is fitted on DFDC val. Intervals: "
        f"{args.bootstrap} bootstrap resamples of faces within each group, 95%.",
        "",
        markdown_grid(*fairness_table(groups)),
        "",
        "Reals told \"fake\": at or above the threshold and confident (the verdict `detect` gives); the others at or "
        "above it are \"uncertain\". The targets count every real at or above the threshold (FPR); the told-fake rate "
        "and its gaps are what a user sees.",
        "",
        "Targets:",
        *verdict_check(groups),
        "",
        f"Command: `python benchmarks/fairness.py{'' if args.model is None else f' --model {args.model}'} "
        f"--shard {i}/{n} --count {args.count} --seed {args.seed}`; report: {out / 'index.html'}",
    ]
    text = "\n".join(lines) + "\n"
    (out / "fairness.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
