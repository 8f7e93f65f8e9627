"""A detector ready to use: weights, the settings they were trained with, and the decision rule.

Two layouts load the same way:
- a `realface finetune` run folder: RUN/config.json, RUN/best/model.safetensors, RUN/decision.json;
- an exported bundle (what ships in the package and what `realface export` writes): DIR/model.safetensors
  (fp16 allowed) + DIR/config.json with "detector", "preprocessing", "decision" and "card" sections.

`load_bundle()` with no path gives the default weights shipped inside the package, so detection works right
after install with no download.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch

from realface.data.faceset import Preprocessing
from realface.faces.align import CropSettings
from realface.errors import RealfaceError
from realface.models.detectors import ALIASES, DETECTORS, Detector, DetectorConfig, build_detector
from realface.models.detectors.base import split_detector_dict
from realface.models.encoders import weights_to_be_loaded
from realface.train import checkpoint as ckpt



def default_weights_dir() -> Path:
    """The folder of the default weights inside the installed package."""
    return Path(str(resources.files("realface") / "weights" / "default"))


@dataclass(frozen=True)
class Decision:
    """How a score becomes a verdict: p(fake) is calibrated by the temperature, fake when it is >= threshold,
    "uncertain" when the confidence is < band."""

    threshold: float = 0.5  # decision threshold on calibrated p(fake), fitted on validation data
    temperature: float = 1.0  # temperature scaling fitted on validation: p = sigmoid(logit(p_model) / T)
    band: float = 0.0  # minimum confidence for a real/fake verdict; 0 = never uncertain
    confidence: str = "distance"  # "distance" from the threshold, or "evidential" (1 - uncertainty)
    policy: str = "fixed"  # how the threshold was chosen (eer, max_balanced_accuracy, target_fpr, fixed)
    val: dict[str, Any] = field(default_factory=dict)  # validation numbers behind it
    params: dict[str, Any] = field(default_factory=dict)  # the policy's parameters, e.g. {"fpr": 0.01}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Decision":
        threshold = data.get("threshold", {})
        value = threshold.get("value", 0.5) if isinstance(threshold, dict) else float(threshold)
        policy = threshold.get("policy", "fixed") if isinstance(threshold, dict) else "fixed"
        return cls(
            threshold=float(value),
            temperature=float(data.get("temperature", 1.0)),
            band=float(data.get("band", 0.0)),
            confidence=str(data.get("confidence", "distance")),
            policy=policy,
            val=dict(data.get("val", {})),
            params=dict(threshold.get("params", {})) if isinstance(threshold, dict) else {},
        )

    def calibrate(self, probs: np.ndarray) -> np.ndarray:
        """The model's p(fake) (N,) -> calibrated p(fake) (N,)."""
        if self.temperature == 1.0:
            return probs
        from realface.eval.calibration import apply_temperature, probabilities_to_logits

        return apply_temperature(probabilities_to_logits(probs), self.temperature).astype(probs.dtype)

    def to_json(self) -> dict[str, Any]:
        return {
            "threshold": {"value": self.threshold, "policy": self.policy, "params": dict(self.params)},
            "temperature": self.temperature,
            "band": self.band,
            "confidence": self.confidence,
            "val": self.val,
        }


@dataclass
class Bundle:
    detector: Detector  # in eval mode
    config: DetectorConfig
    pre: Preprocessing  # input size, normalization, and how faces were cropped
    decision: Decision
    card: dict[str, Any]  # model card: data, recipe, numbers
    source: Path  # where it was loaded from

    def info(self) -> dict[str, Any]:
        """What `GET /v1/model` and `detect --json` report about the model."""
        return {
            "source": str(self.source),
            "detector": self.config.name,
            "encoder": self.config.encoder,
            "img_size": self.pre.img_size,
            "crop_size": self.pre.crop_size,
            "crop_margin": self.pre.crop_margin,
            "crop": self.pre.crop.to_dict(),
            "decision": self.decision.to_json(),
            "card": self.card,
        }


def _build(config: DetectorConfig, weights: Path, device: torch.device) -> Detector:
    with weights_to_be_loaded():  # every weight is overwritten below: skip the random init
        detector = build_detector(config, None)
    try:
        detector.load_state_dict(ckpt.load_weights(weights), strict=True)
    except RuntimeError as err:
        raise RealfaceError(f"{weights} does not match its detector config: {str(err).splitlines()[0]}") from None
    return detector.to(device).eval()


# ---------------------------------------------------------------------------------------------
# checking a config.json before anything is built from it

_TYPES = {"int": (int,), "float": (int, float), "bool": (bool,), "str": (str,)}  # dataclass annotations -> JSON


