"""Evaluation reports from already computed face scores: CSV, metrics.json, Markdown, plots and HTML.

`write_report(rows, out_dir, threshold=..., band=..., model_info=...)` writes into `out_dir`:
- `scores.csv`: every face's score, so any other metric can be computed later (`read_scores_csv`), and
  its group in each group column (`by:COLUMN`);
- `metrics.json`: per dataset, frame level and video level (three aggregations), `metrics.binary_report`
  plus bootstrap 95% intervals of AUC, EER and AP, ECE, and the coverage/accuracy of the confident band;
  for faces with groups (`FaceScore.attributes`), "groups": rates per group of each column with intervals
  and the largest gaps (`groups.group_table`), and the same rates over all faces;
- `report.md`: a summary table across datasets, then a table per dataset (frame and video level) and one
  per group column;
- `plots/`: per dataset a ROC curve, score histograms with the threshold, coverage against accuracy, a bar
  chart of the rates per group of each group column with interval whiskers; one reliability diagram of all
  faces;
- `errors/`: thumbnails of the hardest false positives and false negatives of each dataset;
- `index.html`: one page showing all of the above (images referenced relatively).

Conventions as in `realface.eval.metrics`: label 1 = fake, score = p(fake), `score >= threshold` is fake.
A dataset holding one class gets the metrics defined for it (accuracy, APCER or BPCER) and a note; the
others are null in JSON and "n/a" in tables, never NaN.
"""

from __future__ import annotations

import csv
import dataclasses
import html
import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np

from realface.errors import RealfaceError
from realface.eval.aggregate import AGGREGATIONS, aggregate_labels, aggregate_scores
from realface.eval.calibration import expected_calibration_error, plot_reliability_diagram
from realface.eval.groups import RATE_TITLES, RATES, UNKNOWN, group_table
from realface.eval.metrics import (
    accuracy,
    apcer,
    average_precision,
    binary_report,
    bootstrap_ci,
    bpcer,
    confusion_counts,
    eer,
    roc_auc,
    roc_curve,
)
from realface.eval.thresholds import (
    FAKE,
    REAL,
    UNCERTAIN,
    VIDEO_AGGREGATION,
    Band,
    Threshold,
    band_json,
    band_sides,
    band_text,
    confident,
    coverage_accuracy_curve,
    decide,
    distance_confidence,
    video_verdict,
)

VERDICTS = (REAL, FAKE, UNCERTAIN)
SCORE_COLUMNS = (
    "dataset", "path", "source", "frame", "face", "video", "group", "label", "score", "confidence", "verdict",
)
ATTRIBUTE_PREFIX = "by:"  # scores.csv column of a face's group in a group column: by:race, by:age, ...
HARDEST_K = 8  # hardest false positives / negatives shown per dataset
THUMB_SIZE = 128  # thumbnails fit in THUMB_SIZE x THUMB_SIZE pixels
CI_ALPHA = 0.05  # 95% intervals

# metrics given a bootstrap interval: name -> (labels, scores) -> value
CI_METRICS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "auc": roc_auc,
    "eer": lambda y, s: eer(y, s)[0],
    "ap": average_precision,
}
# binary_report keys that need both classes: null for a single-class set
TWO_CLASS_KEYS = (
    "auc", "eer", "eer_threshold", "ap", "balanced_accuracy", "tpr_at_fpr_0.01", "tpr_at_fpr_0.1",
    "apcer", "bpcer", "acer", "hter",
)
LEVEL_TITLES = {
    "frame": "faces",
    "mean": "videos (mean)",
    "confidence_weighted": "videos (confidence-weighted)",
    "max_face_then_mean": "videos (max face, then mean)",
}


# ---------------------------------------------------------------------------------------------
# score rows


@dataclass(frozen=True, kw_only=True)
class FaceScore:
    """The score of one face; one row of `scores.csv`."""

    dataset: str  # name of the test set
    path: str  # the face crop (or image / video) that was scored
    source: str = ""  # the image or video the face came from
    frame: int = -1  # frame index in the video; -1 for an image or when unknown
    face: int = 0  # index of the face within its frame
    video: str = ""  # video id for video-level metrics; "" when the face belongs to no video
    group: str = ""  # bootstrap cluster (e.g. the source video of a real clip and its fakes); "" = video
    label: int  # 1 = fake, 0 = real
    score: float  # p(fake) in [0, 1]
    confidence: float | None = None  # in [0, 1] (e.g. 1 - u); None: distance to the threshold
    verdict: str = ""  # "real", "fake", "uncertain"; "" = not decided yet (see `complete_scores`)
    # the face's group per group column, e.g. {"race": "Asian", "age": "20-39"} (see `groups.Grouping`)
    attributes: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        where = f"face {self.path!r} of {self.dataset!r}"
        if not self.dataset:
            raise RealfaceError(f"face {self.path!r}: dataset name is empty")
        if self.label not in (0, 1) or isinstance(self.label, bool):
            raise RealfaceError(f"{where}: label must be 0 (real) or 1 (fake), got {self.label!r}")
        object.__setattr__(self, "label", int(self.label))
        for name in ("score", "confidence"):
            value = getattr(self, name)
            if value is None and name == "confidence":
                continue
            if not isinstance(value, (int, float, np.number)) or not 0.0 <= float(value) <= 1.0:
                raise RealfaceError(f"{where}: {name} must be a number in [0, 1], got {value!r}")
            object.__setattr__(self, name, float(value))
        object.__setattr__(self, "frame", int(self.frame))
        object.__setattr__(self, "face", int(self.face))
        if self.verdict not in ("", *VERDICTS):
            raise RealfaceError(f"{where}: verdict must be one of {', '.join(VERDICTS)}, got {self.verdict!r}")
        if not isinstance(self.attributes, Mapping) or not all(
            isinstance(k, str) and k and isinstance(v, str) for k, v in self.attributes.items()
        ):
            raise RealfaceError(f"{where}: attributes must map column names to group names, got {self.attributes!r}")
        object.__setattr__(self, "attributes", dict(self.attributes))


