"""Error rates per group of people: per value of a manifest column such as race, gender or age.

A detector that calls real photos fake harms the people in them, and if it does so more often for one group
than another it harms that group more. `Grouping` says which manifest columns form groups and how their
values read (codes as words, ages binned into ranges); `group_table` gives, for the groups of one column,
at the threshold:
- `fpr`: false-positive rate, the share of real faces called fake (`score >= threshold`);
- `told_fake`: the share of real faces *told* "fake": called fake and confident (not "uncertain"), the false
  accusations a user of `detect` sees;
- `fnr`: false-negative rate, the share of fakes called real (`score < threshold`);
- `uncertain`: the share of faces whose verdict is "uncertain" (confidence below the model's band);
- `auc`: ROC AUC, where the group holds both classes;
each with a percentile bootstrap interval, and per rate the largest gap between two groups with an interval
of the gap itself. A rate a group cannot have (FPR without reals, FNR and AUC without both classes) is None
and a note says why; nothing is ever NaN.

Bootstrap: each group's clusters (e.g. videos, or DFDC's source groups; single faces when None) are
resampled within the group, all groups at once, so resample b gives every group's rate and the gap of
resample b is the highest minus the lowest of them (groups whose rate resample b cannot define left out).

Conventions as in `realface.eval.metrics`: label 1 = fake, 0 = real; fractions, never percent.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from realface.errors import RealfaceError
from realface.eval.metrics import cluster_resamples, roc_auc

AGE_COLUMN = "age"  # the column binned into age ranges
DEFAULT_AGE_BINS: tuple[int, ...] = (0, 13, 20, 40, 60)  # lower edges, years: 0-12, 13-19, 20-39, 40-59, 60+
UNKNOWN = "unknown"  # the group of rows with no usable value; shown, but never counted in a gap
RATES = ("fpr", "told_fake", "fnr", "uncertain", "auc")
RATE_TITLES = {
    "fpr": "FPR (reals called fake)",
    "told_fake": 'reals told "fake"',
    "fnr": "FNR (fakes called real)",
    "uncertain": "uncertain",
    "auc": "AUC",
}

# What the codes of a data set's columns mean, by data set name: the one place for them. A protocol names a
# table with `codes: NAME` (a dataset called NAME gets it by default) or gives its own mapping.
CODE_TABLES: dict[str, dict[str, dict[str, str]]] = {
    # UTKFace (https://susanqq.github.io/UTKFace/): file names are age_gender_race_date.jpg
    "utkface": {
        "gender": {"0": "male", "1": "female"},
        "race": {"0": "White", "1": "Black", "2": "Asian", "3": "Indian", "4": "Others"},
    },
}


# ---------------------------------------------------------------------------------------------
# which group a row falls in


def check_age_bins(edges: Sequence[Any]) -> tuple[int, ...]:
    """Age bin lower edges as a tuple of ints, checked: whole years >= 0, strictly increasing, at least one."""
    try:
        years = [float(e) for e in edges]
    except (TypeError, ValueError):
        years = [math.nan]
    if not years or any(not y.is_integer() or y < 0 for y in years) or any(b <= a for a, b in zip(years, years[1:])):
        raise RealfaceError(f"age bins must be increasing whole years >= 0, e.g. 0,13,20,40,60; got {list(edges)}")
    return tuple(int(y) for y in years)


def age_bin_names(edges: Sequence[int]) -> tuple[str, ...]:
    """The name of each age range: (0, 13, 20, 60) -> ("0-12", "13-19", "20-59", "60+")."""
    uppers = [f"{b - 1}" for b in edges[1:]] + [""]
    return tuple(f"{a}-{u}" if u else f"{a}+" for a, u in zip(edges, uppers))


def age_bin(value: str, edges: Sequence[int]) -> str:
    """The age range holding `value` (years; "a-b" is a <= age < b + 1), or UNKNOWN for an empty,
    non-numeric or negative value or one below the first edge."""
    try:
        age = float(value)
    except (TypeError, ValueError):
        return UNKNOWN
    if not math.isfinite(age) or age < edges[0]:
        return UNKNOWN
    k = int(np.searchsorted(np.asarray(edges, dtype=np.float64), age, side="right")) - 1
    return age_bin_names(edges)[k]


def _codes(raw: Any) -> dict[str, dict[str, str]]:
    """{column: {code: name}} with every key and name a string; a string names a table in CODE_TABLES."""
    if isinstance(raw, str):
        if raw not in CODE_TABLES:
            raise RealfaceError(f"unknown code table {raw!r}; known: {', '.join(CODE_TABLES)} (or give a mapping)")
        raw = CODE_TABLES[raw]
    if not isinstance(raw, Mapping) or not all(isinstance(v, Mapping) for v in raw.values()):
        raise RealfaceError(f"codes must map columns to {{code: name}}, e.g. {{gender: {{0: male}}}}; got {raw!r}")
    return {str(c): {str(k).strip(): str(v) for k, v in table.items()} for c, table in raw.items()}


@dataclass(frozen=True)
class Grouping:
    """Which manifest columns form groups of people, and how their values read."""

    columns: tuple[str, ...] = ()  # columns whose values are groups (e.g. race, gender, age); () = none
    codes: Mapping[str, Mapping[str, str]] = field(default_factory=dict)  # column -> {code: name shown}
    age_bins: tuple[int, ...] = DEFAULT_AGE_BINS  # lower edges (years) of the ranges column `age` is binned in

    def __post_init__(self) -> None:
        columns = tuple(self.columns)
        if any(not isinstance(c, str) or not c.strip() for c in columns):
            raise RealfaceError(f"group columns must be column names, got {list(columns)}")
        if len(set(columns)) != len(columns):
            raise RealfaceError(f"group columns repeat: {list(columns)}")
        object.__setattr__(self, "columns", columns)
        object.__setattr__(self, "codes", _codes(self.codes))
        object.__setattr__(self, "age_bins", check_age_bins(self.age_bins))

    def group_of(self, column: str, value: str) -> str:
        """The group name of a manifest value: its age range, its code's name, the value, or UNKNOWN."""
        value = (value or "").strip()
        if column == AGE_COLUMN:
            return age_bin(value, self.age_bins)
        if not value:
            return UNKNOWN
        return self.codes.get(column, {}).get(value, value)

    def groups_of(self, row: Mapping[str, str]) -> dict[str, str]:
        """{column: group name} of a manifest row, for every group column."""
        return {c: self.group_of(c, row.get(c, "")) for c in self.columns}


