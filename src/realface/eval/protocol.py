"""Evaluation protocols: named test sets read from manifests, so one command reproduces a table.

A protocol file (YAML) names its test sets; paths are relative to the protocol file's folder:

    name: cross-dataset
    datasets:
      dfdc-val: {data: ../shared/data/dfdc/manifest.csv, filter: {split: val}, group_column: group}
      ffpp-samples: {data: ../shared/data/ffpp-videos/manifest.csv, level: video}
    threshold: {policy: eer, fit_on: dfdc-val}   # optional; default: the model's stored threshold

Per dataset:
- `data`: a manifest CSV (or a folder holding `manifest.csv`); its `path` column is relative to its folder.
- `filter`: {column: value or [values]}: keep rows whose column equals the value (or one of them).
- `level`: "frame" (default; each row is an image or face crop) or "video" (each row is a video whose
  faces are scored frame by frame and aggregated to that row; a row whose file is a video always is).
- `video_column`: the column naming each row's video (frame-level rows of one video); every video must
  hold one label. Without it, a row with `frame >= 0` (a preprocess manifest) belongs to its `source`.
- `group_column`: the column naming each row's cluster for bootstrap resampling (e.g. DFDC's `group`, the
  source video of a real clip and its fakes, which holds both labels: a group, not a video).
- `label_column` ("label"), `positive_labels` (fake, spoof, attack, deepfake, ... 1) and `negative_labels`
  (real, original, live, 0): how labels map to 1 = fake and 0 = real, compared in lower case.
- `groups`: columns whose values are groups of people (e.g. [race, gender, age]): error rates per group
  (`eval.groups`); `age` is binned into ranges whose lower edges `age_bins` gives (default 0, 13, 20, 40, 60).
- `codes`: what the codes of a column mean, {column: {code: name}}, or the name of a table in
  `groups.CODE_TABLES` (e.g. `codes: utkface`); a dataset named like a table gets it by default.

`threshold` (optional): `policy` (a name in `thresholds.THRESHOLD_POLICIES`), its parameters (e.g.
`fpr: 0.01`), and `fit_on`: the dataset whose frame scores fit it (default: all datasets pooled, which is
optimistic: the test data then choose their own threshold).
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from realface.errors import RealfaceError
from realface.eval.groups import CODE_TABLES, DEFAULT_AGE_BINS, Grouping
from realface.eval.thresholds import THRESHOLD_POLICIES, Threshold, fit_threshold
from realface.faces.media import VIDEO_SUFFIXES
from realface.labels import NEGATIVE_LABELS, POSITIVE_LABELS

LEVELS = ("frame", "video")
DEFAULT_POSITIVE_LABELS: tuple[str, ...] = POSITIVE_LABELS  # the package's one vocabulary (realface.labels)
DEFAULT_NEGATIVE_LABELS: tuple[str, ...] = NEGATIVE_LABELS
_DATASET_KEYS = frozenset(
    {"data", "filter", "level", "video_column", "group_column", "label_column", "positive_labels", "negative_labels",
     "groups", "codes", "age_bins"}
)
_PROTOCOL_KEYS = frozenset({"name", "datasets", "threshold"})
_THRESHOLD_KEYS = frozenset({"policy", "fit_on"})  # any other key is a parameter of the policy


def _label_set(values: Iterable[Any], what: str) -> tuple[str, ...]:
    out = tuple(str(v).strip().lower() for v in values)
    if not out or any(not v for v in out):
        raise RealfaceError(f"{what} must be a non-empty list of label names")
    return out


@dataclass(frozen=True)
class DatasetSpec:
    """One named test set: which manifest rows, and how to read their labels, videos and groups."""

    name: str  # the dataset's name in reports
    data: Path  # the manifest CSV, absolute
    filters: tuple[tuple[str, tuple[str, ...]], ...] = ()  # (column, allowed values): keep rows matching all
    level: str = "frame"  # "frame": a row is an image or face crop; "video": a row is a video
    video_column: str | None = None  # column naming each row's video, for video-level metrics
    group_column: str | None = None  # column naming each row's bootstrap cluster
    label_column: str = "label"  # column holding the label names
    positive_labels: tuple[str, ...] = DEFAULT_POSITIVE_LABELS  # lower-case names read as 1 = fake
    negative_labels: tuple[str, ...] = DEFAULT_NEGATIVE_LABELS  # lower-case names read as 0 = real
    grouping: Grouping = field(default_factory=Grouping)  # columns whose groups get their own error rates

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise RealfaceError(f"a dataset needs a non-empty name, got {self.name!r}")
        if self.level not in LEVELS:
            raise RealfaceError(f"dataset {self.name!r}: level must be one of {', '.join(LEVELS)}, got {self.level!r}")
        if self.level == "video" and self.video_column is not None:
            raise RealfaceError(
                f"dataset {self.name!r}: level 'video' makes each row a video; drop video_column or use level 'frame'"
            )
        object.__setattr__(self, "positive_labels", _label_set(self.positive_labels, "positive_labels"))
        object.__setattr__(self, "negative_labels", _label_set(self.negative_labels, "negative_labels"))
        both = set(self.positive_labels) & set(self.negative_labels)
        if both:
            raise RealfaceError(f"dataset {self.name!r}: labels {sorted(both)} are both positive and negative")

    def label_of(self, text: str) -> int:
        """1 (fake) or 0 (real) for a manifest label; raises for a label in neither list."""
        key = text.strip().lower()
        if key in self.positive_labels:
            return 1
        if key in self.negative_labels:
            return 0
        raise RealfaceError(
            f"dataset {self.name!r}: label {text!r} is neither positive ({', '.join(self.positive_labels)}) "
            f"nor negative ({', '.join(self.negative_labels)}); set positive_labels / negative_labels"
        )


@dataclass(frozen=True)
class ThresholdSpec:
    """How the protocol sets the decision threshold instead of the model's stored one."""

    policy: str  # a name in THRESHOLD_POLICIES
    params: dict[str, float] = field(default_factory=dict)  # the policy's parameters, e.g. {"fpr": 0.01}
    fit_on: str | None = None  # dataset whose scores fit it; None: all datasets pooled (optimistic)

    def __post_init__(self) -> None:
        if self.policy not in THRESHOLD_POLICIES:
            raise RealfaceError(
                f"unknown threshold policy {self.policy!r}; choose one of {', '.join(THRESHOLD_POLICIES)}"
            )


