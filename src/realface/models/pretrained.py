"""Load what `realface pretrain` wrote: the pretrainer and the preprocessing its weights expect.

A pretraining run folder holds RUN/config.json (keys "model": ModelConfig, "preprocessing": Preprocessing)
and RUN/<tag>/model.safetensors with the Pretrainer state dict ("mae.encoder.*", "mae.decoder_*", "distill.*").
"""

from __future__ import annotations

from pathlib import Path

import torch

from realface.data.faceset import Preprocessing
from realface.errors import RealfaceError
from realface.models.pretrainer import ModelConfig, Pretrainer, build_pretrainer
from realface.train.checkpoint import CONFIG, WEIGHTS, load_weights, read_json


def load_pretrainer(run_dir: Path, tag: str = "best") -> tuple[Pretrainer, Preprocessing]:
    """(pretrainer in eval mode, preprocessing) from a pretraining run folder and checkpoint tag."""
    run_dir = Path(run_dir)
    config_path = run_dir / CONFIG
    if not config_path.is_file():
        raise RealfaceError(
            f"{run_dir} is not a pretraining run: no {CONFIG} (pass the --out folder of `realface pretrain`)"
        )
    config = read_json(config_path)
    if not isinstance(config, dict) or "model" not in config or "preprocessing" not in config:
        raise RealfaceError(f"{config_path} has no 'model' and 'preprocessing' sections: not a pretraining run")
    if config.get("kind", "pretrain") != "pretrain":
        raise RealfaceError(f"{run_dir} is a {config['kind']!r} run, not a pretraining run")
    weights = run_dir / tag / WEIGHTS
    if not weights.is_file():
        tags = sorted(p.parent.name for p in run_dir.glob(f"*/{WEIGHTS}"))
        raise RealfaceError(f"{run_dir} has no checkpoint {tag!r}; it has: {', '.join(tags) or 'none'}")
    model_cfg = ModelConfig.from_dict(config["model"])
    pretrainer = build_pretrainer(model_cfg)
    try:
        pretrainer.load_state_dict(load_weights(weights), strict=True)
    except RuntimeError as err:
        raise RealfaceError(f"{weights} does not match the model in {config_path}: {err}") from None
    return pretrainer.eval(), Preprocessing.from_dict(config["preprocessing"])


def encoder_state(pretrainer: Pretrainer) -> dict[str, torch.Tensor]:
    """Detached copies of the student encoder's weights (the keys of a `ViTEncoder` state dict)."""
    return {k: v.detach().clone() for k, v in pretrainer.encoder.state_dict().items()}
