"""Learning-rate schedule and optimizer parameter groups: small pure functions."""

from __future__ import annotations

import math

import torch
from torch import nn

from realface.models.encoders.base import exempt_from_weight_decay


def cosine_lr(step: int, total_steps: int, warmup_steps: int, base_lr: float, min_lr: float = 0.0) -> float:
    """Linear warmup from 0 to `base_lr` over `warmup_steps`, then cosine decay to `min_lr` at `total_steps`."""
    if step < warmup_steps:
        return base_lr * step / max(1, warmup_steps)
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_lr + (base_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def scaled_lr(base_lr: float, global_batch: int) -> float:
    """The MAE/FSFM linear scaling rule: lr = base_lr * global_batch / 256."""
    return base_lr * global_batch / 256


def param_groups(
    model: nn.Module,
    weight_decay: float,
    layer_decay: float = 1.0,
    num_layers: int | None = None,
    layer_of: "callable | None" = None,
) -> list[dict]:
    """AdamW groups: no weight decay on biases, norms, tokens and position embeddings.

    With `layer_decay` < 1, `layer_of(name) -> int` in [0, num_layers] gives each parameter's depth and its
    lr is scaled by layer_decay ** (num_layers - depth) (layer-wise lr decay, BEiT/MAE fine-tuning). The scale
    is stored as `lr_scale` in each group; the training loop multiplies the scheduled lr by it.
    """
    groups: dict[tuple[float, float], dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        wd = 0.0 if exempt_from_weight_decay(name, param) else weight_decay
        scale = 1.0
        if layer_decay < 1.0 and layer_of is not None and num_layers is not None:
            scale = layer_decay ** (num_layers - layer_of(name))
        group = groups.setdefault((wd, scale), {"params": [], "weight_decay": wd, "lr_scale": scale})
        group["params"].append(param)
    return list(groups.values())


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
