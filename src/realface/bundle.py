"""A PyTorch detector with the settings its weights were trained with and its decision rule: what training,
export and the `--backend torch` path load (detection goes through `realface.model.load_model`).

Two layouts load the same way:
- a `realface finetune` run folder: RUN/config.json, RUN/best/model.safetensors, RUN/decision.json;
- an exported bundle (what ships in the package and what `realface export` writes): DIR/model.safetensors
  (fp16 allowed) + DIR/config.json with "detector", "preprocessing", "decision", "card" and "graph" sections,
  + DIR/model.onnx, the graph ONNX Runtime runs with those weights.

`load_bundle()` with no path gives the default weights shipped inside the package, so detection works right
after install with no download.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from realface.data.faceset import Preprocessing
from realface.errors import RealfaceError
from realface.files import GRAPH
from realface.model import Decision, default_weights_dir
from realface.model import validate_config as _validate
from realface.models.detectors import Detector, DetectorConfig, build_detector
from realface.models.encoders import weights_to_be_loaded
from realface.train import checkpoint as ckpt


def validate_config(config: Any, where: str, decision: Any = None) -> None:
    """`realface.model.validate_config` with every detector field checked against its dataclasses."""
    _validate(config, where, decision, full=True)


@dataclass
class Bundle:
    detector: Detector  # in eval mode
    config: DetectorConfig
    pre: Preprocessing  # input size, normalization, and how faces were cropped
    decision: Decision
    card: dict[str, Any]  # model card: data, recipe, numbers
    source: Path  # where it was loaded from


def _build(config: DetectorConfig, weights: Path, device: torch.device) -> Detector:
    with weights_to_be_loaded():  # every weight is overwritten below: skip the random init
        detector = build_detector(config, None)
    try:
        detector.load_state_dict(ckpt.load_weights(weights), strict=True)
    except RuntimeError as err:
        raise RealfaceError(f"{weights} does not match its detector config: {str(err).splitlines()[0]}") from None
    return detector.to(device).eval()


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
    from realface.models.onnx_export import ExportError, write_graph

    exported = bundle.detector.export(calibration)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    state = exported.state_dict()
    ckpt.save_weights(out / ckpt.WEIGHTS, state, dtype=torch.float16 if fp16 else None)
    try:  # the graph of the weights as saved (fp16 ones run as fp32 in ONNX Runtime, as they do in PyTorch)
        graph = write_graph(_reloaded(exported, out / ckpt.WEIGHTS), bundle.pre.img_size, out / GRAPH)
    except ExportError as err:  # said now, not at detection time; PyTorch still runs the folder
        (out / GRAPH).unlink(missing_ok=True)
        print(f"realface export: {err}; the model runs with --backend torch only", file=sys.stderr)
        graph = None
    ckpt.write_json(
        out / ckpt.CONFIG,
        {
            "kind": "detector-export",
            "detector": exported.config.to_dict(),
            "preprocessing": bundle.pre.to_dict(),
            "decision": (decision or bundle.decision).to_json(),
            "card": card if card is not None else bundle.card,
            "graph": graph,
        },
    )
    return out


def _reloaded(detector: Detector, weights: Path) -> Detector:
    """A CPU copy of `detector` holding exactly the weights written to `weights` (fp16 included), in fp32."""
    return _build(detector.config, weights, torch.device("cpu"))