@dataclass(frozen=True)
class Protocol:
    """Named test sets evaluated together, and optionally how to set the threshold."""

    name: str
    datasets: tuple[DatasetSpec, ...]
    threshold: ThresholdSpec | None = None  # None: use the model's stored threshold

    def __post_init__(self) -> None:
        if not self.datasets:
            raise RealfaceError(f"protocol {self.name!r} lists no datasets")
        names = [d.name for d in self.datasets]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise RealfaceError(f"protocol {self.name!r}: dataset names repeat: {', '.join(dup)}")
        if self.threshold is not None and self.threshold.fit_on is not None and self.threshold.fit_on not in names:
            raise RealfaceError(
                f"threshold fit_on {self.threshold.fit_on!r} is not a dataset of the protocol ({', '.join(names)})"
            )

    def dataset(self, name: str) -> DatasetSpec:
        """The dataset called `name`."""
        for d in self.datasets:
            if d.name == name:
                return d
        raise RealfaceError(f"no dataset {name!r} in protocol {self.name!r}")

    @classmethod
    def from_manifests(cls, paths: Sequence[str | Path], name: str | None = None) -> Protocol:
        """One dataset per manifest (`--data MANIFEST...`), named after the manifest's folder; the protocol is
        named after its datasets unless `name` is given.

        A path may be a folder holding `manifest.csv`. A repeated folder name gets a suffix (`_2`, ...).
        A `group` column, when present, is used for bootstrap clusters.
        """
        datasets, used = [], set()
        for p in paths:
            manifest = _manifest_path(Path(p).absolute(), where="--data")
            base = manifest.parent.name or "data"
            ds_name, k = base, 1
            while ds_name in used:
                k += 1
                ds_name = f"{base}_{k}"
            used.add(ds_name)
            header = read_header(manifest)
            spec = DatasetSpec(
                name=ds_name, data=manifest, group_column="group" if "group" in header else None,
                grouping=Grouping(codes=CODE_TABLES.get(ds_name, {})),
            )  # fmt: skip
            check_columns(spec, header)
            datasets.append(spec)
        return cls(name=name or ", ".join(d.name for d in datasets), datasets=tuple(datasets))


