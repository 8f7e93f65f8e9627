"""Frame-to-video aggregation of scores and labels.

A video is scored from its frames' p(fake): the mean (what the field reports), a confidence-weighted
mean, or SBI's max over the faces of each frame followed by the mean over frames. Methods are looked up
by name in `AGGREGATIONS`. Videos come out in `np.unique` order of their ids.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from realface.errors import RealfaceError


@dataclass(frozen=True)
class Aggregation:
    """One way to reduce a video's frame scores to a video score."""

    # (scores (M,), confidences (M,) or None, frame_ids (M,) or None) of one video -> its score.
    fn: Callable[[np.ndarray, np.ndarray | None, np.ndarray | None], float]
    needs_confidences: bool = False  # the caller must pass `confidences`
    needs_frame_ids: bool = False  # the caller must pass `frame_ids`


def _mean(scores: np.ndarray, confidences: np.ndarray | None, frame_ids: np.ndarray | None) -> float:
    """Mean of the frames' probabilities."""
    return float(scores.mean())


def _confidence_weighted(scores: np.ndarray, confidences: np.ndarray | None, frame_ids: np.ndarray | None) -> float:
    """sum(c * p) / sum(c); the plain mean when every confidence of the video is 0."""
    assert confidences is not None
    total = confidences.sum()
    if total <= 0.0:
        return float(scores.mean())
    return float((confidences * scores).sum() / total)


def _max_face_then_mean(scores: np.ndarray, confidences: np.ndarray | None, frame_ids: np.ndarray | None) -> float:
    """Max over the faces of each frame, then mean over the frames (SBI)."""
    assert frame_ids is not None
    _, frame = np.unique(frame_ids, return_inverse=True)
    per_frame = np.full(frame.max() + 1, -np.inf)
    np.maximum.at(per_frame, frame, scores)
    return float(per_frame.mean())


AGGREGATIONS: dict[str, Aggregation] = {
    "mean": Aggregation(_mean),
    "confidence_weighted": Aggregation(_confidence_weighted, needs_confidences=True),
    "max_face_then_mean": Aggregation(_max_face_then_mean, needs_frame_ids=True),
}


def _per_video(video_ids: Any, n: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """Unique video ids (V,) and, for each, the indices of its rows."""
    v = np.asarray(video_ids)
    if v.ndim != 1 or v.size != n:
        raise RealfaceError(f"video_ids must be 1-D with one id per row ({n}), got shape {v.shape}")
    if n == 0:
        raise RealfaceError("no frames to aggregate: inputs are empty")
    unique, inverse = np.unique(v, return_inverse=True)
    order = np.argsort(inverse, kind="mergesort")
    return unique, np.split(order, np.cumsum(np.bincount(inverse))[:-1])


def _column(values: Any, n: int | None, name: str) -> np.ndarray:
    """A finite float column (M,), of length n when n is given."""
    a = np.asarray(values)
    if a.ndim != 1 or (n is not None and a.size != n):
        per_frame = "" if n is None else f" with one value per frame ({n})"
        raise RealfaceError(f"{name} must be 1-D{per_frame}, got shape {a.shape}")
    if a.dtype.kind not in "biuf":
        raise RealfaceError(f"{name} must be numbers, got dtype {a.dtype}")
    a = a.astype(np.float64)
    if not np.isfinite(a).all():
        raise RealfaceError(f"{int((~np.isfinite(a)).sum())} {name} value(s) are NaN or infinite")
    return a


def aggregate_scores(
    scores: Any,
    video_ids: Any,
    method: str = "mean",
    confidences: Any = None,
    frame_ids: Any = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Video scores from frame (face) scores: (video_ids (V,), video_scores (V,) float64).

    scores: (N,) p(fake) of each face; video_ids: (N,) the video of each face.
    method: a name in `AGGREGATIONS`:
      "mean": mean of the probabilities;
      "confidence_weighted": mean weighted by `confidences` (N,) >= 0, e.g. 1 - u (evidential) or
        |2p - 1|; a video whose weights are all 0 gets its plain mean;
      "max_face_then_mean": max over faces sharing a `frame_ids` (N,) value within a video, then the
        mean over its frames.
    """
    if method not in AGGREGATIONS:
        raise RealfaceError(f"unknown aggregation {method!r}; choose one of {', '.join(AGGREGATIONS)}")
    agg = AGGREGATIONS[method]
    s = _column(scores, None, "scores")
    unique, members = _per_video(video_ids, s.size)
    c = None
    if agg.needs_confidences:
        if confidences is None:
            raise RealfaceError(f"aggregation {method!r} needs confidences (one per frame)")
        c = _column(confidences, s.size, "confidences")
        if (c < 0).any():
            raise RealfaceError("confidences must be >= 0 to be used as weights")
    f = None
    if agg.needs_frame_ids:
        if frame_ids is None:
            raise RealfaceError(f"aggregation {method!r} needs frame_ids (one per face)")
        f = np.asarray(frame_ids)
        if f.ndim != 1 or f.size != s.size:
            raise RealfaceError(f"frame_ids must be 1-D with one id per face ({s.size}), got shape {f.shape}")
    video_scores = np.array(
        [agg.fn(s[idx], None if c is None else c[idx], None if f is None else f[idx]) for idx in members]
    )
    return unique, video_scores


def aggregate_labels(labels: Any, video_ids: Any) -> tuple[np.ndarray, np.ndarray]:
    """Video labels from frame labels: (video_ids (V,), video_labels (V,) int64), same order as
    `aggregate_scores`. Every frame of a video must carry the same label (1 = fake, 0 = real)."""
    y = np.asarray(labels)
    if y.ndim != 1:
        raise RealfaceError(f"labels must be 1-D, got shape {y.shape}")
    if y.dtype.kind not in "biuf" or not np.isin(y, (0, 1)).all():
        raise RealfaceError("labels must be 0 (real) or 1 (fake)")
    unique, members = _per_video(video_ids, y.size)
    video_labels = np.empty(unique.size, np.int64)
    for k, idx in enumerate(members):
        values = np.unique(y[idx])
        if values.size > 1:
            raise RealfaceError(
                f"video {unique[k].item()!r} has frames labelled both real and fake; one label per video"
            )
        video_labels[k] = int(values[0])
    return unique, video_labels
