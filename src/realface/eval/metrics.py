"""Binary detection metrics as pure functions of labels and scores.

Conventions everywhere in `realface.eval`:
- `labels`: (N,) with 1 = fake (the positive class, the attack) and 0 = real (bona fide).
- `scores`: (N,) finite floats, higher = more likely fake; usually p(fake) in [0, 1]. Ranking metrics
  (ROC, AUC, EER, AP) accept any real scores.
- A sample is called fake when `score >= threshold`.
- Results are fractions in [0, 1], never percent.
Inputs a user can get wrong (empty, mismatched lengths, NaN/inf scores, labels other than 0/1, only
one class where a metric needs both) raise `RealfaceError`; no function returns NaN.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from realface.errors import RealfaceError

MetricFn = Callable[[np.ndarray, np.ndarray], float]


# ---------------------------------------------------------------------------------------------
# input checks


def as_binary_inputs(labels: Any, scores: Any, *, both_classes: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Check and convert labels and scores: returns ((N,) int64 in {0, 1}, (N,) float64 finite).

    both_classes: also require at least one fake and one real sample.
    """
    y = np.asarray(labels)
    s = np.asarray(scores)
    if y.ndim != 1 or s.ndim != 1:
        raise RealfaceError(f"labels and scores must be 1-D, got shapes {y.shape} and {s.shape}")
    if y.size != s.size:
        raise RealfaceError(f"labels and scores differ in length: {y.size} labels, {s.size} scores")
    if y.size == 0:
        raise RealfaceError("no samples: labels and scores are empty")
    if y.dtype.kind not in "biuf" or not np.isin(y, (0, 1)).all():
        bad = y[~np.isin(y, (0, 1))][:3] if y.dtype.kind in "biuf" else y[:3]
        raise RealfaceError(f"labels must be 0 (real) or 1 (fake), got e.g. {bad.tolist()}")
    if s.dtype.kind not in "biuf":
        raise RealfaceError(f"scores must be numbers, got dtype {s.dtype}")
    s = s.astype(np.float64)
    if not np.isfinite(s).all():
        n_bad = int((~np.isfinite(s)).sum())
        raise RealfaceError(f"{n_bad} score(s) are NaN or infinite; remove or fix them before evaluating")
    y = y.astype(np.int64)
    if both_classes:
        n_pos = int(y.sum())
        if n_pos == 0 or n_pos == y.size:
            only = "fake" if n_pos else "real"
            raise RealfaceError(f"need both real and fake samples, got only {y.size} {only} sample(s)")
    return y, s


def _as_threshold(threshold: Any) -> float:
    """A finite float threshold; accepts anything with `__float__` (e.g. `thresholds.Threshold`)."""
    try:
        t = float(threshold)
    except (TypeError, ValueError):
        raise RealfaceError(f"threshold must be a number, got {threshold!r}") from None
    if not np.isfinite(t):
        raise RealfaceError(f"threshold must be finite, got {t}")
    return t


# ---------------------------------------------------------------------------------------------
# ranking metrics


def roc_counts(labels: Any, scores: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """False and true positive counts at every distinct score: (fps, tps, thresholds), each (K + 1,).

    thresholds: +inf, then the K distinct scores in decreasing order; point k counts the samples with
    `score >= thresholds[k]` (point 0 calls nothing fake: fps = tps = 0). Tied scores move together.
    """
    y, s = as_binary_inputs(labels, scores)
    order = np.argsort(-s, kind="mergesort")
    s_sorted, y_sorted = s[order], y[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(s_sorted)), s_sorted.size - 1]  # last index per distinct score
    tps = np.cumsum(y_sorted)[last_of_tie]
    fps = last_of_tie + 1 - tps
    return np.r_[0, fps], np.r_[0, tps], np.r_[np.inf, s_sorted[last_of_tie]]