@dataclass(frozen=True)
class DatasetItem:
    """One manifest row of a dataset, ready to score."""

    path: Path  # the image, face crop or video, absolute
    label: int  # 1 = fake, 0 = real
    video: str = ""  # video id ("" when the row is in no video)
    group: str = ""  # bootstrap cluster ("" = its video, or the row itself)
    frame: int = -1  # frame index in its video; -1 when unknown
    fields: dict[str, str] = field(default_factory=dict)  # the manifest row as read


# ---------------------------------------------------------------------------------------------
# reading protocol files and manifests


def _manifest_path(path: Path, where: str) -> Path:
    """The manifest file at `path`, or `path/manifest.csv` for a folder; raises when missing."""
    if path.is_dir():
        path = path / "manifest.csv"
    if not path.is_file():
        raise RealfaceError(f"{where}: manifest not found: {path}")
    return path


def read_header(manifest: Path) -> tuple[str, ...]:
    """Column names of a manifest CSV."""
    with manifest.open(newline="", encoding="utf-8-sig") as fh:
        header = next(csv.reader(fh), None)
    if not header:
        raise RealfaceError(f"{manifest}: empty manifest (no header row)")
    return tuple(h.strip() for h in header)


def check_columns(spec: DatasetSpec, header: Sequence[str]) -> None:
    """Raise when a column the dataset needs is not in the manifest's header."""
    needed = {"path": "path", "label_column": spec.label_column}
    if spec.video_column:
        needed["video_column"] = spec.video_column
    if spec.group_column:
        needed["group_column"] = spec.group_column
    needed.update({f"filter {c!r}": c for c, _ in spec.filters})
    needed.update({f"groups {c!r}": c for c in spec.grouping.columns})
    for what, column in needed.items():
        if column not in header:
            raise RealfaceError(
                f"dataset {spec.name!r}: {what} names column {column!r}, not in {spec.data} "
                f"(columns: {', '.join(header)})"
            )


def _parse_filters(name: str, raw: Any) -> tuple[tuple[str, tuple[str, ...]], ...]:
    if raw is None:
        return ()
    if not isinstance(raw, Mapping):
        raise RealfaceError(f"dataset {name!r}: filter must map columns to values, e.g. {{split: val}}, got {raw!r}")
    out = []
    for column, value in raw.items():
        values = value if isinstance(value, list) else [value]
        if not values or any(isinstance(v, (dict, list)) or v is None for v in values):
            raise RealfaceError(
                f"dataset {name!r}: filter {column!r} needs a value or a list of values, got {value!r}"
            )
        out.append((str(column), tuple(str(v) for v in values)))
    return tuple(out)