def group_order(names: Sequence[str]) -> list[str]:
    """Distinct names in reading order: by leading number (age ranges, raw codes), then alphabetically;
    UNKNOWN last."""

    def key(name: str) -> tuple:
        m = re.match(r"\d+", name)
        return (name == UNKNOWN, m is None, int(m.group()) if m else 0, name.lower())

    return sorted(set(names), key=key)


# ---------------------------------------------------------------------------------------------
# rates per group


def group_rates(labels: np.ndarray, scores: np.ndarray, uncertain: np.ndarray, threshold: float) -> dict:
    """Every rate of RATES for one set of faces: labels (N,) 0/1, scores (N,), uncertain (N,) bool.

    None where undefined: fpr and told_fake without reals, fnr without fakes, auc without both classes.
    """
    real, fake = labels == 0, labels == 1
    called = scores >= threshold
    return {
        "fpr": float(called[real].mean()) if real.any() else None,
        "told_fake": float((called & ~uncertain)[real].mean()) if real.any() else None,
        "fnr": float((~called[fake]).mean()) if fake.any() else None,
        "uncertain": float(uncertain.mean()),
        "auc": roc_auc(labels, scores) if real.any() and fake.any() else None,
    }


def _interval(values: np.ndarray, alpha: float) -> list[float] | None:
    """Percentile interval of the defined (non-NaN) values; None when fewer than half are defined."""
    ok = values[~np.isnan(values)]
    if ok.size == 0 or ok.size < values.size / 2:
        return None
    low, high = np.quantile(ok, [alpha / 2.0, 1.0 - alpha / 2.0])
    return [float(low), float(high)]