def roc_curve(labels: Any, scores: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC curve at every distinct score: (fpr, tpr, thresholds), each (K + 1,).

    thresholds[0] = +inf (fpr = tpr = 0), then the K distinct scores in decreasing order; point k is
    the rates when `score >= thresholds[k]` is called fake. No point is dropped (scikit-learn's
    `roc_curve(..., drop_intermediate=False)`).
    """
    fps, tps, thresholds = roc_counts(labels, scores)
    return fps / fps[-1], tps / tps[-1], thresholds


def roc_auc(labels: Any, scores: Any) -> float:
    """Area under the ROC curve: P(score of a fake > score of a real) + 1/2 P(equal scores).

    Mann-Whitney U statistic from average ranks, so ties count one half; equals the trapezoidal
    area under `roc_curve` and scikit-learn's `roc_auc_score`.
    """
    y, s = as_binary_inputs(labels, scores)
    order = np.argsort(s, kind="mergesort")
    s_sorted = s[order]
    starts = np.r_[0, np.flatnonzero(np.diff(s_sorted)) + 1, s.size]  # tie-group boundaries
    mean_rank = (starts[:-1] + starts[1:] + 1) / 2.0  # 1-based average rank of each tie group
    ranks = np.empty(s.size)
    ranks[order] = np.repeat(mean_rank, np.diff(starts))
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    u = ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def eer(labels: Any, scores: Any) -> tuple[float, float]:
    """Equal error rate and its threshold: (eer, threshold).

    Along the ROC curve FPR rises and FNR = 1 - TPR falls; between the two consecutive points where
    FPR - FNR changes sign, both are interpolated linearly and EER is their common value at the
    crossing (exact when a point has FPR == FNR). The threshold is interpolated between the two
    points' thresholds with the same weight (the lower one when the upper is +inf); applying it with
    `score >= threshold` gives the operating point on the higher-threshold side of the crossing.
    """
    fpr, tpr, thresholds = roc_curve(labels, scores)
    fnr = 1.0 - tpr
    diff = fpr - fnr  # strictly increasing from -1 to +1
    j = int(np.argmax(diff >= 0))  # first point at or past the crossing; j >= 1
    i = j - 1
    w = -diff[i] / (diff[j] - diff[i])  # in (0, 1]
    value = fpr[i] + w * (fpr[j] - fpr[i])
    if np.isinf(thresholds[i]):
        threshold = thresholds[j]
    else:
        threshold = thresholds[i] + w * (thresholds[j] - thresholds[i])
    return float(value), float(threshold)


def average_precision(labels: Any, scores: Any) -> float:
    """Average precision: sum over distinct thresholds of (R_k - R_{k-1}) * P_k, with R_0 = 0.

    P_k, R_k: precision and recall when `score >= k-th highest distinct score` is called fake.
    No interpolation; this is scikit-learn's `average_precision_score`.
    """
    fps, tps, _ = roc_counts(labels, scores)
    fps, tps = fps[1:], tps[1:]  # drop the +inf point
    precision = tps / (tps + fps)
    recall = tps / tps[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def tpr_at_fpr(labels: Any, scores: Any, target_fpr: float) -> float:
    """Highest TPR among ROC operating points with FPR <= target_fpr (target in [0, 1]).

    Only real operating points count (no interpolation); the point that calls nothing fake
    (FPR = TPR = 0) always qualifies, so the result is defined for every target.
    """
    if not 0.0 <= float(target_fpr) <= 1.0:
        raise RealfaceError(f"target FPR must be a fraction in [0, 1], got {target_fpr}")
    fpr, tpr, _ = roc_curve(labels, scores)
    return float(tpr[fpr <= target_fpr].max())


# ---------------------------------------------------------------------------------------------
# metrics at a threshold (score >= threshold is fake)


def confusion_counts(labels: Any, scores: Any, threshold: float) -> dict[str, int]:
    """Counts at a threshold: {"tp", "fp", "tn", "fn"}; fake = positive, `score >= threshold` is fake."""
    y, s = as_binary_inputs(labels, scores, both_classes=False)
    pred = s >= _as_threshold(threshold)
    return {
        "tp": int(np.sum(pred & (y == 1))),
        "fp": int(np.sum(pred & (y == 0))),
        "tn": int(np.sum(~pred & (y == 0))),
        "fn": int(np.sum(~pred & (y == 1))),
    }


def accuracy(labels: Any, scores: Any, threshold: float) -> float:
    """Fraction of samples whose decision (`score >= threshold` is fake) matches the label.

    Defined with one class too (then it is that class's recall).
    """
    c = confusion_counts(labels, scores, threshold)
    return (c["tp"] + c["tn"]) / sum(c.values())


def balanced_accuracy(labels: Any, scores: Any, threshold: float) -> float:
    """(TPR + TNR) / 2 at the threshold (`score >= threshold` is fake); needs both classes."""
    as_binary_inputs(labels, scores)
    c = confusion_counts(labels, scores, threshold)
    return 0.5 * (c["tp"] / (c["tp"] + c["fn"]) + c["tn"] / (c["tn"] + c["fp"]))


# ---------------------------------------------------------------------------------------------
# anti-spoofing (ISO/IEC 30107-3): attack = fake = label 1, bona fide = real = label 0;
# a presentation is classified as an attack when score >= threshold.


def apcer(labels: Any, scores: Any, threshold: float) -> float:
    """Attack presentation classification error rate: fraction of attacks accepted as bona fide.

    = attacks with `score < threshold` / attacks (the FNR, or FAR of a spoof detector). ISO/IEC
    30107-3 reports APCER per attack species and takes the worst; here all attacks are pooled.
    """
    y, s = as_binary_inputs(labels, scores, both_classes=False)
    attacks = s[y == 1]
    if attacks.size == 0:
        raise RealfaceError("APCER needs attack (fake, label 1) samples, got none")
    return float(np.mean(attacks < _as_threshold(threshold)))


def bpcer(labels: Any, scores: Any, threshold: float) -> float:
    """Bona fide presentation classification error rate: fraction of bona fide rejected as attacks.

    = bona fide with `score >= threshold` / bona fide (the FPR, or FRR of a spoof detector).
    """
    y, s = as_binary_inputs(labels, scores, both_classes=False)
    bona_fide = s[y == 0]
    if bona_fide.size == 0:
        raise RealfaceError("BPCER needs bona fide (real, label 0) samples, got none")
    return float(np.mean(bona_fide >= _as_threshold(threshold)))


def acer(labels: Any, scores: Any, threshold: float) -> float:
    """Average classification error rate: (APCER + BPCER) / 2 at the threshold."""
    return 0.5 * (apcer(labels, scores, threshold) + bpcer(labels, scores, threshold))


def hter(labels: Any, scores: Any, threshold: float) -> float:
    """Half total error rate: (FAR + FRR) / 2 at the threshold.

    FAR = attacks accepted (= APCER), FRR = bona fide rejected (= BPCER), so at one threshold HTER
    equals ACER; by convention HTER is reported on a test set at a threshold fixed beforehand on
    validation data (e.g. its EER threshold), never one tuned on the test set.
    """
    return acer(labels, scores, threshold)


# ---------------------------------------------------------------------------------------------
# reports and confidence intervals


def binary_report(labels: Any, scores: Any, threshold: float) -> dict[str, float | int]:
    """Every metric above in one JSON-ready dict (plain floats and ints), at `threshold` where needed.

    Keys: n, n_fake, n_real, threshold, auc, eer, eer_threshold, ap, accuracy, balanced_accuracy,
    tpr_at_fpr_0.01, tpr_at_fpr_0.1, apcer, bpcer, acer, hter, tp, fp, tn, fn.
    """
    y, s = as_binary_inputs(labels, scores)
    t = _as_threshold(threshold)
    eer_value, eer_threshold = eer(y, s)
    report: dict[str, float | int] = {
        "n": int(y.size),
        "n_fake": int(y.sum()),
        "n_real": int(y.size - y.sum()),
        "threshold": t,
        "auc": roc_auc(y, s),
        "eer": eer_value,
        "eer_threshold": eer_threshold,
        "ap": average_precision(y, s),
        "accuracy": accuracy(y, s, t),
        "balanced_accuracy": balanced_accuracy(y, s, t),
        "tpr_at_fpr_0.01": tpr_at_fpr(y, s, 0.01),
        "tpr_at_fpr_0.1": tpr_at_fpr(y, s, 0.10),
        "apcer": apcer(y, s, t),
        "bpcer": bpcer(y, s, t),
        "acer": acer(y, s, t),
        "hter": hter(y, s, t),
    }
    report.update(confusion_counts(y, s, t))
    return report


def cluster_resamples(n_samples: int, clusters: Any = None, n: int = 1000, seed: int = 0) -> Iterator[np.ndarray]:
    """Indices of `n` bootstrap resamples of `n_samples` samples: yields (M,) int arrays, M varying.

    clusters: (n_samples,) cluster id per sample (e.g. the video of each frame), or None. With clusters,
    whole clusters are drawn with replacement (cluster bootstrap: as many draws as there are clusters)
    and all their samples go in, since frames of one video are not independent; without, samples are drawn.
    """
    if int(n_samples) < 1:
        raise RealfaceError("no samples to resample")
    if clusters is None:
        order, starts, sizes = np.arange(n_samples), np.arange(n_samples), np.ones(n_samples, np.int64)
    else:
        g = np.asarray(clusters)
        if g.ndim != 1 or g.size != n_samples:
            raise RealfaceError(f"groups must be 1-D with one id per sample ({n_samples}), got shape {g.shape}")
        _, inverse = np.unique(g, return_inverse=True)
        order = np.argsort(inverse, kind="mergesort")  # samples sorted by cluster
        sizes = np.bincount(inverse)  # (G,) samples per cluster
        starts = np.cumsum(sizes) - sizes  # (G,) first position of each cluster in `order`
    rng = np.random.default_rng(seed)
    for _ in range(int(n)):
        picked = rng.integers(0, sizes.size, size=sizes.size)  # (G,) clusters drawn with replacement
        size_p = sizes[picked]
        # position j of the resample reads order[starts[cluster] + j - (first j of that cluster)]
        shift = np.repeat(starts[picked] - (np.cumsum(size_p) - size_p), size_p)
        yield order[np.arange(size_p.sum()) + shift]


def bootstrap_ci(
    metric_fn: MetricFn,
    labels: Any,
    scores: Any,
    groups: Any = None,
    n: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap (1 - alpha) confidence interval of `metric_fn(labels, scores)`: (low, high).

    groups: (N,) group id per sample (e.g. the video of each frame), or None: resampled as in
    `cluster_resamples`. Resamples holding one class only are skipped; fewer than half of `n` usable
    raises. The interval is the alpha/2 and 1 - alpha/2 quantiles of the metric over the usable resamples.
    """
    y, s = as_binary_inputs(labels, scores)
    if int(n) < 1:
        raise RealfaceError(f"bootstrap needs n >= 1 resamples, got {n}")
    if not 0.0 < float(alpha) < 1.0:
        raise RealfaceError(f"alpha must be in (0, 1), got {alpha}")
    values = []
    for idx in cluster_resamples(y.size, groups, n, seed):
        y_b = y[idx]
        if y_b.min() == y_b.max():
            continue
        value = float(metric_fn(y_b, s[idx]))
        if not np.isfinite(value):
            raise RealfaceError(f"metric {getattr(metric_fn, '__name__', metric_fn)!r} returned {value}")
        values.append(value)
    if len(values) < max(1, int(n) // 2):
        raise RealfaceError(
            f"only {len(values)} of {n} bootstrap resamples hold both classes; too few "
            f"{'groups' if groups is not None else 'samples'} of one class for an interval"
        )
    low, high = np.quantile(values, [alpha / 2.0, 1.0 - alpha / 2.0])
    return float(low), float(high)
