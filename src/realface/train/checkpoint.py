"""Checkpoints: weights in safetensors, everything else in JSON; nothing is ever unpickled.

A run folder holds `config.json` (the full configuration, preprocessing included) and one folder per tag:

    RUN/config.json
    RUN/last/model.safetensors   weights
    RUN/last/meta.json           epoch, step, metrics
    RUN/last/train_state.pt      optimizer + RNG state for --resume (tensors only; loaded with weights_only=True)
    RUN/best/...                 the same for the best epoch by the selection metric

Each tag folder is written to a temporary folder and renamed into place, so a crash never leaves half a
checkpoint behind.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from realface.errors import RealfaceError
from realface.files import CONFIG, DECISION, WEIGHTS, read_json, write_json  # noqa: F401 (this module's API too)

META = "meta.json"
STATE = "train_state.pt"


def save_weights(path: Path, state_dict: dict[str, torch.Tensor], dtype: torch.dtype | None = None) -> None:
    """Save a state dict as safetensors (contiguous CPU copies; floats cast to `dtype` when given)."""
    tensors = {}
    for name, tensor in state_dict.items():
        tensor = tensor.detach().to("cpu")
        if dtype is not None and tensor.is_floating_point():
            tensor = tensor.to(dtype)
        tensors[name] = tensor.contiguous().clone()
    save_file(tensors, str(path))


def load_weights(path: Path, dtype: torch.dtype | None = torch.float32) -> dict[str, torch.Tensor]:
    """Load safetensors weights; floats are cast to `dtype` (fp16 exports load as fp32 by default)."""
    if not Path(path).is_file():
        raise RealfaceError(f"weights file {path} not found")
    try:
        tensors = load_file(str(path))
    except Exception as err:  # safetensors raises several types for a damaged file
        raise RealfaceError(f"{path} is not a readable safetensors file ({err})") from None
    if dtype is not None:
        tensors = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in tensors.items()}
    return tensors


def save_checkpoint(
    run_dir: Path,
    tag: str,
    model_state: dict[str, torch.Tensor],
    meta: dict[str, Any],
    train_state: dict[str, Any] | None = None,
) -> Path:
    """Write RUN/TAG atomically and return its path."""
    final = Path(run_dir) / tag
    tmp = Path(run_dir) / f".{tag}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_weights(tmp / WEIGHTS, model_state)
    write_json(tmp / META, meta)
    if train_state is not None:
        torch.save(train_state, tmp / STATE)
    old = Path(run_dir) / f".{tag}.old"
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def load_train_state(ckpt_dir: Path) -> dict[str, Any]:
    path = Path(ckpt_dir) / STATE
    if not path.is_file():
        raise RealfaceError(f"{ckpt_dir} has no {STATE}: it cannot be resumed (only 'last' checkpoints can)")
    return torch.load(path, map_location="cpu", weights_only=True)


def rng_state() -> dict[str, torch.Tensor]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
