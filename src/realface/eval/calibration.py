"""Calibration of p(fake): expected calibration error, reliability diagram, temperature scaling.

ECE and the diagram use the top-label convention of Guo et al. (2017): each prediction's confidence
is max(p, 1 - p), its decision is p >= 0.5 (fake), and it is correct when the decision matches the
label. Confidences are put in `n_bins` equal-width bins over [0, 1] (bin k holds [k/B, (k+1)/B), the
last bin includes 1); binary confidences lie in [0.5, 1], so only the upper half of the bins fill.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from realface.errors import RealfaceError
from realface.eval.metrics import as_binary_inputs

DEFAULT_BINS = 15
# temperature scaling searches T in [T_MIN, T_MAX]; the optimum is clipped to this range
T_MIN, T_MAX = 1e-2, 1e2


class ReliabilityDiagram(NamedTuple):
    """Per non-empty bin, each (K,): empty bins are left out, so no value is undefined."""

    bin_centers: np.ndarray  # centre of the bin on the confidence axis
    accuracy: np.ndarray  # fraction of correct decisions in the bin
    confidence: np.ndarray  # mean confidence max(p, 1 - p) in the bin
    counts: np.ndarray  # number of predictions in the bin (int64)


def _labels_and_probs(labels: Any, probs: Any) -> tuple[np.ndarray, np.ndarray]:
    y, p = as_binary_inputs(labels, probs, both_classes=False)
    if ((p < 0.0) | (p > 1.0)).any():
        raise RealfaceError("calibration needs probabilities p(fake) in [0, 1]; apply a sigmoid to logits first")
    return y, p


def reliability_diagram(labels: Any, probs: Any, n_bins: int = DEFAULT_BINS) -> ReliabilityDiagram:
    """Accuracy against confidence per bin for labels (N,) and probs (N,) = p(fake) in [0, 1]."""
    if int(n_bins) < 1:
        raise RealfaceError(f"n_bins must be >= 1, got {n_bins}")
    y, p = _labels_and_probs(labels, probs)
    conf = np.maximum(p, 1.0 - p)
    correct = ((p >= 0.5).astype(np.int64) == y).astype(np.float64)
    bins = np.minimum((conf * n_bins).astype(np.int64), n_bins - 1)  # (N,) bin index
    counts = np.bincount(bins, minlength=n_bins)
    filled = counts > 0
    acc = np.bincount(bins, weights=correct, minlength=n_bins)[filled] / counts[filled]
    mean_conf = np.bincount(bins, weights=conf, minlength=n_bins)[filled] / counts[filled]
    centers = (np.arange(n_bins) + 0.5) / n_bins
    return ReliabilityDiagram(centers[filled], acc, mean_conf, counts[filled])


def expected_calibration_error(labels: Any, probs: Any, n_bins: int = DEFAULT_BINS) -> float:
    """ECE = sum over bins of (n_bin / N) * |accuracy_bin - mean confidence_bin|, in [0, 1].

    Top-label confidence max(p, 1 - p), `n_bins` equal-width bins over [0, 1] (default 15).
    """
    d = reliability_diagram(labels, probs, n_bins)
    return float(np.sum(d.counts * np.abs(d.accuracy - d.confidence)) / d.counts.sum())


def plot_reliability_diagram(
    labels: Any,
    probs: Any,
    path: str | Path,
    n_bins: int = DEFAULT_BINS,
    title: str | None = None,
) -> Path:
    """Write the reliability diagram as a PNG at `path` (parents created); returns the path.

    Bars: accuracy per bin; diagonal: perfect calibration; lower panel: predictions per bin. Drawn on
    an Agg canvas inside this function (no pyplot, no global backend change).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    d = reliability_diagram(labels, probs, n_bins)
    ece = float(np.sum(d.counts * np.abs(d.accuracy - d.confidence)) / d.counts.sum())
    width = 1.0 / n_bins
    fig = Figure(figsize=(4.5, 5.5), dpi=100)
    FigureCanvasAgg(fig)
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    top.bar(d.bin_centers, d.accuracy, width=width, edgecolor="black", color="tab:blue", label="accuracy")
    top.bar(
        d.bin_centers, d.confidence - d.accuracy, bottom=d.accuracy, width=width,
        color="tab:red", alpha=0.3, label="gap to confidence",
    )
    top.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfect calibration")
    used = np.flatnonzero(d.counts)  # zoom to the bins that hold predictions
    lo = float(d.bin_centers[used[0]] - width / 2) if used.size else 0.0
    hi = float(d.bin_centers[used[-1]] + width / 2) if used.size else 1.0
    top.set_xlim(lo, hi)
    top.set_ylim(min(lo, float(d.accuracy[used].min())) if used.size else 0.0, 1)
    top.set_ylabel("accuracy")
    top.set_title(f"{title + ': ' if title else ''}ECE = {ece:.3f} ({n_bins} bins)")
    top.legend(loc="upper left", fontsize=8)
    bottom.bar(d.bin_centers, d.counts, width=width, edgecolor="black", color="grey")
    bottom.set_xlabel("confidence max(p, 1 - p)")
    bottom.set_ylabel("count")
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png")
    return out


