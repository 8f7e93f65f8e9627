"""The one label vocabulary of the package: what a manifest's label column may say, and what it means.

Training (`data.labelled`) and evaluation (`eval.protocol`, whose protocol files may name other words per data set)
read labels with it. No heavy imports: the inference path uses it too.
"""

from __future__ import annotations

from realface.errors import RealfaceError

# Manifest labels understood by every command (training, evaluation's defaults); anything else is an error that
# names the label. Ordered: the first of each is the canonical name.
NEGATIVE_LABELS: tuple[str, ...] = ("real", "original", "live", "bonafide", "bona fide", "genuine", "0")
POSITIVE_LABELS: tuple[str, ...] = ("fake", "spoof", "attack", "deepfake", "manipulated", "synthetic", "1")


def label_to_int(label: str) -> int:
    """'real'/'live'/... -> 0, 'fake'/'spoof'/... -> 1 (case-insensitive)."""
    key = str(label).strip().lower()
    if key in NEGATIVE_LABELS:
        return 0
    if key in POSITIVE_LABELS:
        return 1
    raise RealfaceError(
        f"unknown label {label!r}: use one of {', '.join(NEGATIVE_LABELS)} for real or {', '.join(POSITIVE_LABELS)} for fake"
    )
