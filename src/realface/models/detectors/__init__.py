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
from dataclasses import dataclass

from realface.errors import RealfaceError
from realface.models.detectors.base import Detector, DetectorConfig, DetectorOptions, DetectorOutput, options_for
from realface.models.detectors.classifier import ClassifierOptions, build_classifier
from realface.models.detectors.competitive import CompetitiveOptions, build_competitive
from realface.models.detectors.rffr import RFFROptions, build_rffr
from realface.models.pretrainer import Pretrainer

# builder(config, pretrainer or None) -> Detector
DetectorBuilder = Callable[[DetectorConfig, "Pretrainer | None"], Detector]



@dataclass(frozen=True)
class DetectorEntry:
    """A registered detector: how to build it and the dataclass of its own options."""

    build: DetectorBuilder
    options: type[DetectorOptions]


DETECTORS: dict[str, DetectorEntry] = {
    "classifier": DetectorEntry(build_classifier, ClassifierOptions),
    "rffr": DetectorEntry(build_rffr, RFFROptions),
    "competitive": DetectorEntry(build_competitive, CompetitiveOptions),
}
ALIASES: dict[str, str] = {"vit": "classifier"}  # names in configs written before a rename


def build_detector(config: DetectorConfig, pretrainer: Pretrainer | None = None) -> Detector:
    """The detector `config.name`; encoder weights copied from `pretrainer.encoder`, or random without one."""
    if config.name not in DETECTORS:  # (aliases are resolved by DetectorConfig)
        raise RealfaceError(f"unknown detector {config.name!r}; choose one of {', '.join(DETECTORS)}")
    return DETECTORS[config.name].build(config, pretrainer)


__all__ = ["ALIASES", "DETECTORS", "ClassifierOptions", "CompetitiveOptions", "DetectorOptions", "RFFROptions", "options_for", "Detector", "DetectorConfig", "DetectorOutput", "build_detector"]
