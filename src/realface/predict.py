"""Batched inference of a detector over face tensors: the one scoring loop that finetune, evaluate and
detect share."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from torch import nn


@torch.no_grad()
def score_batches(
    model: nn.Module, batches: Iterable[torch.Tensor], device: torch.device, flip: bool = False
) -> tuple[np.ndarray, np.ndarray | None]:
    """p(fake) (N,) and, for evidential detectors, uncertainty (N,) in [0, 1] (else None).

    batches: (B, 3, S, S) normalized face tensors. flip: test-time flip averaging, the mean of the outputs on
    each face and on its mirror image (twice the compute).
    """
    was_training = model.training
    model.eval()
    probs, uncertainty = [], []
    for images in batches:
        images = images.to(device)
        outs = [model(images)] + ([model(images.flip(-1))] if flip else [])
        probs.append(torch.stack([o.prob_fake.float() for o in outs]).mean(dim=0).cpu())
        if all(o.uncertainty is not None for o in outs):
            uncertainty.append(torch.stack([o.uncertainty.float() for o in outs]).mean(dim=0).cpu())
    model.train(was_training)
    p = torch.cat(probs).numpy() if probs else np.zeros(0, np.float32)
    u = torch.cat(uncertainty).numpy() if uncertainty and len(uncertainty) == len(probs) else None
    return p, u