def scores_from_table(table: Any) -> list[FaceScore]:
    """FaceScore rows from a column table: {column: values} (or a pandas DataFrame).

    Needs `dataset`, `path`, `label`, `score`; other `SCORE_COLUMNS` are optional.
    """
    if hasattr(table, "to_dict") and not isinstance(table, Mapping):
        table = table.to_dict("list")
    if not isinstance(table, Mapping):
        raise RealfaceError(f"scores must be a list of FaceScore or a column table, got {type(table).__name__}")
    unknown = sorted(set(table) - set(SCORE_COLUMNS))
    missing = [c for c in ("dataset", "path", "label", "score") if c not in table]
    if unknown or missing:
        raise RealfaceError(f"score table: missing columns {missing}, unknown columns {unknown}")
    lengths = {len(v) for v in table.values()}
    if len(lengths) != 1:
        raise RealfaceError(f"score table: columns differ in length {sorted(lengths)}")
    n = lengths.pop()
    columns = {k: list(v) for k, v in table.items()}
    return [FaceScore(**{k: _plain(v[i]) for k, v in columns.items()}) for i in range(n)]


def _plain(value: Any) -> Any:
    """numpy scalars -> Python scalars; NaN confidence -> None."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def as_face_scores(scores: Sequence[FaceScore] | Any) -> list[FaceScore]:
    """A non-empty list of FaceScore from a list of them or a column table."""
    rows = list(scores) if isinstance(scores, (list, tuple)) else scores_from_table(scores)
    if not rows:
        raise RealfaceError("no scores to report")
    if not all(isinstance(r, FaceScore) for r in rows):
        raise RealfaceError("scores must all be FaceScore rows")
    return rows


def complete_scores(rows: Sequence[FaceScore], threshold: float | Threshold, band: Band) -> list[FaceScore]:
    """Fill missing confidences (distance to the threshold) and verdicts (`thresholds.decide`)."""
    scores = np.array([r.score for r in rows])
    distance = distance_confidence(scores, threshold)
    conf = np.array([distance[i] if r.confidence is None else r.confidence for i, r in enumerate(rows)])
    verdicts = decide(scores, threshold, conf, band)
    return [
        dataclasses.replace(r, confidence=float(conf[i]), verdict=r.verdict or str(verdicts[i]))
        for i, r in enumerate(rows)
    ]


def write_scores_csv(rows: Sequence[FaceScore], path: Path) -> Path:
    """Write rows as CSV with `SCORE_COLUMNS` (scores with full float precision), then a `by:COLUMN`
    column per group column any row has (empty where a row has none)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    group_columns = list(dict.fromkeys(k for r in rows for k in r.attributes))
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow([*SCORE_COLUMNS, *(ATTRIBUTE_PREFIX + c for c in group_columns)])
        for r in rows:
            writer.writerow(["" if getattr(r, c) is None else repr(getattr(r, c)) if c in ("score", "confidence")
                             else getattr(r, c) for c in SCORE_COLUMNS]
                            + [r.attributes.get(c, "") for c in group_columns])
    return path


def read_scores_csv(path: Path) -> list[FaceScore]:
    """Rows written by `write_scores_csv`."""
    with Path(path).open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames is None or not {"dataset", "path", "label", "score"} <= set(reader.fieldnames):
            raise RealfaceError(f"{path}: not a scores CSV (needs dataset, path, label, score columns)")
        rows = []
        for line, row in enumerate(reader, start=2):
            try:
                rows.append(FaceScore(
                    dataset=row["dataset"], path=row["path"], source=row.get("source") or "",
                    frame=int(row.get("frame") or -1), face=int(row.get("face") or 0),
                    video=row.get("video") or "", group=row.get("group") or "",
                    label=int(row["label"]), score=float(row["score"]),
                    confidence=float(row["confidence"]) if row.get("confidence") else None,
                    verdict=row.get("verdict") or "",
                    attributes={k[len(ATTRIBUTE_PREFIX):]: v for k, v in row.items()
                                if k and k.startswith(ATTRIBUTE_PREFIX) and v},
                ))
            except ValueError as err:
                raise RealfaceError(f"{path}:{line}: {err}") from None
    return rows


def by_dataset(rows: Sequence[FaceScore]) -> dict[str, list[FaceScore]]:
    """Rows per dataset, datasets in order of first appearance."""
    out: dict[str, list[FaceScore]] = {}
    for r in rows:
        out.setdefault(r.dataset, []).append(r)
    return out


# ---------------------------------------------------------------------------------------------
# metrics


def _clusters(keys: Sequence[str]) -> np.ndarray | None:
    """Cluster ids for the bootstrap, or None when every sample is its own cluster."""
    return None if len(set(keys)) == len(keys) else np.asarray(keys)


def confident_band(
    labels: np.ndarray, scores: np.ndarray, confidences: np.ndarray, threshold: float, band: Band
) -> dict:
    """Coverage and accuracy of the decisions whose confidence reaches the band of their side (the others are
    "uncertain")."""
    kept = confident(scores, threshold, confidences, band)
    n_kept = int(kept.sum())
    correct = (scores >= threshold).astype(np.int64) == labels
    return {
        "band": band_json(band),
        "coverage": n_kept / labels.size,
        "accuracy": float(correct[kept].mean()) if n_kept else None,
        "n_kept": n_kept,
        "n_uncertain": int(labels.size - n_kept),
    }


