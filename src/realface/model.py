"""A detector ready to use, whatever runs it: its decision rule, preprocessing and model card, and an engine
that scores faces: ONNX Runtime (the default on a CPU: no torch import, and faster than PyTorch here) or PyTorch
(`--backend torch`, a GPU, a finetune run folder, or a detector whose heatmap needs gradients).

Torch-free: `load_model(backend="onnx")` imports neither torch nor timm. An exported model folder holds
`model.safetensors` (fp16 weights), `config.json` and `model.onnx`, a graph whose weights are not inside it but
named: they are read from the safetensors file and handed to ONNX Runtime when the session starts, so the
weights ship once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from realface.errors import RealfaceError
from realface.eval.thresholds import Band, band_json, band_sides
from realface.faces.align import CropSettings
from realface.files import CONFIG, DECISION, GRAPH, WEIGHTS, read_json
from realface.preprocessing import Preprocessing

BACKENDS = ("auto", "onnx", "torch")
# How a detector's forward-pass map becomes a heatmap in [0, 1]: "probability" (per-cell forgery probabilities,
# only clipped), "relative" (any non-negative map, divided by its 99th percentile per face); None: no such map.
MAP_KINDS = (None, "probability", "relative")
TORCH_MISSING = "this needs PyTorch, which is not installed: pip install 'realface[train]'"


def default_weights_dir() -> Path:
    """The folder of the default weights inside the installed package."""
    return Path(str(resources.files("realface") / "weights" / "default"))


@dataclass(frozen=True)
class Decision:
    """How a score becomes a verdict: p(fake) is calibrated by the temperature, fake when it is >= threshold,
    "uncertain" when the confidence is < the band of the verdict's side."""

    threshold: float = 0.5  # decision threshold on calibrated p(fake), fitted on validation data
    temperature: float = 1.0  # temperature scaling fitted on validation: p = sigmoid(logit(p_model) / T)
    band: Band = 0.0  # minimum confidence for a verdict: one for both, or (real, fake); 0 = never uncertain
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
            band=_stored_band(data.get("band", 0.0)),
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
            "band": band_json(self.band),
            "confidence": self.confidence,
            "val": self.val,
        }


def _stored_band(value: Any) -> Band:
    """A band read from JSON: one number, or the pair (real, fake)."""
    real, fake = band_sides(value)
    return real if real == fake else (real, fake)


# ---------------------------------------------------------------------------------------------
# checking a config.json before anything is built from it (torch-free)

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


def field_types(cls: type) -> dict[str, str]:
    """Field name -> the type name its annotation gives (e.g. "int"), of dataclass `cls`."""
    return {f.name: f.type if isinstance(f.type, str) else getattr(f.type, "__name__", "") for f in fields(cls)}


def _check_fields(where: str, section: str, data: dict[str, Any], known: type | dict[str, str]) -> None:
    """Every key of `data` is a field of dataclass `known` (or a key of a name -> type name dict), of the JSON
    type its annotation names."""
    known = known if isinstance(known, dict) else field_types(known)
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise RealfaceError(f"{where}: unknown {section} field(s): {', '.join(unknown)}")
    for key, value in data.items():
        type_name = known[key]
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
    try:
        band_sides(decision.get("band", 0.0))
    except RealfaceError as e:
        raise _fail(where, "decision.band", "one number in [0, 1] or {\"real\": r, \"fake\": f}", decision.get("band")) from e
    if decision.get("confidence", "distance") not in ("distance", "evidential"):
        raise _fail(where, "decision.confidence", "'distance' or 'evidential'", decision.get("confidence"))
    if not isinstance(decision.get("val", {}), dict):
        raise _fail(where, "decision.val", "a JSON object", decision.get("val"))


# The detector section as the torch-free path reads it: DetectorConfig's shared fields and JSON types, and the
# detector names (old aliases included). tests/test_model_config.py checks both against the PyTorch registries.
DETECTOR_FIELDS = {
    "name": "str", "encoder": "str", "img_size": "int", "pool": "str", "drop_path": "float", "freeze": "bool",
    "label_smoothing": "float", "layer_decay": "float",
}  # fmt: skip
DETECTOR_NAMES = ("classifier", "rffr", "competitive", "vit")


