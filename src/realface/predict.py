"""Batched inference of a detector over face tensors: the one scoring loop that finetune, evaluate and
detect share."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from torch import nn


@torch.no_grad()
def score_batches(
    model: nn.Module, batches: Iterable[torch.Tensor], device: torch.device
) -> tuple[np.ndarray, np.ndarray | None]:
    """p(fake) (N,) and, for evidential detectors, uncertainty (N,) in [0, 1] (else None).

    batches: (B, 3, S, S) normalized face tensors.
    """
    was_training = model.training
    model.eval()
    probs, uncertainty = [], []
    for images in batches:
        out = model(images.to(device))
        probs.append(out.prob_fake.float().cpu())
        if out.uncertainty is not None:
            uncertainty.append(out.uncertainty.float().cpu())
    model.train(was_training)
    p = torch.cat(probs).numpy() if probs else np.zeros(0, np.float32)
    u = torch.cat(uncertainty).numpy() if uncertainty and len(uncertainty) == len(probs) else None
    return p, u