def _optional_str(name: str, key: str, value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise RealfaceError(f"dataset {name!r}: {key} must be a column name, got {value!r}")
    return value


def _dataset_spec(name: str, raw: Any, base: Path) -> DatasetSpec:
    """A DatasetSpec from its YAML mapping; `data` resolved against `base`; columns checked."""
    if not isinstance(raw, Mapping):
        raise RealfaceError(f"dataset {name!r}: expected a mapping with at least 'data', got {raw!r}")
    unknown = sorted(set(raw) - _DATASET_KEYS)
    if unknown:
        raise RealfaceError(
            f"dataset {name!r}: unknown key(s) {', '.join(map(str, unknown))}; "
            f"allowed: {', '.join(sorted(_DATASET_KEYS))}"
        )
    if "data" not in raw or not isinstance(raw["data"], str):
        raise RealfaceError(f"dataset {name!r}: 'data' must give the manifest path")
    manifest = _manifest_path((base / raw["data"]).resolve(), where=f"dataset {name!r}")
    labels = {}
    for key in ("positive_labels", "negative_labels"):
        if key in raw:
            if not isinstance(raw[key], list):
                raise RealfaceError(f"dataset {name!r}: {key} must be a list of label names, got {raw[key]!r}")
            labels[key] = tuple(raw[key])
    try:
        grouping = Grouping(
            columns=tuple(_string_list(name, "groups", raw.get("groups", []))),
            codes=raw.get("codes", CODE_TABLES.get(str(name), {})),
            age_bins=raw.get("age_bins", DEFAULT_AGE_BINS),
        )
    except RealfaceError as err:
        raise RealfaceError(f"dataset {name!r}: {err}") from None
    spec = DatasetSpec(
        name=str(name),
        data=manifest,
        filters=_parse_filters(str(name), raw.get("filter")),
        level=str(raw.get("level", "frame")),
        video_column=_optional_str(name, "video_column", raw.get("video_column")),
        group_column=_optional_str(name, "group_column", raw.get("group_column")),
        label_column=_optional_str(name, "label_column", raw.get("label_column")) or "label",
        grouping=grouping,
        **labels,
    )
    check_columns(spec, read_header(manifest))
    return spec


def _string_list(name: str, key: str, value: Any) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise RealfaceError(f"dataset {name!r}: {key} must be a list of column names, e.g. [race, age], got {value!r}")
    return value


def with_groups(protocol: Protocol, columns: Sequence[str] | None, age_bins: Sequence[int] | None) -> Protocol:
    """`protocol` with every dataset grouped by `columns` and/or its ages binned at `age_bins` (None: as
    the protocol says); raises when a dataset's manifest lacks one of the columns."""
    datasets = []
    for spec in protocol.datasets:
        grouping = spec.grouping
        if columns is not None:
            grouping = replace(grouping, columns=tuple(columns))
        if age_bins is not None:
            grouping = replace(grouping, age_bins=tuple(age_bins))
        spec = replace(spec, grouping=grouping)
        check_columns(spec, read_header(spec.data))
        datasets.append(spec)
    return replace(protocol, datasets=tuple(datasets))


def _threshold_spec(raw: Any) -> ThresholdSpec | None:
    if raw is None:
        return None
    if not isinstance(raw, Mapping) or "policy" not in raw:
        raise RealfaceError(f"threshold must be a mapping with a 'policy', e.g. {{policy: eer}}, got {raw!r}")
    params = {}
    for key, value in raw.items():
        if key in _THRESHOLD_KEYS:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise RealfaceError(f"threshold parameter {key!r} must be a number, got {value!r}")
        params[str(key)] = float(value)
    fit_on = raw.get("fit_on")
    return ThresholdSpec(policy=str(raw["policy"]), params=params, fit_on=None if fit_on is None else str(fit_on))


def parse_protocol(data: Any, base: Path, default_name: str = "protocol") -> Protocol:
    """A Protocol from parsed YAML `data`; relative paths are resolved against `base`."""
    if not isinstance(data, Mapping):
        raise RealfaceError("a protocol must be a mapping with 'datasets' (and optionally 'name', 'threshold')")
    unknown = sorted(set(data) - _PROTOCOL_KEYS)
    if unknown:
        raise RealfaceError(
            f"protocol: unknown key(s) {', '.join(map(str, unknown))}; allowed: {', '.join(sorted(_PROTOCOL_KEYS))}"
        )
    raw_sets = data.get("datasets")
    if not isinstance(raw_sets, Mapping) or not raw_sets:
        raise RealfaceError("protocol: 'datasets' must map dataset names to {data: MANIFEST, ...}")
    datasets = tuple(_dataset_spec(str(n), raw, base) for n, raw in raw_sets.items())
    return Protocol(
        name=str(data.get("name") or default_name),
        datasets=datasets,
        threshold=_threshold_spec(data.get("threshold")),
    )


def load_protocol(path: str | Path) -> Protocol:
    """Read a protocol YAML file; its relative paths are resolved against the file's folder."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise RealfaceError(f"protocol file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise RealfaceError(f"{path}: not valid YAML: {str(err).splitlines()[0]}") from None
    try:
        return parse_protocol(data, path.resolve().parent, default_name=path.stem)
    except RealfaceError as err:
        raise RealfaceError(f"{path}: {err}") from None


def _video_and_frame(spec: DatasetSpec, row: Mapping[str, str], path: Path) -> tuple[str, int]:
    """(video id, frame index) of a row: see the module docstring."""
    try:
        frame = int(row.get("frame") or -1)
    except ValueError:
        raise RealfaceError(f"dataset {spec.name!r}: frame must be an integer, got {row.get('frame')!r}") from None
    if spec.level == "video" or path.suffix.lower() in VIDEO_SUFFIXES:
        return str(path), frame
    if spec.video_column:
        return row[spec.video_column].strip(), frame
    if frame >= 0 and row.get("source"):
        return row["source"].strip(), frame
    return "", frame


def read_dataset(spec: DatasetSpec) -> list[DatasetItem]:
    """The dataset's manifest rows that pass its filters, with labels as 0/1 and absolute paths.

    Raises when no row passes the filters, a label is unknown, or a video holds both labels.
    """
    items = []
    with spec.data.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        check_columns(spec, reader.fieldnames or ())
        for line, row in enumerate(reader, start=2):
            if not all((row.get(c) or "").strip() in allowed for c, allowed in spec.filters):
                continue
            rel = (row.get("path") or "").strip()
            if not rel:
                raise RealfaceError(f"{spec.data}:{line}: empty path")
            path = (spec.data.parent / rel).absolute()
            video, frame = _video_and_frame(spec, row, path)
            group = (row.get(spec.group_column) or "").strip() if spec.group_column else ""
            label = spec.label_of(row.get(spec.label_column) or "")
            items.append(DatasetItem(path, label, video, group, frame, {k: v or "" for k, v in row.items() if k}))
    if not items:
        shown = ", ".join(f"{c} in {list(v)}" for c, v in spec.filters) or "none"
        raise RealfaceError(f"dataset {spec.name!r}: no rows of {spec.data} pass the filters ({shown})")
    labels_of_video: dict[str, int] = {}
    for item in items:
        if item.video and labels_of_video.setdefault(item.video, item.label) != item.label:
            raise RealfaceError(
                f"dataset {spec.name!r}: video {item.video!r} holds both real and fake rows; a video has one "
                f"label (for clusters such as DFDC's source group use group_column instead of video_column)"
            )
    return items


def resolve_threshold(
    protocol: Protocol,
    scored: Mapping[str, tuple[Sequence[int], Sequence[float]]],
    stored: Threshold | None,
) -> tuple[Threshold, str]:
    """The threshold to report with, and where it came from: (threshold, source text).

    scored: dataset name -> (labels (N,), frame scores (N,)). Without a protocol threshold, `stored`
    (the model's) is used; otherwise it is fitted by the protocol's policy on `fit_on`'s scores, or on
    all datasets pooled.
    """
    import numpy as np

    spec = protocol.threshold
    if spec is None:
        if stored is None:
            raise RealfaceError(
                "the model stores no threshold; give one in the protocol, e.g. threshold: {policy: eer}"
            )
        return stored, "stored with the model"
    names = [spec.fit_on] if spec.fit_on is not None else [d.name for d in protocol.datasets]
    missing = [n for n in names if n not in scored]
    if missing:
        raise RealfaceError(f"no scores for dataset(s) {', '.join(missing)} to fit the threshold on")
    labels = np.concatenate([np.asarray(scored[n][0]) for n in names])
    scores = np.concatenate([np.asarray(scored[n][1], dtype=np.float64) for n in names])
    threshold = fit_threshold(labels, scores, spec.policy, **spec.params)
    if spec.fit_on is not None:
        return threshold, f"fitted on {spec.fit_on}"
    return threshold, "fitted on all test datasets pooled (optimistic: the test data choose their threshold)"