def _single_class_report(labels: np.ndarray, scores: np.ndarray, threshold: float) -> tuple[dict, str]:
    """The metrics defined for one class, the others None, and a note saying so."""
    only_fake = bool(labels[0] == 1)
    n_fake = int(labels.sum())
    report: dict[str, Any] = {
        "n": int(labels.size), "n_fake": n_fake, "n_real": int(labels.size) - n_fake, "threshold": float(threshold),
    }
    report.update({k: None for k in TWO_CLASS_KEYS})
    report["accuracy"] = accuracy(labels, scores, threshold)
    if only_fake:
        report["apcer"] = apcer(labels, scores, threshold)
    else:
        report["bpcer"] = bpcer(labels, scores, threshold)
    report.update(confusion_counts(labels, scores, threshold))
    kind, other = ("fake", "BPCER") if only_fake else ("real", "APCER")
    rate = "APCER (fakes called real)" if only_fake else "BPCER (reals called fake)"
    note = (f"only {kind} samples: AUC, EER, AP, balanced accuracy, TPR at FPR, {other}, ACER and HTER need "
            f"both classes and are n/a; reported: accuracy (= 1 - {rate.split()[0]}) and {rate}")
    return report, note


def level_metrics(
    labels: np.ndarray,
    scores: np.ndarray,
    confidences: np.ndarray,
    threshold: float,
    band: Band,
    clusters: np.ndarray | None = None,
    *,
    bootstrap: int = 1000,
    seed: int = 0,
) -> dict:
    """Metrics of one level (faces or videos): labels (N,), scores (N,) p(fake), confidences (N,).

    Returns `binary_report`'s keys, plus "ci" ({auc, eer, ap: [low, high]} or None), "ece",
    "confident" (`confident_band`) and "notes". clusters: (N,) ids resampled together, or None.
    """
    notes: list[str] = []
    two_classes = 0 < int(labels.sum()) < labels.size
    if two_classes:
        out: dict[str, Any] = dict(binary_report(labels, scores, threshold))
        try:
            out["ci"] = {name: list(bootstrap_ci(fn, labels, scores, clusters, n=bootstrap, alpha=CI_ALPHA, seed=seed))
                         for name, fn in CI_METRICS.items()}
        except RealfaceError as err:
            out["ci"] = None
            notes.append(f"no bootstrap interval: {err}")
    else:
        out, note = _single_class_report(labels, scores, threshold)
        out["ci"] = None
        notes.append(note)
    out["ece"] = expected_calibration_error(labels, scores)
    out["confident"] = confident_band(labels, scores, confidences, threshold, band)
    out["notes"] = notes
    return out


def _frame_ids(rows: Sequence[FaceScore]) -> np.ndarray:
    """Frame id per row: its frame index, or a distinct negative id when unknown (its own frame)."""
    return np.array([r.frame if r.frame >= 0 else -(i + 1) for i, r in enumerate(rows)], dtype=np.int64)


def video_level(
    rows: Sequence[FaceScore], threshold: float, band: Band, *, bootstrap: int = 1000, seed: int = 0,
    evidential: bool = False,
) -> dict | None:
    """Video-level metrics of the rows that name a video, per aggregation in `AGGREGATIONS`; None if none do.

    The confidence-weighted aggregation is `thresholds.video_verdict`, the rule `detect` and `serve` give a
    video by (evidential: the model's confidences are 1 - uncertainty); for the other aggregations a video's
    confidence is its score's distance to the threshold. Videos are resampled by the group of their first
    face when groups are given.
    """
    in_video = [r for r in rows if r.video]
    if not in_video:
        return None
    videos = np.array([r.video for r in in_video])
    labels = np.array([r.label for r in in_video])
    scores = np.array([r.score for r in in_video])
    conf = np.array([r.confidence for r in in_video], dtype=np.float64)
    video_ids, video_labels = aggregate_labels(labels, videos)
    group_of = {}
    for r in in_video:
        group_of.setdefault(r.video, r.group or r.video)
    clusters = _clusters([group_of[v] for v in video_ids.tolist()])
    aggregations = {}
    for method in AGGREGATIONS:
        if method == VIDEO_AGGREGATION:
            decided = [
                video_verdict(scores[idx], conf[idx], threshold, band, evidential)
                for idx in (np.flatnonzero(videos == v) for v in video_ids)
            ]
            video_scores = np.array([d.score for d in decided])
            video_conf = np.array([d.confidence for d in decided])
        else:
            _, video_scores = aggregate_scores(scores, videos, method, confidences=conf, frame_ids=_frame_ids(in_video))
            video_conf = distance_confidence(video_scores, threshold)
        aggregations[method] = level_metrics(
            video_labels, video_scores, video_conf, threshold, band, clusters, bootstrap=bootstrap, seed=seed
        )
    return {
        "n_videos": int(video_ids.size),
        "n_faces": len(in_video),
        "resampled": "groups of videos" if clusters is not None else "videos",
        "aggregations": aggregations,
    }


def dataset_metrics(
    rows: Sequence[FaceScore], threshold: float | Threshold, band: Band, *, bootstrap: int = 1000, seed: int = 0,
    evidential: bool = False,
) -> dict:
    """All metrics of one dataset's rows (missing confidences filled in by `complete_scores`).

    {"frame": `level_metrics` of the faces, "video": `video_level` or None, "groups": `group_metrics` or
    None, "notes": [...]}; frame-level and per-group intervals resample groups, else videos, else faces.
    """
    t = float(threshold)
    rows = complete_scores(rows, t, band)
    labels = np.array([r.label for r in rows], dtype=np.int64)
    scores = np.array([r.score for r in rows])
    conf = np.array([r.confidence for r in rows], dtype=np.float64)
    clusters = _clusters([r.group or r.video or f"\0row{i}" for i, r in enumerate(rows)])
    frame = level_metrics(labels, scores, conf, t, band, clusters, bootstrap=bootstrap, seed=seed)
    has_groups = any(r.group for r in rows)
    frame["resampled"] = "faces" if clusters is None else "groups" if has_groups else "videos"
    video = video_level(rows, t, band, bootstrap=bootstrap, seed=seed, evidential=evidential)
    notes = [] if video is not None else ["no video ids: video-level metrics are not computed"]
    groups = group_metrics(rows, t, clusters, bootstrap=bootstrap, seed=seed)
    return {"frame": frame, "video": video, "groups": groups, "notes": notes}