# ---------------------------------------------------------------------------------------------
# temperature scaling: p(fake) = sigmoid(logit / T)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _finite_logits(logits: Any) -> np.ndarray:
    z = np.asarray(logits)
    if z.ndim != 1 or z.size == 0 or z.dtype.kind not in "biuf":
        raise RealfaceError(f"logits must be a non-empty 1-D numeric array, got shape {z.shape}, dtype {z.dtype}")
    z = z.astype(np.float64)
    if not np.isfinite(z).all():
        raise RealfaceError(f"{int((~np.isfinite(z)).sum())} logit(s) are NaN or infinite")
    return z


def probabilities_to_logits(probs: Any, eps: float = 1e-6) -> np.ndarray:
    """log(p / (1 - p)) of p(fake) (N,) clipped to [eps, 1 - eps], for models that output probabilities."""
    p = np.clip(np.asarray(probs, dtype=np.float64), eps, 1.0 - eps)
    return np.log(p) - np.log1p(-p)


def apply_temperature(logits: Any, temperature: float) -> np.ndarray:
    """Calibrated p(fake) = sigmoid(logit / T): (N,) from logits (N,), T > 0."""
    if not (np.isfinite(temperature) and temperature > 0):
        raise RealfaceError(f"temperature must be a positive number, got {temperature}")
    return _sigmoid(_finite_logits(logits) / float(temperature))


def _nll(labels: np.ndarray, logits: np.ndarray, temperature: float) -> float:
    """Mean binary cross-entropy of sigmoid(logits / T), computed stably."""
    margin = (2.0 * labels - 1.0) * logits / temperature  # > 0 when the logit points to the label
    return float(np.mean(np.logaddexp(0.0, -margin)))


def fit_temperature(logits: Any, labels: Any, tol: float = 1e-6) -> float:
    """Temperature T minimizing the validation NLL of sigmoid(logit / T); logits (N,), labels (N,).

    The NLL is convex in 1/T, hence unimodal in log T; golden-section search over log T in
    [T_MIN, T_MAX] to `tol` (in log T). Results at an end of that range mean the logits are nearly
    separable (small T) or carry almost no information (large T). Needs both classes.
    """
    z = _finite_logits(logits)
    y, _ = as_binary_inputs(labels, z)
    lo, hi = np.log(T_MIN), np.log(T_MAX)
    ratio = (np.sqrt(5.0) - 1.0) / 2.0
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = _nll(y, z, np.exp(a)), _nll(y, z, np.exp(b))
    while hi - lo > tol:
        if fa <= fb:  # minimum in [lo, b]
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = _nll(y, z, np.exp(a))
        else:  # minimum in [a, hi]
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = _nll(y, z, np.exp(b))
    return float(np.exp(0.5 * (lo + hi)))
