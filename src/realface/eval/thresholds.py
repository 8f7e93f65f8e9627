"""Decision thresholds fitted on validation data, and three-way decisions with a confidence band.

A `Threshold` is fitted by a named policy from `THRESHOLD_POLICIES` and stored (as JSON) with the model,
to be used at detection time instead of a fixed 0.5. `decide` then says "fake" when p >= t, "real"
when p < t, and "uncertain" when the prediction's confidence is below a band (one for both verdicts, or
one for "real" and one for "fake"); the band is chosen on validation data from the coverage/accuracy
trade-off (`coverage_accuracy_curve`, `fit_confidence_band`, `fit_two_sided_band`).
"""

from __future__ import annotations

import inspect
import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from realface.errors import RealfaceError
from realface.eval.metrics import as_binary_inputs, eer, roc_counts

REAL, FAKE, UNCERTAIN = "real", "fake", "uncertain"


# ---------------------------------------------------------------------------------------------
# threshold policies: (labels (N,), scores (N,), **params) -> threshold; score >= threshold is fake


def _above_all(scores: np.ndarray) -> float:
    """The smallest float above every score: a finite threshold that calls nothing fake."""
    return float(np.nextafter(scores.max(), np.inf))


def _eer_policy(labels: np.ndarray, scores: np.ndarray) -> float:
    """The EER threshold (interpolated on the ROC curve, see `metrics.eer`)."""
    return eer(labels, scores)[1]


def _max_balanced_accuracy_policy(labels: np.ndarray, scores: np.ndarray) -> float:
    """The threshold of highest balanced accuracy (the highest such threshold if several tie).

    Any value in (next lower score, score of the best point] gives the same decisions; the midpoint
    is returned, which leaves a margin on both sides for unseen data.
    """
    fps, tps, thresholds = roc_counts(labels, scores)
    n_pos, n_neg = tps[-1], fps[-1]
    balanced = tps * n_neg + (n_neg - fps) * n_pos  # 2 n_pos n_neg * balanced accuracy, exact in integers
    k = int(np.argmax(balanced))
    if k == 0:
        return _above_all(scores)
    if k == thresholds.size - 1:
        return float(thresholds[k])
    mid = 0.5 * (thresholds[k] + thresholds[k + 1])
    return float(mid if mid > thresholds[k + 1] else thresholds[k])


def _target_fpr_policy(labels: np.ndarray, scores: np.ndarray, fpr: float) -> float:
    """The lowest threshold (highest TPR) whose FPR on these data is <= `fpr` (in [0, 1]).

    The threshold is a score itself (the top of its interval), the side that keeps the FPR lowest.
    """
    if not 0.0 <= float(fpr) <= 1.0:
        raise RealfaceError(f"target_fpr needs fpr in [0, 1] (a fraction), got {fpr}")
    fps, _, thresholds = roc_counts(labels, scores)
    k = int(np.flatnonzero(fps / fps[-1] <= fpr)[-1])
    return _above_all(scores) if k == 0 else float(thresholds[k])


BAND_ACCURACY = 0.90  # default confident band: it keeps the validation faces on which verdicts reach this accuracy
FIXED = "fixed"  # a threshold set by hand (or a default), not fitted: a policy name a `Threshold` may carry
THRESHOLD_POLICIES: dict[str, Callable[..., float]] = {
    "eer": _eer_policy,
    "max_balanced_accuracy": _max_balanced_accuracy_policy,
    "target_fpr": _target_fpr_policy,
}