def group_metrics(
    rows: Sequence[FaceScore], threshold: float, clusters: np.ndarray | None, *, bootstrap: int = 1000, seed: int = 0
) -> dict | None:
    """Face-level rates per group of each group column the rows have (`FaceScore.attributes`); None if none.

    {"overall": the rates of all faces (`groups.group_table`'s record of one group), "columns": {column:
    `groups.group_table`}}; a row without a value in a column is in its UNKNOWN group. Rows need verdicts.
    """
    columns = list(dict.fromkeys(k for r in rows for k in r.attributes))
    if not columns:
        return None
    y = np.array([r.label for r in rows], dtype=np.int64)
    s = np.array([r.score for r in rows])
    u = np.array([r.verdict == UNCERTAIN for r in rows])
    t = float(threshold)

    def table(groups: list[str]) -> dict:
        return group_table(y, s, u, groups, t, clusters, bootstrap=bootstrap, alpha=CI_ALPHA, seed=seed)

    overall = table(["all faces"] * len(rows))["groups"]["all faces"]
    return {"overall": overall, "columns": {c: table([r.attributes.get(c, UNKNOWN) for r in rows]) for c in columns}}


def hardest_errors(
    rows: Sequence[FaceScore], threshold: float | Threshold, k: int = HARDEST_K
) -> dict[str, list[FaceScore]]:
    """The k false positives and k false negatives farthest from the threshold, farthest first."""
    t = float(threshold)
    fp = sorted((r for r in rows if r.label == 0 and r.score >= t), key=lambda r: r.score - t, reverse=True)
    fn = sorted((r for r in rows if r.label == 1 and r.score < t), key=lambda r: t - r.score, reverse=True)
    return {"false_positives": fp[:k], "false_negatives": fn[:k]}


# ---------------------------------------------------------------------------------------------
# tables


def fmt(value: float | int | None) -> str:
    """A fraction with 3 decimals, an int as is, None as "n/a"."""
    if value is None:
        return "n/a"
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return str(int(value))
    return f"{float(value):.3f}"


def _with_ci(level: Mapping[str, Any], name: str) -> str:
    ci = (level.get("ci") or {}).get(name)
    text = fmt(level.get(name))
    return f"{text} [{fmt(ci[0])}, {fmt(ci[1])}]" if ci and level.get(name) is not None else text


TABLE_HEADER = (
    "level", "n (fake / real)", "AUC [95% CI]", "EER [95% CI]", "AP [95% CI]", "accuracy", "balanced acc.",
    "TPR @ FPR 0.01", "TPR @ FPR 0.1", "APCER", "BPCER", "ECE", "coverage", "acc. (confident)",
)


def _table_row(title: str, level: Mapping[str, Any]) -> list[str]:
    confident = level["confident"]
    return [
        title, f"{level['n']} ({level['n_fake']} / {level['n_real']})",
        _with_ci(level, "auc"), _with_ci(level, "eer"), _with_ci(level, "ap"),
        fmt(level["accuracy"]), fmt(level["balanced_accuracy"]), fmt(level["tpr_at_fpr_0.01"]),
        fmt(level["tpr_at_fpr_0.1"]), fmt(level["apcer"]), fmt(level["bpcer"]), fmt(level["ece"]),
        fmt(confident["coverage"]), fmt(confident["accuracy"]),
    ]


