"""How well a detector's patch head says *where* a face was forged.

Measured on labelled fakes whose real is in the data (`realface.data.forgery_mask`): every patch of those
faces is a sample, positive when at least half of it was forged by the fake-minus-real map, and scored by the
head's forgery logit. The AUC over all those patches says whether the head ranks forged regions above the
untouched rest of the same faces; 0.5 is a head that knows nothing of where. Forged patches lie inside the
face by construction, so the report also gives the AUC of that prior alone (each patch scored by how much of it
the face's grown landmark hull covers), and the head's AUC over the patches wholly inside that hull only, where
the prior cannot tell patches apart: the head is worth what it adds there.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader

from realface.data.forgery_mask import face_hull_mask, patch_targets
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


def localization_report(
    detector: torch.nn.Module, faces: DetectionFaces, batch_size: int = 64, workers: int = 0
) -> dict | None:
    """{"patch_auc", "face_prior_auc", "inside_face_auc", "faces", "patches", "forged_patches"} over the fakes of
    `faces` with a known map (`faces` without augmentation, so crops and landmarks line up); None when those
    fakes do not hold both forged and untouched patches, inside the face and overall (too few to measure)."""
    fakes = [it for it in faces.items if it.label == 1 and it.partner is not None]
    if not fakes:
        return None
    subset = DetectionFaces(fakes, faces.pre, seed=faces.seed, mask_grid=faces.mask_grid)
    logits, targets = patch_scores(detector, subset, batch_size, workers)
    forged = (targets >= FORGED).reshape(-1)
    side = faces.pre.crop_size  # landmarks are in crop pixels
    prior = np.stack([patch_targets(face_hull_mask(it.record.landmarks, (side, side)), faces.mask_grid) for it in fakes])
    inside = prior.reshape(-1) >= 1.0
    if any(f.all() or not f.any() for f in (forged, forged[inside])):
        return None
    return {
        "patch_auc": roc_auc(forged.astype(int), logits.reshape(-1)),
        "face_prior_auc": roc_auc(forged.astype(int), prior.reshape(-1)),
        "inside_face_auc": roc_auc(forged[inside].astype(int), logits.reshape(-1)[inside]),
        "faces": int(logits.shape[0]),
        "patches": int(forged.size),
        "forged_patches": int(forged.sum()),
    }

