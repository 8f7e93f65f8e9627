"""A detector's inference graph in ONNX, for `realface.model.OnnxEngine` (ONNX Runtime, no torch).

The graph takes `images` (N, 3, S, S) float32, normalized, and gives `prob_fake` (N,), `uncertainty` (N,) for
evidential detectors, and `map` (N, h, w), the detector's forward-pass map (`Detector.map_from`) when it has one.
Its weights are not stored in the graph: every parameter and buffer is an initializer marked external and named
as in the detector's state dict, so the exported folder's safetensors file is the one copy of the weights and
the graph is a few tens of kB. ONNX Runtime is handed those tensors when its session starts.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from realface.errors import RealfaceError
from realface.files import WEIGHTS
from realface.models.detectors import Detector

OPSET = 17
PREFIX = "detector."  # the wrapper's attribute: stripped from initializer names


class ExportError(RealfaceError):
    """The detector cannot be written as an ONNX graph (the message says why)."""


class _Graph(nn.Module):
    """The detector's outputs as a tuple of tensors, which is what the exporter traces."""

    def __init__(self, detector: Detector, outputs: list[str]) -> None:
        super().__init__()
        self.detector = detector
        self.outputs = outputs

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.detector(images)
        values = {"prob_fake": out.prob_fake.float(), "uncertainty": out.uncertainty}
        if "map" in self.outputs:
            values["map"] = self.detector.map_from(out).float()
        return tuple(values[name].float() for name in self.outputs)


def graph_outputs(detector: Detector, img_size: int) -> list[str]:
    """The outputs the graph of `detector` will have."""
    with torch.no_grad():
        out = detector(torch.zeros(1, 3, img_size, img_size))
    return ["prob_fake"] + (["uncertainty"] if out.uncertainty is not None else []) + (
        ["map"] if detector.map_kind is not None else []
    )


def write_graph(detector: Detector, img_size: int, path: Path) -> dict[str, Any]:
    """Write `detector`'s graph (CPU, fp32, eval mode) to `path`; returns the "graph" section of the exported
    config: file, outputs, map kind and the names of the weights it reads. ExportError when it cannot."""
    import onnx
    from onnx import external_data_helper

    detector = detector.float().eval()
    outputs = graph_outputs(detector, img_size)
    buffer = io.BytesIO()
    dynamic = {name: {0: "faces"} for name in ["images", *outputs]}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporter's deprecation and tracer notes
            torch.onnx.export(
                _Graph(detector, outputs), (torch.zeros(2, 3, img_size, img_size),), buffer, input_names=["images"],
                output_names=outputs, dynamic_axes=dynamic, opset_version=OPSET, dynamo=False,
                do_constant_folding=False,  # keep every weight under its own name (ONNX Runtime folds at load)
            )  # fmt: skip
    except Exception as err:  # the exporter raises many types; one line says which detector and why
        reason = (str(err).splitlines() or [type(err).__name__])[0]
        raise ExportError(
            f"detector {detector.config.name!r} on {detector.config.encoder} cannot be exported to ONNX: "
            + (reason if len(reason) <= 160 else reason[:157] + "...")
        ) from None
    model = onnx.load_from_string(buffer.getvalue())
    state = set(detector.state_dict())
    renamed = {}
    for tensor in model.graph.initializer:
        name = tensor.name[len(PREFIX) :] if tensor.name.startswith(PREFIX) else tensor.name
        if name in state:
            renamed[tensor.name] = name
            tensor.name = name
            external_data_helper.set_external_data(tensor, location=WEIGHTS)
            tensor.ClearField("raw_data")
    for node in model.graph.node:
        for i, name in enumerate(node.input):
            node.input[i] = renamed.get(name, name)
    onnx.save(model, str(path))
    return {"outputs": outputs, "map": detector.map_kind, "weights": sorted(renamed.values()), "opset": OPSET}