def dataset_levels(metrics: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    """(title, level metrics) of a dataset: faces, then each video aggregation."""
    levels = [(LEVEL_TITLES["frame"], metrics["frame"])]
    if metrics.get("video"):
        levels += [(LEVEL_TITLES.get(m, m), lv) for m, lv in metrics["video"]["aggregations"].items()]
    return levels


def metric_table(metrics: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of one dataset's table: one row per level."""
    return list(TABLE_HEADER), [_table_row(title, lv) for title, lv in dataset_levels(metrics)]


def summary_table(datasets: Mapping[str, Mapping[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of the cross-dataset table: AUC and EER of faces and of videos (mean)."""
    header = ["dataset", "faces", "AUC (faces)", "EER (faces)", "accuracy (faces)", "videos", "AUC (videos, mean)",
              "EER (videos, mean)", "accuracy (videos, mean)"]
    rows = []
    for name, m in datasets.items():
        f = m["frame"]
        v = m["video"]["aggregations"]["mean"] if m.get("video") else None
        video_cells = ([str(m["video"]["n_videos"]), _with_ci(v, "auc"), _with_ci(v, "eer"), fmt(v["accuracy"])]
                       if v else ["0", "n/a", "n/a", "n/a"])
        rows.append([name, str(f["n"]), _with_ci(f, "auc"), _with_ci(f, "eer"), fmt(f["accuracy"]), *video_cells])
    return header, rows


def _rate_cell(record: Mapping[str, Any], rate: str) -> str:
    ci = record["ci"][rate]
    text = fmt(record[rate])
    return f"{text} [{fmt(ci[0])}, {fmt(ci[1])}]" if ci and record[rate] is not None else text


def _gap_cell(gap: Mapping[str, Any] | None) -> str:
    if gap is None:
        return "n/a"
    ci = gap["ci"]
    interval = f" [{fmt(ci[0])}, {fmt(ci[1])}]" if ci else ""
    return f"{fmt(gap['value'])}{interval} ({gap['highest']} - {gap['lowest']})"


def group_grid(groups: Mapping[str, Any], column: str) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of one group column's table: all faces, each group, then the largest gap per rate."""
    header = [column, "n (fake / real)", *(f"{RATE_TITLES[r]} [95% CI]" for r in RATES)]
    table = groups["columns"][column]
    records = [("all faces", groups["overall"]), *table["groups"].items()]
    rows = [[name, f"{r['n']} ({r['n_fake']} / {r['n_real']})", *(_rate_cell(r, m) for m in RATES)]
            for name, r in records]
    rows.append(["largest gap (highest - lowest)", "", *(_gap_cell(table["gaps"][m]) for m in RATES)])
    return header, rows


def group_summary_lines(report: Mapping[str, Any]) -> list[str]:
    """One line per dataset and group column: the false-positive-rate gap and the groups it lies between."""
    lines = []
    for name, m in report["datasets"].items():
        if not m.get("groups"):
            continue
        overall = m["groups"]["overall"]
        lines.append(f"{name}: FPR {_rate_cell(overall, 'fpr')}, uncertain {_rate_cell(overall, 'uncertain')}")
        for column, table in m["groups"]["columns"].items():
            lines.append(f"{name}: FPR gap across {column}: {_gap_cell(table['gaps']['fpr'])}")
    return lines


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_grid(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(map(_md_cell, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(_md_cell, row)) + " |" for row in rows]
    return "\n".join(lines)


def markdown_table(metrics: Mapping[str, Any]) -> str:
    """One dataset's metrics (faces and videos, with intervals) as a Markdown table."""
    return markdown_grid(*metric_table(metrics))


def _all_notes(metrics: Mapping[str, Any]) -> list[str]:
    notes = list(metrics.get("notes", []))
    for title, level in dataset_levels(metrics):
        notes += [f"{title}: {n}" for n in level.get("notes", [])]
    return notes


def _group_notes(groups: Mapping[str, Any], column: str) -> list[str]:
    return [f"{column}: {n}" for n in groups["columns"][column]["notes"]]


GROUPS_INTRO = (
    "Faces per group of people at the threshold: FPR = share of real faces called fake (score >= threshold, "
    "uncertain or not), FNR = share of fakes called real, uncertain = share of verdicts \"uncertain\"; "
    "intervals resample {resampled} within each group; a gap's interval is that of the gap itself."
)


MODEL_KEYS = ("source", "backend", "detector", "encoder", "img_size", "crop_size", "crop_margin", "crop", "decision", "card")


def model_fields(info: Mapping[str, Any]) -> list[list[str]]:
    """The model as a short table of named fields for a reader (`Model.info()`'s record; other plain facts are
    shown as given, numbers rounded; the whole record is in metrics.json)."""
    card = info.get("card") or {}
    decision = info.get("decision") or {}
    threshold = decision.get("threshold") or {}
    crop = info.get("crop") or {}
    val = decision.get("val") or {}
    rows = []
    if card.get("name") or info.get("source"):
        rows.append(["model", str(card.get("name") or Path(str(info["source"])).name)])
    if info.get("source"):
        rows.append(["source", str(info["source"])])
    if info.get("backend"):
        rows.append(["runs on", {"onnx": "ONNX Runtime", "torch": "PyTorch"}.get(info["backend"], str(info["backend"]))])
    if info.get("detector"):
        rows.append(["detector", f"{info['detector']} on {info.get('encoder', '?')}, {info.get('img_size', '?')} px input"])
    if crop:
        rows.append(["face crops", f"{crop.get('size')} px, margin {crop.get('margin')}, found by {crop.get('detector')}, "
                                   f"aligned to {crop.get('template')}"])  # fmt: skip
    if isinstance(threshold, Mapping) and "value" in threshold:
        rows.append(["stored threshold", f"{fmt(threshold['value'])} ({threshold.get('policy', '?')})"])
    if "band" in decision:
        rows.append(["uncertain below confidence", f"{band_text(decision['band'])} ({decision.get('confidence', 'distance')})"])
    if decision.get("temperature", 1.0) != 1.0:
        rows.append(["temperature", f"{float(decision['temperature']):.2f}"])
    if "auc" in val:
        rows.append(["its validation", f"AUC {fmt(val['auc'])}, EER {fmt(val.get('eer'))} on {val.get('n', '?')} faces"])
    if card.get("date"):
        rows.append(["made", str(card["date"])])
    for key, value in info.items():
        if key not in MODEL_KEYS and isinstance(value, (str, int, float)):
            rows.append([str(key), value if isinstance(value, str) else fmt(value)])
    return rows


def render_markdown(report: Mapping[str, Any]) -> str:
    """report.md: the model, threshold, summary table, then a table and notes per dataset."""
    t = report["threshold"]
    lines = [
        f"# Evaluation report: {report['name']}", "",
        "## Model", "", markdown_grid(["field", "value"], model_fields(report["model"])), "",
        f"Threshold {fmt(t['value'])} (policy {t['policy']}, {t['source']}); confidence band {band_text(report['band'])}; "
        f"intervals: {report['bootstrap']['n']} bootstrap resamples, 95%. Fractions, not percent.", "",
        "## Summary", "", markdown_grid(*summary_table(report["datasets"])), "",
    ]
    for name, m in report["datasets"].items():
        lines += [f"## {name}", "", markdown_table(m), ""]
        lines += [f"- {n}" for n in _all_notes(m)]
        lines += [""] if _all_notes(m) else []
        groups = m.get("groups")
        if groups:
            lines += [f"### {name}: groups of people", "", GROUPS_INTRO.format(resampled=m["frame"]["resampled"]), ""]
            for column in groups["columns"]:
                lines += [markdown_grid(*group_grid(groups, column)), ""]
                lines += [f"- {n}" for n in _group_notes(groups, column)]
                lines += [""] if _group_notes(groups, column) else []
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# plots (each on its own Agg canvas: no pyplot, no global backend change)


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def plot_roc(curves: Mapping[str, tuple[np.ndarray, np.ndarray]], path: Path, title: str) -> Path:
    """ROC curves {legend: (labels, scores)} on one plot, with their AUC; both classes needed."""
    fig = _figure(4.5, 4.5)
    ax = fig.add_subplot()
    for name, (y, s) in curves.items():
        fpr, tpr, _ = roc_curve(y, s)
        ax.plot(fpr, tpr, linewidth=1.5, label=f"{name} (AUC {roc_auc(y, s):.3f})")
    ax.plot([0, 1], [0, 1], "k--", linewidth=0.8)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("false positive rate (reals called fake)")
    ax.set_ylabel("true positive rate (fakes found)")
    ax.set_title(title, fontsize=10)
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path)


def zoom(values: np.ndarray, *marks: float, pad: float = 0.05) -> tuple[float, float]:
    """An axis range within [0, 1] around `values` and `marks` (e.g. the threshold), padded by `pad` of its width:
    scores that all lie in 0.4-0.6 fill the plot instead of a fifth of it."""
    points = np.concatenate([np.asarray(values, np.float64).ravel(), np.asarray(marks, np.float64)])
    lo, hi = float(points.min()), float(points.max())
    margin = max(hi - lo, 0.02) * pad
    return max(0.0, lo - margin), min(1.0, hi + margin)


def plot_histograms(
    panels: Mapping[str, tuple[np.ndarray, np.ndarray]], threshold: float, path: Path, title: str
) -> Path:
    """Score histograms per class, one panel per {title: (labels, scores)}, with the threshold line."""
    fig = _figure(4.5 * len(panels), 3.5)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (name, (y, s)) in zip(axes, panels.items()):
        lo, hi = zoom(s, threshold)
        bins = np.linspace(lo, hi, 41)
        for label, cls, color in ((0, "real", "tab:blue"), (1, "fake", "tab:red")):
            if (y == label).any():
                ax.hist(s[y == label], bins=bins, alpha=0.55, color=color, label=f"{cls} ({int((y == label).sum())})")
        ax.axvline(threshold, color="black", linestyle="--", linewidth=1, label=f"threshold {threshold:.3f}")
        ax.set_xlim(lo, hi)
        ax.set_xlabel("score p(fake)")
        ax.set_ylabel("count")
        ax.set_title(f"{title}: {name}", fontsize=10)
        ax.legend(fontsize=8)
    return _save(fig, path)


def plot_coverage(labels: np.ndarray, scores: np.ndarray, confidences: np.ndarray, threshold: float, band: Band,
                  path: Path, title: str) -> Path:
    """Accuracy of the confident decisions against their coverage, as the band rises; the chosen band marked."""
    coverage, acc, _ = coverage_accuracy_curve(labels, scores, confidences, threshold)
    chosen = confident_band(labels, scores, confidences, threshold, band)
    fig = _figure(4.5, 3.5)
    ax = fig.add_subplot()
    ax.plot(coverage, acc, linewidth=1.5, label="one band for both verdicts")
    if chosen["accuracy"] is not None:
        ax.plot([chosen["coverage"]], [chosen["accuracy"]], "o", color="tab:red", label=f"band {band_text(band)}")
    ax.legend(fontsize=8)
    ax.set_xlim(0, 1.02)
    ax.set_xlabel("coverage (decided, not uncertain)")
    ax.set_ylabel("accuracy of decided faces")
    ax.set_title(title, fontsize=10)
    return _save(fig, path)


def plot_group_rates(table: Mapping[str, Any], path: Path, title: str) -> Path:
    """Bars of FPR, FNR and the uncertain share per group (`groups.group_table`), with 95% interval
    whiskers; rates no group has are left out, a group's n/a bar is absent."""
    names = list(table["groups"])
    rates = [m for m in ("fpr", "fnr", "uncertain") if any(r[m] is not None for r in table["groups"].values())]
    fig = _figure(max(5.5, 2.5 + 0.45 * len(names) * max(1, len(rates))), 3.5)
    ax = fig.add_subplot()
    width = 0.8 / max(1, len(rates))
    colors = {"fpr": "tab:blue", "fnr": "tab:red", "uncertain": "tab:gray"}
    for j, rate in enumerate(rates):
        xs, heights, low, high = [], [], [], []
        for k, name in enumerate(names):
            r = table["groups"][name]
            if r[rate] is None:
                continue
            ci = r["ci"][rate] or [r[rate], r[rate]]
            xs.append(k + (j - (len(rates) - 1) / 2) * width)
            heights.append(r[rate])
            low.append(max(0.0, r[rate] - ci[0]))
            high.append(max(0.0, ci[1] - r[rate]))
        ax.bar(xs, heights, width, yerr=[low, high], capsize=3, color=colors[rate], label=RATE_TITLES[rate])
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels([f"{n}\n({table['groups'][n]['n']})" for n in names], fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("fraction (95% CI)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _save(fig, path)


def save_thumbnail(src: Path, dst: Path, size: int = THUMB_SIZE) -> bool:
    """Write a JPEG thumbnail of the image at `src`; False (nothing written) when it cannot be read."""
    from PIL import Image, UnidentifiedImageError

    from realface.faces.media import IMAGE_SUFFIXES

    if src.suffix.lower() not in IMAGE_SUFFIXES or not src.is_file():
        return False
    try:
        with Image.open(src) as im:
            im = im.convert("RGB")
            im.thumbnail((size, size))
            dst.parent.mkdir(parents=True, exist_ok=True)
            im.save(dst, format="JPEG", quality=85)
    except (OSError, ValueError, UnidentifiedImageError, Image.DecompressionBombError):
        dst.unlink(missing_ok=True)
        return False
    return True


# ---------------------------------------------------------------------------------------------
# HTML


def _h(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _src(rel: str) -> str:
    return _h(quote(rel))


def html_table(header: Sequence[str], rows: Sequence[Sequence[str]], css_class: str = "") -> str:
    """An HTML table, every cell escaped; css_class "text" aligns every column left (numbers go right)."""
    head = "".join(f"<th>{_h(c)}</th>" for c in header)
    body = "".join("<tr>" + "".join(f"<td>{_h(c)}</td>" for c in row) + "</tr>" for row in rows)
    attr = f' class="{css_class}"' if css_class else ""
    return f"<table{attr}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _html_errors(errors: Mapping[str, Sequence[Mapping[str, Any]]]) -> str:
    parts = []
    for kind, title in (("false_positives", "Hardest false positives (reals called fake)"),
                        ("false_negatives", "Hardest false negatives (fakes called real)")):
        items = errors.get(kind, [])
        parts.append(f"<h4>{_h(title)}</h4>")
        if not items:
            parts.append("<p>none</p>")
            continue
        cells = []
        for e in items:
            img = (f'<img src="{_src(e["thumbnail"])}" alt="{_h(e["path"])}">' if e.get("thumbnail")
                   else '<div class="noimg">no thumbnail</div>')
            cells.append(f'<figure>{img}<figcaption>score {_h(fmt(e["score"]))}<br>'
                         f'<span class="path">{_h(e["path"])}</span></figcaption></figure>')
        parts.append(f'<div class="errors">{"".join(cells)}</div>')
    return "".join(parts)


_CSS = """body{font-family:sans-serif;margin:2em;max-width:1400px}table{border-collapse:collapse;margin:1em 0}
th,td{border:1px solid #bbb;padding:3px 7px;font-size:13px;text-align:right}th{background:#eee}
td:first-child,table.text td,table.text th{text-align:left}img.plot{margin:4px;border:1px solid #ddd;max-width:100%}
.errors{display:flex;flex-wrap:wrap}figure{margin:4px;width:140px;font-size:11px}
figure img{width:128px;height:128px;object-fit:contain;background:#eee}.noimg{width:128px;height:128px;
background:#eee;display:flex;align-items:center;justify-content:center}.path{word-break:break-all;color:#555}"""


def render_html(report: Mapping[str, Any]) -> str:
    """index.html: one self-contained page (images referenced relatively) showing the whole report."""
    t = report["threshold"]
    files = report["files"]
    model = html_table(["field", "value"], model_fields(report["model"]), css_class="text")
    parts = [
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{_h(report['name'])}</title>"
        f"<style>{_CSS}</style></head><body>",
        f"<h1>Evaluation report: {_h(report['name'])}</h1>",
        "<h2>Model</h2>", model,
        "<h2>Decision</h2>",
        f"<p>Threshold <b>{_h(fmt(t['value']))}</b> (policy {_h(t['policy'])}"
        f"{_h(' ' + json.dumps(t['params'])) if t['params'] else ''}, {_h(t['source'])}): score &ge; threshold is "
        f"fake. Confidence band {_h(band_text(report['band']))}: decisions with lower confidence are "
        f"&ldquo;uncertain&rdquo;. Intervals: 95% percentile bootstrap, {_h(report['bootstrap']['n'])} resamples "
        f"of videos or groups where known. All values are fractions.</p>",
        "<h2>Summary</h2>", html_table(*summary_table(report["datasets"])),
        f'<h2>Calibration</h2><img class="plot" src="{_src(files["reliability"])}" alt="reliability diagram">',
    ]
    for name, m in report["datasets"].items():
        plots = files["datasets"][name]
        parts += [f"<h2>{_h(name)}</h2>", html_table(*metric_table(m))]
        notes = _all_notes(m)
        if notes:
            parts.append("<ul>" + "".join(f"<li>{_h(n)}</li>" for n in notes) + "</ul>")
        groups = m.get("groups")
        if groups:
            parts += [f"<h3>{_h(name)}: groups of people</h3>",
                      f"<p>{_h(GROUPS_INTRO.format(resampled=m['frame']['resampled']))}</p>"]
            for column in groups["columns"]:
                parts.append(html_table(*group_grid(groups, column)))
                if _group_notes(groups, column):
                    parts.append("<ul>" + "".join(f"<li>{_h(n)}</li>" for n in _group_notes(groups, column)) + "</ul>")
        parts += [f'<img class="plot" src="{_src(rel)}" alt="{_h(kind)}">' for kind, rel in plots.items()]
        parts.append(_html_errors(m["hardest_errors"]))
    links = " &middot; ".join(
        f'<a href="{_src(files[k])}">{_h(files[k])}</a>' for k in ("scores", "metrics", "markdown")
    )
    parts += [f"<h2>Files</h2><p>{links}</p>", "</body></html>"]
    return "\n".join(parts)


# ---------------------------------------------------------------------------------------------
# the whole report


def _slugs(names: Sequence[str]) -> dict[str, str]:
    """A distinct file-name-safe slug per name."""
    out: dict[str, str] = {}
    for name in names:
        base = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "dataset"
        slug, k = base, 1
        while slug in out.values():
            k += 1
            slug = f"{base}_{k}"
        out[name] = slug
    return out


def _error_records(errors: Mapping[str, Sequence[FaceScore]], threshold: float, out_dir: Path, slug: str,
                   thumbnails: bool) -> dict[str, list[dict]]:
    """JSON records of the hardest errors, writing their thumbnails under errors/<slug>/."""
    out: dict[str, list[dict]] = {}
    for kind, rows in errors.items():
        records = []
        for i, r in enumerate(rows, start=1):
            rel = f"errors/{slug}/{kind[:-1]}_{i:02d}.jpg"
            ok = thumbnails and save_thumbnail(Path(r.path), out_dir / rel)
            records.append({"path": r.path, "source": r.source, "frame": r.frame, "face": r.face, "video": r.video,
                            "label": r.label, "score": r.score, "distance": abs(r.score - threshold),
                            "thumbnail": rel if ok else None})
        out[kind] = records
    return out


def _dataset_plots(rows: Sequence[FaceScore], metrics: Mapping[str, Any], threshold: float, band: Band,
                   out_dir: Path, slug: str, name: str) -> dict[str, str]:
    """Write a dataset's ROC, histogram and coverage plots; {kind: path relative to out_dir}."""
    y = np.array([r.label for r in rows], dtype=np.int64)
    s = np.array([r.score for r in rows])
    c = np.array([r.confidence for r in rows], dtype=np.float64)
    curves = {"faces": (y, s)}
    video_rows = [r for r in rows if r.video]
    if metrics.get("video"):
        _, vy = aggregate_labels([r.label for r in video_rows], [r.video for r in video_rows])
        _, vs = aggregate_scores([r.score for r in video_rows], [r.video for r in video_rows], "mean")
        curves["videos (mean)"] = (vy, vs)
    files = {}
    if 0 < y.sum() < y.size:
        roc_panels = {k: v for k, v in curves.items() if 0 < v[0].sum() < v[0].size}
        files["roc"] = f"plots/{slug}_roc.png"
        plot_roc(roc_panels, out_dir / files["roc"], f"{name}: ROC")
    files["histogram"] = f"plots/{slug}_hist.png"
    plot_histograms(curves, threshold, out_dir / files["histogram"], name)
    files["coverage"] = f"plots/{slug}_coverage.png"
    plot_coverage(y, s, c, threshold, band, out_dir / files["coverage"], f"{name}: coverage vs accuracy (faces)")
    groups = metrics.get("groups") or {"columns": {}}
    for column, column_slug in _slugs(list(groups["columns"])).items():
        files[f"groups {column}"] = f"plots/{slug}_groups_{column_slug}.png"
        plot_group_rates(groups["columns"][column], out_dir / files[f"groups {column}"], f"{name}: by {column}")
    return files


def write_report(
    scores: Sequence[FaceScore] | Any,
    out_dir: Path,
    *,
    threshold: Threshold,
    band: Band,
    model_info: Mapping[str, Any],
    bootstrap: int = 1000,
    seed: int = 0,
    thumbnails: bool = True,
    name: str = "evaluation",
    threshold_source: str = "stored with the model",
) -> dict:
    """Write the whole report into `out_dir` (see the module docstring); returns what metrics.json holds.

    scores: FaceScore rows (or a column table, `scores_from_table`) of one or more datasets; missing
    confidences and verdicts are filled in (`complete_scores`). threshold: the decision threshold and its
    policy; band: the confidence below which a decision is "uncertain"; model_info: JSON-ready facts about
    the model (shown as given); threshold_source: where the threshold comes from, in words.
    """
    if not isinstance(threshold, Threshold):
        raise RealfaceError(f"threshold must be a thresholds.Threshold (value and policy), got {threshold!r}")
    band_sides(band)  # checked before any work
    t = float(threshold)
    evidential = (model_info.get("decision") or {}).get("confidence") == "evidential"
    rows = complete_scores(as_face_scores(scores), t, band)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    groups = by_dataset(rows)
    slugs = _slugs(list(groups))
    files: dict[str, Any] = {"scores": "scores.csv", "metrics": "metrics.json", "markdown": "report.md",
                             "html": "index.html", "reliability": "plots/reliability.png", "datasets": {}}
    write_scores_csv(rows, out_dir / files["scores"])
    datasets = {}
    for ds, ds_rows in groups.items():
        m = dataset_metrics(ds_rows, t, band, bootstrap=bootstrap, seed=seed, evidential=evidential)
        m["hardest_errors"] = _error_records(hardest_errors(ds_rows, t), t, out_dir, slugs[ds], thumbnails)
        datasets[ds] = m
        files["datasets"][ds] = _dataset_plots(ds_rows, m, t, band, out_dir, slugs[ds], ds)
    plot_reliability_diagram([r.label for r in rows], [r.score for r in rows], out_dir / files["reliability"],
                             title="all faces")
    report = {
        "name": name,
        "model": dict(model_info),
        "threshold": {**threshold.to_dict(), "source": threshold_source},
        "band": band_json(band),
        "bootstrap": {"n": int(bootstrap), "alpha": CI_ALPHA, "seed": int(seed)},
        "datasets": datasets,
        "files": files,
    }
    try:
        text = json.dumps(report, indent=2, allow_nan=False, default=str)
    except ValueError as err:  # a NaN slipped through: a bug, not the user's
        raise RuntimeError(f"metrics hold a non-finite number: {err}") from err
    (out_dir / files["metrics"]).write_text(text + "\n", encoding="utf-8")
    (out_dir / files["markdown"]).write_text(render_markdown(report) + "\n", encoding="utf-8")
    (out_dir / files["html"]).write_text(render_html(report) + "\n", encoding="utf-8")
    return json.loads(text)