def group_table(
    labels: Any,
    scores: Any,
    uncertain: Any,
    groups: Any,
    threshold: float,
    clusters: Any = None,
    *,
    bootstrap: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> dict:
    """Rates per group of one column, with intervals, and the largest gap per rate.

    labels (N,) 0/1; scores (N,) p(fake); uncertain (N,) bool, the faces whose verdict is "uncertain";
    groups (N,) group name of each face; clusters (N,) bootstrap cluster ids or None (faces resampled).
    Returns {"groups": {name: {"n", "n_real", "n_fake", fpr, fnr, uncertain, auc, "ci": {rate: [low, high]
    or None}}} in `group_order`, "gaps": {rate: {"value", "ci", "highest", "lowest"} or None}, "notes": [...]}.
    A gap compares the groups other than UNKNOWN that have the rate; fewer than two give None.
    """
    y = np.asarray(labels, dtype=np.int64)
    s = np.asarray(scores, dtype=np.float64)
    u = np.asarray(uncertain, dtype=bool)
    g = np.asarray(groups).astype(str)
    c = None if clusters is None else np.asarray(clusters)
    if not (y.shape == s.shape == u.shape == g.shape) or y.ndim != 1 or (c is not None and c.shape != y.shape):
        raise RealfaceError("labels, scores, uncertain, groups (and clusters) must be 1-D and of one length")
    if y.size == 0:
        raise RealfaceError("no faces to compare groups on")
    if int(bootstrap) < 1:
        raise RealfaceError(f"bootstrap needs n >= 1 resamples, got {bootstrap}")
    names = group_order(g.tolist())
    # draws[rate][k, b]: the rate of group k in resample b (NaN where that resample cannot define it)
    draws = {rate: np.full((len(names), int(bootstrap)), np.nan) for rate in RATES}
    table: dict[str, dict] = {}
    for k, name in enumerate(names):
        idx = np.flatnonzero(g == name)
        yk, sk, uk = y[idx], s[idx], u[idx]
        record: dict[str, Any] = {"n": int(idx.size), "n_real": int((yk == 0).sum()), "n_fake": int(yk.sum())}
        record.update(group_rates(yk, sk, uk, threshold))
        within = None if c is None else c[idx]
        for b, sub in enumerate(cluster_resamples(idx.size, within, bootstrap, seed + k)):  # a stream per group
            for rate, value in group_rates(yk[sub], sk[sub], uk[sub], threshold).items():
                if value is not None and record[rate] is not None:
                    draws[rate][k, b] = value
        record["ci"] = {rate: _interval(draws[rate][k], alpha) if record[rate] is not None else None
                        for rate in RATES}  # fmt: skip
        table[name] = record
    return {"groups": table, "gaps": _gaps(table, names, draws, alpha), "notes": _notes(table)}


def _gaps(table: Mapping[str, Mapping], names: Sequence[str], draws: Mapping[str, np.ndarray], alpha: float) -> dict:
    """Per rate, the highest minus the lowest group's value, and its bootstrap interval (see `group_table`)."""
    gaps: dict[str, dict | None] = {}
    for rate in RATES:
        ks = [k for k, n in enumerate(names) if n != UNKNOWN and table[n][rate] is not None]
        if len(ks) < 2:
            gaps[rate] = None
            continue
        values = {names[k]: table[names[k]][rate] for k in ks}
        highest = max(values, key=values.__getitem__)
        lowest = min(values, key=values.__getitem__)
        d = draws[rate][ks]  # (K, B)
        defined = (~np.isnan(d)).sum(axis=0) >= 2
        spread = np.full(d.shape[1], np.nan)
        spread[defined] = np.nanmax(d[:, defined], axis=0) - np.nanmin(d[:, defined], axis=0)
        gaps[rate] = {"value": values[highest] - values[lowest], "ci": _interval(spread, alpha),
                      "highest": highest, "lowest": lowest}  # fmt: skip
    return gaps


def _notes(table: Mapping[str, Mapping]) -> list[str]:
    """Why a rate is n/a for some groups, one line per reason."""
    notes = []
    only_real = [n for n, r in table.items() if r["n_fake"] == 0]
    only_fake = [n for n, r in table.items() if r["n_real"] == 0]
    if only_real:
        which = "every group" if len(only_real) == len(table) else ", ".join(only_real)
        notes.append(f"only real faces in {which}: FNR and AUC are n/a there")
    if only_fake:
        which = "every group" if len(only_fake) == len(table) else ", ".join(only_fake)
        notes.append(f"only fake faces in {which}: FPR, reals told fake and AUC are n/a there")
    if UNKNOWN in table:
        notes.append(f"{UNKNOWN}: faces with no usable value in this column; not counted in the gaps")
    unsure = [n for n, r in table.items() if any(r[m] is not None and r["ci"][m] is None for m in RATES)]
    if unsure:
        notes.append(f"no interval for some rates of {', '.join(unsure)}: too few resamples define them")
    return notes
