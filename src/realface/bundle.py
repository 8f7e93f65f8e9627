"""A detector ready to use: weights, the settings they were trained with, and the decision rule.

Two layouts load the same way:
- a `realface finetune` run folder: RUN/config.json, RUN/best/model.safetensors, RUN/decision.json;
- an exported bundle (what ships in the package and what `realface export` writes): DIR/model.safetensors
  (fp16 allowed) + DIR/config.json with "detector", "preprocessing", "decision" and "card" sections.

`load_bundle()` with no path gives the default weights shipped inside the package, so detection works right
after install with no download.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch

from realface.data.faceset import Preprocessing
from realface.errors import RealfaceError
from realface.models.detectors import Detector, DetectorConfig, build_detector
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


def load_bundle(path: Path | None = None, device: torch.device | str = "cpu") -> Bundle:
    """A detector from a finetune run folder or an exported bundle; None = the packaged default weights."""
    device = torch.device(device)
    source = Path(path) if path is not None else default_weights_dir()
    if not (source / ckpt.CONFIG).is_file():
        if path is None:
            raise RealfaceError("no default weights are installed; pass --model RUN_OR_WEIGHTS")
        raise RealfaceError(f"{source} is not a model: no {ckpt.CONFIG} (pass a finetune run or exported weights)")
    config = ckpt.read_json(source / ckpt.CONFIG)
    kind = config.get("kind")
    if kind == "detector":  # a finetune run folder
        det_cfg = DetectorConfig.from_dict(config["detector"])
        weights = source / "best" / ckpt.WEIGHTS
        decision_path = source / ckpt.DECISION
        decision = Decision.from_json(ckpt.read_json(decision_path)) if decision_path.is_file() else Decision()
        card = {"run": str(source), "train": config.get("train", {}), "data": config.get("data", [])}
    elif kind == "detector-export":
        det_cfg = DetectorConfig.from_dict(config["detector"])
        weights = source / ckpt.WEIGHTS
        decision = Decision.from_json(config.get("decision", {}))
        card = config.get("card", {})
    else:
        raise RealfaceError(f"{source} holds a {kind!r} run, not a detector (finetune one from it first)")
    pre = Preprocessing.from_dict(config["preprocessing"])
    return Bundle(_build(det_cfg, weights, device), det_cfg, pre, decision, card, source)


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
