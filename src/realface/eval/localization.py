"""How well a detector's patch head says *where* a face was forged.

Measured on labelled fakes whose real is in the data (`realface.data.forgery_mask`): every patch of those
faces is a sample, positive when at least half of it was forged by the fake-minus-real map, and scored by the
head's forgery logit. The AUC over all those patches says whether the head ranks forged regions above the
untouched rest of the same faces; 0.5 is a head that knows nothing of where.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader

from realface.data.labelled import DetectionFaces
from realface.eval.metrics import roc_auc

FORGED = 0.5  # a patch is forged when at least this fraction of it is


@torch.no_grad()
def patch_scores(detector: torch.nn.Module, faces: DetectionFaces, batch_size: int = 64, workers: int = 0):
    """(logits (N, L), targets (N, L)) of the items of `faces` (built with `mask_grid`) whose target is known."""
    if faces.mask_grid is None:
        raise ValueError("patch targets need a dataset built with mask_grid")
    detector.eval()
    device = next(detector.parameters()).device
    logits, targets = [], []
    for batch in DataLoader(faces, batch_size=batch_size, num_workers=workers):
        known = batch["mask_known"] > 0
        if known.any():
            out = detector(batch["image"][known].to(device))
            logits.append(out.extras["patch_logits"].float().cpu())
            targets.append(batch["mask"][known])
    if not logits:
        return np.zeros((0, 0)), np.zeros((0, 0))
    return torch.cat(logits).numpy(), torch.cat(targets).numpy()


def localization_report(detector: torch.nn.Module, faces: DetectionFaces, batch_size: int = 64, workers: int = 0) -> dict:
    """{"patch_auc", "faces", "patches", "forged_patches"} over the fakes of `faces` with a known map."""
    fakes = [i for i, it in enumerate(faces.items) if it.label == 1 and it.partner is not None]
    subset = DetectionFaces([faces.items[i] for i in fakes], faces.pre, seed=faces.seed, mask_grid=faces.mask_grid)
    logits, targets = patch_scores(detector, subset, batch_size, workers)
    forged = (targets >= FORGED).reshape(-1)
    if forged.all() or not forged.any():
        raise ValueError("localization needs forged and untouched patches among the fakes")
    return {
        "patch_auc": roc_auc(forged.astype(int), logits.reshape(-1)),
        "faces": int(logits.shape[0]),
        "patches": int(forged.size),
        "forged_patches": int(forged.sum()),
    }