def _check_detector(where: str, detector: dict[str, Any], full: bool) -> None:
    """The shared fields' types and the detector's name; with `full` (the PyTorch path: imports torch) every
    field against the dataclasses, the named detector's own options included (old flat layouts too)."""
    if not full:
        _check_fields(where, "detector", {k: v for k, v in detector.items() if k in DETECTOR_FIELDS}, DETECTOR_FIELDS)
        name = detector.get("name", "classifier")
        if name not in DETECTOR_NAMES:
            raise RealfaceError(f"{where}: detector: unknown detector {name!r}; choose one of {', '.join(DETECTOR_NAMES[:3])}")
        return
    from realface.models.detectors import ALIASES, DETECTORS, DetectorConfig
    from realface.models.detectors.base import split_detector_dict

    try:
        shared, options = split_detector_dict(detector)
    except RealfaceError as err:
        raise RealfaceError(f"{where}: detector: {err}") from None
    _check_fields(where, "detector", shared, DetectorConfig)
    name = ALIASES.get(str(shared.get("name", "classifier")), str(shared.get("name", "classifier")))
    if name in DETECTORS:
        _check_fields(where, "detector.options", options, DETECTORS[name].options)


def _check_graph(where: str, graph: dict[str, Any]) -> None:
    for key in ("outputs", "weights"):
        value = graph.get(key)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise _fail(where, f"graph.{key}", "a list of names", value)
    if "prob_fake" not in graph["outputs"]:
        raise _fail(where, "graph.outputs", "a list that holds 'prob_fake'", graph["outputs"])
    if graph.get("map") not in MAP_KINDS:
        raise _fail(where, "graph.map", f"one of {', '.join(map(repr, MAP_KINDS))}", graph.get("map"))


def validate_config(config: Any, where: str, decision: Any = None, full: bool = True) -> None:
    """Check a model's config.json field by field; RealfaceError naming the field, before anything is built.

    config: the parsed config.json; where: the file, for messages; decision: a run folder's parsed
    decision.json (exports hold theirs in config["decision"]); full: also check the detector's every field
    against its dataclasses (imports torch; the ONNX path reads only what its graph needs).
    """
    if not isinstance(config, dict):
        raise RealfaceError(f"{where}: must hold a JSON object, got a JSON {type(config).__name__}")
    kind = config.get("kind")
    if not isinstance(kind, str):
        raise _fail(where, "kind", "'detector' (a finetune run) or 'detector-export'", kind)
    if kind not in ("detector", "detector-export"):
        raise RealfaceError(f"{where}: holds a {kind!r} run, not a detector (finetune one from it first)")
    _check_detector(where, _section(where, config, "detector", required=True), full)
    _check_preprocessing(where, _section(where, config, "preprocessing", required=True))
    if kind == "detector-export":
        _check_decision(where, _section(where, config, "decision", required=False) or {})
        _section(where, config, "card", required=False)
        graph = _section(where, config, "graph", required=False)
        if graph is not None:
            _check_graph(where, graph)
    elif decision is not None:
        if not isinstance(decision, dict):
            raise RealfaceError(f"{where}: decision.json must hold a JSON object")
        _check_decision(where.replace(CONFIG, DECISION), decision)


# ---------------------------------------------------------------------------------------------
# engines: what scores a batch of faces


@dataclass
class Prediction:
    """An engine's answer for a batch of N faces."""

    prob_fake: np.ndarray  # (N,) the model's p(fake), before the decision's calibration
    uncertainty: np.ndarray | None  # (N,) in [0, 1] for evidential detectors, else None
    maps: np.ndarray | None  # (N, h, w) raw maps (see MAP_KINDS and `finish_map`), when asked for


