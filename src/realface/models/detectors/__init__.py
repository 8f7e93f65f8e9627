"""Forgery detectors by name: each an encoder (or two) plus a head, built from an optional pretrainer.

    detector = build_detector(DetectorConfig(name="classifier", ...), pretrainer)   # pretrainer None = random init
    out = detector(images)                      # DetectorOutput: logits (N, 2), prob_fake (N,), ...
    loss, parts = detector.loss(out, labels, progress)

`classifier` (FSFM fine-tuning / linear probe, with an optional forgery-mask head; "vit" is its old name),
`rffr` (RFFR residual + two streams), `competitive` (FFDBackbone dual branch with evidential fusion).
Every detector works on every registered encoder (`realface.models.encoders`).
"""

from __future__ import annotations

from collections.abc import Callable

from realface.errors import RealfaceError
from realface.models.detectors.base import Detector, DetectorConfig, DetectorOutput
from realface.models.detectors.competitive import build_competitive
from realface.models.detectors.rffr import build_rffr
from realface.models.detectors.classifier import build_classifier
from realface.models.pretrainer import Pretrainer

# builder(config, pretrainer or None) -> Detector
DetectorBuilder = Callable[[DetectorConfig, "Pretrainer | None"], Detector]

DETECTORS: dict[str, DetectorBuilder] = {
    "classifier": build_classifier,
    "rffr": build_rffr,
    "competitive": build_competitive,
}
ALIASES: dict[str, str] = {"vit": "classifier"}  # names in configs written before a rename


def build_detector(config: DetectorConfig, pretrainer: Pretrainer | None = None) -> Detector:
    """The detector `config.name`; encoder weights copied from `pretrainer.encoder`, or random without one."""
    if config.name not in DETECTORS:  # (aliases are resolved by DetectorConfig)
        raise RealfaceError(f"unknown detector {config.name!r}; choose one of {', '.join(DETECTORS)}")
    return DETECTORS[config.name](config, pretrainer)


__all__ = ["ALIASES", "DETECTORS", "Detector", "DetectorConfig", "DetectorOutput", "build_detector"]