@dataclass(frozen=True)
class Threshold:
    """A fitted decision threshold: `score >= value` is fake. JSON via `to_dict` / `from_dict`."""

    value: float  # the threshold on p(fake)
    policy: str  # the name in THRESHOLD_POLICIES that fitted it
    params: dict[str, Any] = field(default_factory=dict)  # the policy's parameters, e.g. {"fpr": 0.01}

    def __post_init__(self) -> None:
        if not isinstance(self.value, numbers.Real) or not np.isfinite(self.value):
            raise RealfaceError(f"threshold value must be a finite number, got {self.value!r}")
        object.__setattr__(self, "value", float(self.value))  # plain float, JSON-ready
        if self.policy not in THRESHOLD_POLICIES and self.policy != FIXED:
            choices = ", ".join([*THRESHOLD_POLICIES, FIXED])
            raise RealfaceError(f"unknown threshold policy {self.policy!r}; choose one of {choices}")
        for key, v in self.params.items():
            if not isinstance(key, str) or not isinstance(v, (int, float, str, bool)):
                raise RealfaceError(f"threshold params must map names to numbers or strings, got {key!r}: {v!r}")

    def __float__(self) -> float:
        return float(self.value)

    def to_dict(self) -> dict[str, Any]:
        """{"value": float, "policy": str, "params": {...}}: plain JSON types."""
        return {"value": float(self.value), "policy": self.policy, "params": dict(self.params)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Threshold:
        """Inverse of `to_dict`."""
        try:
            return cls(value=float(data["value"]), policy=str(data["policy"]), params=dict(data.get("params", {})))
        except (KeyError, TypeError, ValueError) as e:
            raise RealfaceError(f"not a threshold record (needs value, policy, params): {data!r}") from e


def check_threshold_policy(policy: str, **params: float) -> None:
    """Raise RealfaceError unless `policy` names a policy that takes exactly `params` (checked before any data)."""
    if policy not in THRESHOLD_POLICIES:
        raise RealfaceError(f"unknown threshold policy {policy!r}; choose one of {', '.join(THRESHOLD_POLICIES)}")
    fn = THRESHOLD_POLICIES[policy]
    wanted = [p for p in inspect.signature(fn).parameters if p not in ("labels", "scores")]
    if sorted(wanted) != sorted(params):
        raise RealfaceError(f"threshold policy {policy!r} takes parameters {wanted or 'none'}, got {sorted(params) or 'none'}")
    fpr = params.get("fpr")
    if fpr is not None and not 0.0 <= float(fpr) < 1.0:
        raise RealfaceError(f"target FPR {fpr} must be a fraction in [0, 1), e.g. 0.01")


def fit_threshold(labels: Any, scores: Any, policy: str = "eer", **params: float) -> Threshold:
    """Fit the decision threshold on validation labels (N,) and scores (N,) by a named policy.

    policy: "eer" (where FPR = FNR), "max_balanced_accuracy", or "target_fpr" with `fpr=` (highest
    TPR with FPR <= fpr on these data). Needs both classes.
    """
    check_threshold_policy(policy, **params)
    y, s = as_binary_inputs(labels, scores)
    return Threshold(value=THRESHOLD_POLICIES[policy](y, s, **params), policy=policy, params=dict(params))


# ---------------------------------------------------------------------------------------------
# confidence and three-way decisions


def _probabilities(scores: Any) -> np.ndarray:
    """(N,) float64 in [0, 1], non-empty."""
    p = np.asarray(scores)
    if p.ndim != 1 or p.size == 0:
        raise RealfaceError(f"scores must be a non-empty 1-D array, got shape {p.shape}")
    if p.dtype.kind not in "biuf":
        raise RealfaceError(f"scores must be numbers, got dtype {p.dtype}")
    p = p.astype(np.float64)
    if not (np.isfinite(p) & (p >= 0.0) & (p <= 1.0)).all():
        raise RealfaceError("scores must be probabilities p(fake) in [0, 1] (no NaN)")
    return p


def _threshold_value(threshold: float | Threshold) -> float:
    t = float(threshold)
    if not 0.0 <= t <= 1.0:
        raise RealfaceError(f"threshold must be in [0, 1] for probabilities, got {t}")
    return t


def _confidences(confidences: Any, n: int) -> np.ndarray:
    """(n,) float64 in [0, 1]."""
    c = np.asarray(confidences)
    if c.ndim != 1 or c.size != n:
        raise RealfaceError(f"confidences must be 1-D with one value per score ({n}), got shape {c.shape}")
    if c.dtype.kind not in "biuf":
        raise RealfaceError(f"confidences must be numbers, got dtype {c.dtype}")
    c = c.astype(np.float64)
    if not (np.isfinite(c) & (c >= 0.0) & (c <= 1.0)).all():
        raise RealfaceError("confidences must be in [0, 1] (e.g. 1 - u), no NaN")
    return c


def distance_confidence(scores: Any, threshold: float | Threshold) -> np.ndarray:
    """Confidence of each decision from its distance to the threshold: (N,) in [0, 1].

    c = (p - t) / (1 - t) when p >= t (called fake), c = (t - p) / t when p < t (called real):
    0 at the threshold, 1 at p = 1 or p = 0, linear in between on each side (0 where p = t = 0 or 1).
    """
    p = _probabilities(scores)
    t = _threshold_value(threshold)
    above = p >= t
    span = np.where(above, 1.0 - t, t)  # room between t and the end on the decision's side
    dist = np.abs(p - t)
    return np.divide(dist, span, out=np.zeros_like(p), where=span > 0)


# A confidence band: the least confidence of a "real" or "fake" verdict, one for both sides or a pair (real, fake).
Band = float | tuple[float, float]


def band_sides(band: Band | dict[str, float] | list[float]) -> tuple[float, float]:
    """(real side, fake side) of a band given as one number, a pair, or {"real": r, "fake": f}; each in [0, 1]."""
    if isinstance(band, dict):
        band = (band.get("real", math.nan), band.get("fake", math.nan))
    pair = tuple(band) if isinstance(band, (tuple, list)) else (band, band)
    if len(pair) != 2 or not all(
        isinstance(b, numbers.Real) and not isinstance(b, bool) and 0.0 <= float(b) <= 1.0 for b in pair
    ):
        raise RealfaceError(f"confidence band must be in [0, 1] (one number, or one for real and one for fake), got {band!r}")
    return float(pair[0]), float(pair[1])


def band_json(band: Band) -> float | dict[str, float]:
    """A band as stored in JSON: one number when both sides agree, else {"real": r, "fake": f}."""
    real, fake = band_sides(band)
    return real if real == fake else {"real": real, "fake": fake}


def band_text(band: Band) -> str:
    """A band for people: "0.486", or "0.335 (real), 0.556 (fake)"."""
    real, fake = band_sides(band)
    return f"{real:.3f}" if real == fake else f"{real:.3f} (real), {fake:.3f} (fake)"


def confident(scores: Any, threshold: float | Threshold, confidences: Any, band: Band) -> np.ndarray:
    """(N,) bool: the decisions whose confidence reaches the band of their side ("fake" when p >= threshold)."""
    p = _probabilities(scores)
    t = _threshold_value(threshold)
    real, fake = band_sides(band)
    c = distance_confidence(p, t) if confidences is None else _confidences(confidences, p.size)
    return c >= np.where(p >= t, fake, real)


def decide(
    scores: Any,
    threshold: float | Threshold,
    confidence: Any = None,
    band: Band = 0.0,
) -> np.ndarray:
    """Three-way decisions: (N,) str array of "real", "fake" or "uncertain".

    "fake" when p >= threshold, "real" otherwise, unless the confidence is below the band of that side (`band`:
    one number in [0, 1] for both, or a pair (real, fake)): then "uncertain". confidence: (N,) in [0, 1] supplied
    by the caller (e.g. evidential 1 - u), or None for `distance_confidence(scores, threshold)`. band = 0 never
    says "uncertain".
    """
    p = _probabilities(scores)
    t = _threshold_value(threshold)
    kept = confident(p, t, confidence, band)
    out = np.where(p >= t, FAKE, REAL).astype("<U9")
    out[~kept] = UNCERTAIN
    return out


def coverage_accuracy_curve(
    labels: Any,
    scores: Any,
    confidences: Any,
    threshold: float | Threshold,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Coverage and accuracy of the confident decisions for every band: (coverage, accuracy, bands), each (B,).

    bands: the distinct confidences in increasing order; at band b the kept samples are those with
    confidence >= b (the others are "uncertain"), coverage = kept / N and accuracy = correct among kept
    (decision `p >= threshold` is fake). Coverage falls as the band rises, from 1 at the first band.
    confidences: (N,) in [0, 1], or None for `distance_confidence`. labels may hold one class.
    """
    y, p = as_binary_inputs(labels, scores, both_classes=False)
    p = _probabilities(p)
    t = _threshold_value(threshold)
    c = distance_confidence(p, t) if confidences is None else _confidences(confidences, p.size)
    correct = ((p >= t).astype(np.int64) == y).astype(np.float64)
    order = np.argsort(c, kind="mergesort")
    c_sorted = c[order]
    first = np.r_[0, np.flatnonzero(np.diff(c_sorted)) + 1]  # first index of each distinct confidence
    kept = c.size - first
    correct_kept = np.cumsum(correct[order][::-1])[::-1][first]  # correct with confidence >= band
    return kept / c.size, correct_kept / kept, c_sorted[first]


def fit_confidence_band(
    labels: Any,
    scores: Any,
    confidences: Any,
    threshold: float | Threshold,
    target_accuracy: float | None = None,
    target_coverage: float | None = None,
) -> float:
    """Choose the band for `decide` on validation data, from `coverage_accuracy_curve`.

    target_accuracy (default 0.95 when neither target is given): the smallest band whose kept
    decisions reach that accuracy, i.e. the highest coverage that does; raises when no band does.
    target_coverage: the largest band that still keeps at least that fraction of samples.
    """
    if target_accuracy is not None and target_coverage is not None:
        raise RealfaceError("give target_accuracy or target_coverage, not both")
    coverage, acc, bands = coverage_accuracy_curve(labels, scores, confidences, threshold)
    if target_coverage is not None:
        if not 0.0 < float(target_coverage) <= 1.0:
            raise RealfaceError(f"target_coverage must be in (0, 1], got {target_coverage}")
        return float(bands[np.flatnonzero(coverage >= target_coverage)[-1]])
    target = 0.95 if target_accuracy is None else float(target_accuracy)
    if not 0.0 < target <= 1.0:
        raise RealfaceError(f"target_accuracy must be in (0, 1], got {target_accuracy}")
    reached = np.flatnonzero(acc >= target)
    if reached.size == 0:
        best = int(np.argmax(acc))
        raise RealfaceError(
            f"no confidence band reaches accuracy {target:.3f} on these data; the best is "
            f"{acc[best]:.3f} at coverage {coverage[best]:.3f}"
        )
    return float(bands[reached[0]])


def fit_two_sided_band(
    labels: Any,
    scores: Any,
    confidences: Any,
    threshold: float | Threshold,
    target_accuracy: float = BAND_ACCURACY,
    pooled: bool = False,
) -> tuple[float, float]:
    """The band (real, fake) that keeps the most validation decisions at `target_accuracy` or above.

    A "real" and a "fake" verdict need not be equally sure to be equally right: a detector may be trustworthy on
    reals from a small distance to the threshold and on fakes only from a large one, or the other way around. So
    each side gets its own least confidence. By default each verdict must reach the target on its own (of the
    faces told "real", at least that share real; likewise "fake"), the promise a user told either can rely on,
    and each side keeps the most faces it can. pooled=True asks it only of all kept decisions together and returns
    the pair that keeps the most (exact over all pairs; it may keep more by letting one verdict fall below the
    target while the other exceeds it). Raises when no band reaches the target.
    """
    y, p = as_binary_inputs(labels, scores, both_classes=False)
    p = _probabilities(p)
    t = _threshold_value(threshold)
    target = float(target_accuracy)
    if not 0.0 < target <= 1.0:
        raise RealfaceError(f"target_accuracy must be in (0, 1], got {target_accuracy}")
    c = distance_confidence(p, t) if confidences is None else _confidences(confidences, p.size)
    fake_side = p >= t
    slack = 1e-9 * p.size  # cumulative sums of (0/1 - target) carry rounding
    sides = []
    for side in (~fake_side, fake_side):  # real, fake
        cs, right = c[side], (y[side] == 1) == fake_side[side]
        order = np.argsort(-cs, kind="mergesort")  # most confident first: keeping the first k is a band
        cs, right = cs[order], right[order]
        # surplus[k]: sum over the first k kept of (correct - target); kept faces reach the target where it is >= 0
        surplus = np.r_[0.0, np.cumsum(right - target)]
        # a band cannot split faces of equal confidence, nor keep none of a side's faces of confidence 1
        cut_ok = np.r_[cs[:1] < 1.0, cs[1:] < cs[:-1], True] if cs.size else np.array([True])
        surplus[~cut_ok] = -np.inf
        bands = np.r_[1.0, cs]  # band keeping the first k: the k-th confidence (k = 0: none, 1 above all of them)
        sides.append((surplus, bands))
    (s_real, b_real), (s_fake, b_fake) = sides
    if not pooled:  # each side on its own: the most faces it keeps with its own surplus >= 0 (-1: no band does)
        reached = [np.flatnonzero(s >= -slack) for s in (s_real, s_fake)]
        k_real, k_fake = (int(r[-1]) if r.size else -1 for r in reached)
        if k_real < 0 or k_fake < 0 or k_real + k_fake == 0:
            raise RealfaceError(f"no confidence band reaches accuracy {target:.3f} on both verdicts on these data")
        return float(b_real[k_real]), float(b_fake[k_fake])
    # For each number kept on the real side, the most kept on the fake side with s_real + s_fake >= 0: the last k
    # whose suffix maximum of s_fake reaches -s_real (that suffix maximum falls as k grows).
    suffix_max = np.maximum.accumulate(s_fake[::-1])[::-1]
    k_real = np.flatnonzero(np.isfinite(s_real))
    k_fake = np.searchsorted(-suffix_max, s_real[k_real] + slack, side="right") - 1
    kept = np.where(k_fake >= 0, k_real + k_fake, 0)
    if kept.max() == 0:
        raise RealfaceError(f"no confidence band reaches accuracy {target:.3f} on these data")
    best = int(np.argmax(kept))
    return float(b_real[k_real[best]]), float(b_fake[k_fake[best]])


VIDEO_AGGREGATION = "confidence_weighted"  # how `video_verdict` pools a video's frames (realface.eval.aggregate)


@dataclass(frozen=True)
class VideoVerdict:
    """One video's decision from its frames' (faces') scores: what detect, serve and the report all give."""

    score: float  # pooled p(fake)
    confidence: float  # in [0, 1]
    verdict: str  # real, fake or uncertain
    drivers: tuple[int, ...]  # indices of the frames that drove the verdict: the most confident on its side


def video_verdict(
    scores: Any, confidences: Any, threshold: float, band: Band, evidential: bool = False, top: int = 3
) -> VideoVerdict:
    """The one decision rule for a video. scores, confidences: (N,) of its frames' faces.

    Frames weigh by their confidence (FFDBackbone's idea; a video of only unsure frames gets the plain mean).
    The video's confidence is the confidence-weighted mean of its frames' for an evidential model (whose
    confidence is 1 - uncertainty), else the pooled score's distance to the threshold.
    """
    from realface.eval.aggregate import aggregate_scores

    p = _probabilities(scores)
    c = _confidences(confidences, p.size)
    if p.size == 0:
        raise RealfaceError("a video verdict needs at least one scored frame")
    _, pooled = aggregate_scores(p, np.zeros(p.size, np.int64), VIDEO_AGGREGATION, confidences=c)
    score = float(pooled[0])
    if evidential:
        conf = float(np.average(c, weights=np.maximum(c, 1e-6)))
    else:
        conf = float(distance_confidence(np.array([score]), threshold)[0])
    verdict = str(decide(np.array([score]), threshold, np.array([conf]), band)[0])
    side = np.where(p >= threshold, 1.0, -1.0) * (1.0 if score >= threshold else -1.0)
    order = np.argsort(-(side * c), kind="stable")
    return VideoVerdict(score, conf, verdict, tuple(int(i) for i in order[:top] if side[i] > 0))