class Engine(Protocol):
    name: str  # "onnx" or "torch"
    map_kind: str | None  # how `maps` become heatmaps (MAP_KINDS); None: this engine cannot draw them

    def run(self, images: np.ndarray, maps: bool = False) -> Prediction:
        """images: (N, 3, S, S) float32, normalized (`realface.preprocessing.normalize`)."""
        ...


class OnnxEngine:
    """ONNX Runtime on the CPU over an exported model folder's graph and safetensors weights."""

    name = "onnx"

    def __init__(self, folder: Path, graph: dict[str, Any], threads: int | None = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise RealfaceError("ONNX Runtime is not installed: pip install onnxruntime, or use --backend torch") from None
        from safetensors.numpy import load_file

        tensors = load_file(str(folder / WEIGHTS))
        missing = [n for n in graph["weights"] if n not in tensors]
        if missing:
            raise RealfaceError(f"{folder / WEIGHTS} lacks weights its graph needs: {', '.join(missing[:3])}")
        # fp16 on disk, fp32 for the graph; ONNX Runtime reads these arrays in place, so they must outlive the session.
        self._arrays = [np.ascontiguousarray(tensors[n], np.float32 if tensors[n].dtype.kind == "f" else None) for n in graph["weights"]]
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only
        if threads:
            options.intra_op_num_threads = threads
        # Idle threads sleep instead of spinning: the face pipeline's decoder and detectors share these cores.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_external_initializers(list(graph["weights"]), [ort.OrtValue.ortvalue_from_numpy(a) for a in self._arrays])
        try:
            self.session = ort.InferenceSession(str(folder / GRAPH), options, providers=["CPUExecutionProvider"])
        except Exception as err:  # ONNX Runtime's own exception types
            raise RealfaceError(f"{folder / GRAPH}: ONNX Runtime cannot load it: {str(err).splitlines()[0]}") from None
        self.outputs = list(graph["outputs"])
        self.map_kind = graph.get("map")

    def run(self, images: np.ndarray, maps: bool = False) -> Prediction:
        wanted = [n for n in self.outputs if n != "map" or maps]
        values = dict(zip(wanted, self.session.run(wanted, {"images": np.ascontiguousarray(images, np.float32)})))
        return Prediction(values["prob_fake"], values.get("uncertainty"), values.get("map"))


class TorchEngine:
    """A PyTorch detector (`realface.bundle.Bundle.detector`) on its device; a CNN detector is put in the
    channels-last layout in place."""

    name = "torch"

    def __init__(self, detector: Any, device: Any) -> None:
        import torch

        from realface.models.encoders import encoder_info

        self.detector = detector
        self.device = device
        # Without a forward map the heatmap is gradient x input, already scaled to [0, 1] ("relative" keeps it).
        self.map_kind = detector.map_kind or "relative"
        self.layout = encoder_info(detector.config.encoder).layout
        detector.to(memory_format=self.layout)

    def run(self, images: np.ndarray, maps: bool = False) -> Prediction:
        import torch

        x = torch.from_numpy(np.ascontiguousarray(images, np.float32)).to(self.device, memory_format=self.layout)
        with torch.no_grad():
            out = self.detector(x)
        raw = None
        if maps:
            raw = self.detector.map_from(out)
            raw = (self.detector.heatmap(x) if raw is None else raw).float().cpu().numpy()
        unc = None if out.uncertainty is None else out.uncertainty.float().cpu().numpy()
        return Prediction(out.prob_fake.float().cpu().numpy(), unc, raw)


def finish_map(raw: np.ndarray, kind: str | None, size: int) -> np.ndarray:
    """One raw map (h, w) -> heatmap (size, size) float32 in [0, 1], bilinearly resized (see MAP_KINDS)."""
    import cv2

    heat = raw.astype(np.float32)
    if kind == "relative":
        heat = heat / max(float(np.quantile(heat, 0.99)), 1e-12)
    if heat.shape != (size, size):
        heat = cv2.resize(heat, (size, size), interpolation=cv2.INTER_LINEAR)
    return np.clip(heat, 0.0, 1.0)


# ---------------------------------------------------------------------------------------------
# a model ready to use


@dataclass
class Model:
    """A detector ready to use: an engine, and what turns its scores into verdicts."""

    engine: Engine
    detector: str  # detector kind, e.g. "classifier"
    encoder: str
    pre: Preprocessing  # input size, normalization, and how faces were cropped
    decision: Decision
    card: dict[str, Any]  # model card: data, recipe, numbers
    source: Path  # where it was loaded from
    bundle: Any = None  # the PyTorch `Bundle` behind a torch engine, else None

    @classmethod
    def from_bundle(cls, bundle: Any) -> Model:
        """A PyTorch `realface.bundle.Bundle` as a model (a torch engine on the detector's device)."""
        device = next(bundle.detector.parameters()).device
        return cls(
            TorchEngine(bundle.detector, device), bundle.config.name, bundle.config.encoder, bundle.pre,
            bundle.decision, bundle.card, bundle.source, bundle,
        )  # fmt: skip

    def info(self) -> dict[str, Any]:
        """What `GET /v1/model` and `detect --json` report about the model."""
        return {
            "source": str(self.source),
            "backend": self.engine.name,
            "detector": self.detector,
            "encoder": self.encoder,
            "img_size": self.pre.img_size,
            "crop_size": self.pre.crop_size,
            "crop_margin": self.pre.crop_margin,
            "crop": self.pre.crop.to_dict(),
            "decision": self.decision.to_json(),
            "card": self.card,
        }


def check_backend(backend: str, device: str) -> None:
    if backend not in BACKENDS:
        raise RealfaceError(f"--backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend == "onnx" and device != "cpu":
        raise RealfaceError(f"--backend onnx runs on the CPU; for --device {device} use --backend torch (or auto)")


def load_model(
    path: Path | None = None, backend: str = "auto", device: str = "cpu", *, maps: bool = False, threads: int | None = None
) -> Model:
    """A model from an exported folder (ONNX Runtime when it holds a graph and runs on the CPU) or a finetune run
    folder (PyTorch); None = the default weights shipped inside the package. backend: auto, onnx or torch.
    maps: heatmaps will be asked for (auto then picks PyTorch for a graph without them: gradient heatmaps).

    The config is checked field by field first: a bad one is one RealfaceError line, before anything is built.
    """
    check_backend(backend, device)
    source = Path(path) if path is not None else default_weights_dir()
    if not (source / CONFIG).is_file():
        if path is None:
            raise RealfaceError("no default weights are installed; pass --model RUN_OR_WEIGHTS")
        raise RealfaceError(f"{source} is not a model: no {CONFIG} (pass a finetune run or exported weights)")
    config = read_json(source / CONFIG)
    validate_config(config, str(source / CONFIG), full=False)
    graph = config.get("graph") if config.get("kind") == "detector-export" and (source / GRAPH).is_file() else None
    if backend == "auto":
        usable = graph is not None and device == "cpu" and (graph.get("map") is not None or not maps)
        backend = "onnx" if usable else "torch"
    if backend == "onnx":
        if graph is None:
            raise RealfaceError(
                f"{source} has no ONNX graph ({GRAPH}): export it with `realface export`, or use --backend torch"
            )
        detector = config["detector"]
        return Model(
            OnnxEngine(source, graph, threads), str(detector.get("name", "classifier")), str(detector.get("encoder", "")),
            Preprocessing.from_dict(config["preprocessing"]), Decision.from_json(config.get("decision", {})),
            config.get("card", {}), source,
        )  # fmt: skip
    try:
        import torch  # noqa: F401
    except ImportError:
        raise RealfaceError(TORCH_MISSING + " (or pass an exported model with an ONNX graph)") from None
    from realface.bundle import load_bundle
    from realface.train.distributed import resolve_device

    try:
        resolved = resolve_device(device)
    except RuntimeError as err:
        raise RealfaceError(str(err)) from None
    if threads:
        torch.set_num_threads(threads)
    return Model.from_bundle(load_bundle(source, resolved))
