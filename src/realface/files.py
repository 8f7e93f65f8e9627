"""File names of runs and exported models, and JSON read and written safely: what both the training side
(torch) and the inference side (ONNX Runtime, no torch) need."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from realface.errors import RealfaceError

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
DECISION = "decision.json"  # a detector run's threshold and confidence band (see train.finetune)
GRAPH = "model.onnx"  # an exported detector's ONNX graph; its weights are read from WEIGHTS


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (temporary file + rename)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise RealfaceError(f"{path} not found") from None
    except json.JSONDecodeError as err:
        raise RealfaceError(f"{path} is not valid JSON: {err}") from None