def _fail(where: str, field_name: str, what: str, value: Any) -> RealfaceError:
    shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
    return RealfaceError(f"{where}: {field_name} must be {what}, got {shown}")


def _number(where: str, name: str, value: Any, low: float, high: float, *, open_low: bool = False) -> float:
    """`value` as a float in [low, high] (or (low, high] with open_low); JSON true/false are not numbers."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok and (value > low if open_low else value >= low) and value <= high:
        return float(value)
    span = f"{'(' if open_low else '['}{low:g}, {high:g}]" if math.isfinite(high) else f"{'>' if open_low else '>='} {low:g}"
    raise _fail(where, name, f"a number {'in ' if math.isfinite(high) else ''}{span}", value)


def _section(where: str, config: dict[str, Any], name: str, required: bool) -> dict[str, Any] | None:
    value = config.get(name)
    if value is None and not required and name not in config:
        return None
    if not isinstance(value, dict):
        raise _fail(where, name, "a JSON object" + ("" if required else " when present"), value)
    return value


def _check_fields(where: str, section: str, data: dict[str, Any], cls: type) -> None:
    """Every key of `data` is a field of dataclass `cls`, of the JSON type its annotation names."""
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise RealfaceError(f"{where}: unknown {section} field(s): {', '.join(unknown)}")
    for key, value in data.items():
        annotation = known[key].type
        type_name = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", "")
        types = _TYPES.get(type_name)
        if types is None:
            continue  # tuples etc.: checked by the caller
        if not isinstance(value, types) or (bool not in types and isinstance(value, bool)):
            shown = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string"}[type_name]
            raise _fail(where, f"{section}.{key}", shown, value)


def _check_preprocessing(where: str, pre: dict[str, Any]) -> None:
    pre = dict(pre)
    crop = pre.pop("crop", {})
    if not isinstance(crop, dict):
        raise _fail(where, "preprocessing.crop", "a JSON object", crop)
    _check_fields(where, "preprocessing.crop", crop, CropSettings)
    if "size" in crop:
        pre["crop_size"] = crop["size"]
    if "margin" in crop:
        pre["crop_margin"] = crop["margin"]
    legacy = {k: pre.pop(k) for k in ("crop_size", "crop_margin") if k in pre}  # flat keys of older checkpoints
    _check_fields(where, "preprocessing", pre, Preprocessing)
    pre.update(legacy)
    for key in ("mean", "std"):
        if key not in pre:
            continue
        value = pre[key]
        if not isinstance(value, list) or len(value) != 3:
            raise _fail(where, f"preprocessing.{key}", "a list of 3 numbers (R, G, B)", value)
        low, open_low = (0.0, True) if key == "std" else (-math.inf, False)
        for channel, item in zip("RGB", value):
            _number(where, f"preprocessing.{key} ({channel})", item, low, math.inf, open_low=open_low)
    for key in ("img_size", "crop_size"):
        if key in pre and pre[key] < 1:
            raise _fail(where, f"preprocessing.{key}", "a positive number of pixels", pre[key])
    if "crop_margin" in pre:
        _number(where, "preprocessing.crop_margin", pre["crop_margin"], 0.0, math.inf, open_low=True)


def _check_decision(where: str, decision: dict[str, Any]) -> None:
    threshold = decision.get("threshold", 0.5)
    if isinstance(threshold, dict):
        _number(where, "decision.threshold.value", threshold.get("value", 0.5), 0.0, 1.0)
        if not isinstance(threshold.get("policy", "fixed"), str):
            raise _fail(where, "decision.threshold.policy", "a string", threshold.get("policy"))
    else:
        _number(where, "decision.threshold", threshold, 0.0, 1.0)
    _number(where, "decision.temperature", decision.get("temperature", 1.0), 0.0, math.inf, open_low=True)
    _number(where, "decision.band", decision.get("band", 0.0), 0.0, 1.0)
    if decision.get("confidence", "distance") not in ("distance", "evidential"):
        raise _fail(where, "decision.confidence", "'distance' or 'evidential'", decision.get("confidence"))
    if not isinstance(decision.get("val", {}), dict):
        raise _fail(where, "decision.val", "a JSON object", decision.get("val"))


def _check_detector(where: str, detector: dict[str, Any]) -> None:
    """The shared fields, then the named detector's own options (configs in the old flat layout included)."""
    try:
        shared, options = split_detector_dict(detector)
    except RealfaceError as err:
        raise RealfaceError(f"{where}: detector: {err}") from None
    _check_fields(where, "detector", shared, DetectorConfig)
    name = ALIASES.get(str(shared.get("name", "classifier")), str(shared.get("name", "classifier")))
    if name in DETECTORS:
        _check_fields(where, "detector.options", options, DETECTORS[name].options)


def validate_config(config: Any, where: str, decision: Any = None) -> None:
    """Check a model's config.json field by field; RealfaceError naming the field, before anything is built.

    config: the parsed config.json; where: the file, for messages; decision: a run folder's parsed
    decision.json (exports hold theirs in config["decision"]).
    """
    if not isinstance(config, dict):
        raise RealfaceError(f"{where}: must hold a JSON object, got a JSON {type(config).__name__}")
    kind = config.get("kind")
    if not isinstance(kind, str):
        raise _fail(where, "kind", "'detector' (a finetune run) or 'detector-export'", kind)
    if kind not in ("detector", "detector-export"):
        raise RealfaceError(f"{where}: holds a {kind!r} run, not a detector (finetune one from it first)")
    _check_detector(where, _section(where, config, "detector", required=True))
    _check_preprocessing(where, _section(where, config, "preprocessing", required=True))
    if kind == "detector-export":
        _check_decision(where, _section(where, config, "decision", required=False) or {})
        _section(where, config, "card", required=False)
    elif decision is not None:
        if not isinstance(decision, dict):
            raise RealfaceError(f"{where}: decision.json must hold a JSON object")
        _check_decision(where.replace(ckpt.CONFIG, ckpt.DECISION), decision)


def load_bundle(path: Path | None = None, device: torch.device | str = "cpu") -> Bundle:
    """A detector from a finetune run folder or an exported bundle; None = the packaged default weights.

    The config is checked field by field first (`validate_config`): a bad one is one RealfaceError line.
    """
    device = torch.device(device)
    source = Path(path) if path is not None else default_weights_dir()
    if not (source / ckpt.CONFIG).is_file():
        if path is None:
            raise RealfaceError("no default weights are installed; pass --model RUN_OR_WEIGHTS")
        raise RealfaceError(f"{source} is not a model: no {ckpt.CONFIG} (pass a finetune run or exported weights)")
    config = ckpt.read_json(source / ckpt.CONFIG)
    decision_path = source / ckpt.DECISION
    run_decision = ckpt.read_json(decision_path) if decision_path.is_file() else None
    validate_config(config, str(source / ckpt.CONFIG), run_decision)
    kind = config.get("kind")
    if kind == "detector":  # a finetune run folder
        det_cfg = _detector_config(config["detector"], source)
        weights = source / "best" / ckpt.WEIGHTS
        decision = Decision.from_json(run_decision) if run_decision is not None else Decision()
        card = {"run": str(source), "train": config.get("train", {}), "data": config.get("data", [])}
    elif kind == "detector-export":
        det_cfg = _detector_config(config["detector"], source)
        weights = source / ckpt.WEIGHTS
        decision = Decision.from_json(config.get("decision", {}))
        card = config.get("card", {})
    else:
        raise RealfaceError(f"{source} holds a {kind!r} run, not a detector (finetune one from it first)")
    pre = Preprocessing.from_dict(config["preprocessing"])
    return Bundle(_build(det_cfg, weights, device), det_cfg, pre, decision, card, source)


def _detector_config(data: dict[str, Any], source: Path) -> DetectorConfig:
    """DetectorConfig.from_dict with its complaint prefixed by the file and section it is about."""
    try:
        return DetectorConfig.from_dict(data)
    except RealfaceError as err:
        raise RealfaceError(f"{source / ckpt.CONFIG}: detector: {err}") from None


def export_bundle(
    bundle: Bundle,
    out: Path,
    *,
    decision: Decision | None = None,
    card: dict[str, Any] | None = None,
    fp16: bool = True,
    calibration: torch.Tensor | None = None,
) -> Path:
    """Write `bundle`'s detector (its lighter `export()` form) as a self-contained folder; returns `out`.

    calibration: (N, 3, S, S) preprocessed faces from which a model that can drop parts chooses what to keep
    (competitive keeps the branch less uncertain on them). When export changes the model, pass the `decision`
    refitted for it.
    """
    exported = bundle.detector.export(calibration)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt.save_weights(out / ckpt.WEIGHTS, exported.state_dict(), dtype=torch.float16 if fp16 else None)
    ckpt.write_json(
        out / ckpt.CONFIG,
        {
            "kind": "detector-export",
            "detector": exported.config.to_dict(),
            "preprocessing": bundle.pre.to_dict(),
            "decision": (decision or bundle.decision).to_json(),
            "card": card if card is not None else bundle.card,
        },
    )
    return out
