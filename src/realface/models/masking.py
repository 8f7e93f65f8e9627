"""Masking strategies for masked image modeling, by name: `random` (MAE), `block` (BEiT), `crfr-p` (FSFM).

Mask semantics everywhere: `mask` is (N, L) bool over the L patches in row-major order of the (gh, gw)
grid, True = masked (removed from the encoder input, reconstructed by the decoder), False = visible.
Every strategy masks exactly `num_masked(L, ratio)` = round(ratio * L) patches per sample, so all samples
of a batch keep the same number of visible tokens.

Randomness comes only from the `torch.Generator` passed in (torch's global generator when None), so a
seeded generator gives the same masks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from realface.errors import RealfaceError
from realface.faces.regions import FACIAL_REGIONS, REGIONS


@dataclass(frozen=True)
class MaskBatch:
    """Masks for a batch. True = masked (removed) in both boolean tensors."""

    mask: torch.Tensor  # (N, L) bool, True = masked
    region: torch.Tensor  # (N,) long, label (index into REGIONS) of the region chosen to be fully masked; -1 = none
    region_mask: torch.Tensor  # (N, L) bool, masked patches touched by the chosen region (all False when none)


# fn(n, grid, ratio, generator, fractions) -> MaskBatch; fractions: (N, gh, gw, R) or None
MaskFn = Callable[[int, tuple[int, int], float, "torch.Generator | None", "torch.Tensor | np.ndarray | None"], MaskBatch]


def num_masked(num_patches: int, ratio: float) -> int:
    """Number of masked patches: round(ratio * L) (Python rounding)."""
    return int(round(ratio * num_patches))


def _numpy_rng(generator: torch.Generator | None) -> np.random.Generator:
    """A numpy generator seeded from the torch one (one draw), for the per-sample loops."""
    seed = int(torch.randint(0, 2**62, (1,), generator=generator).item())
    return np.random.default_rng(seed)


def _fix_count(mask: np.ndarray, n_mask: int, rng: np.random.Generator, protect: np.ndarray | None = None) -> np.ndarray:
    """Top up (mask random visible patches) or trim (unmask random masked, unprotected patches) to n_mask.

    mask: (L,) bool, modified in place and returned. protect: (L,) bool patches never unmasked.
    """
    count = int(mask.sum())
    if count < n_mask:
        free = np.flatnonzero(~mask)
        mask[rng.choice(free, n_mask - count, replace=False)] = True
    elif count > n_mask:
        removable = np.flatnonzero(mask & ~protect) if protect is not None else np.flatnonzero(mask)
        mask[rng.choice(removable, count - n_mask, replace=False)] = False
    return mask


def _empty_regions(n: int, num_patches: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.full((n,), -1, dtype=torch.long), torch.zeros(n, num_patches, dtype=torch.bool)


def random_masking(
    n: int, grid: tuple[int, int], ratio: float, generator: torch.Generator | None, fractions: object = None
) -> MaskBatch:
    """MAE: a uniformly random subset of round(ratio * L) patches per sample. `fractions` is ignored."""
    num_patches = grid[0] * grid[1]
    noise = torch.rand(n, num_patches, generator=generator)  # (N, L)
    rank = noise.argsort(dim=1).argsort(dim=1)  # (N, L) rank of each patch's noise
    mask = rank < num_masked(num_patches, ratio)
    region, region_mask = _empty_regions(n, num_patches)
    return MaskBatch(mask=mask, region=region, region_mask=region_mask)


def _block_one(grid: tuple[int, int], n_mask: int, rng: np.random.Generator, min_block: int = 4) -> np.ndarray:
    """BEiT blockwise masking for one sample: (gh*gw,) bool, True = masked.

    Rectangles of random area (>= min_block patches) and log-uniform aspect ratio in [0.3, 1/0.3] are
    added while they fit in the budget; the count is then topped up at random to exactly n_mask.
    """
    gh, gw = grid
    mask = np.zeros((gh, gw), dtype=bool)
    count, failures = 0, 0
    log_aspect = (np.log(0.3), np.log(1 / 0.3))
    while count < n_mask and failures < 20:
        budget = n_mask - count
        low = min(min_block, budget)
        area = rng.uniform(low, max(low, budget))
        aspect = np.exp(rng.uniform(*log_aspect))
        h = int(np.clip(round(np.sqrt(area * aspect)), 1, gh))
        w = int(np.clip(round(np.sqrt(area / aspect)), 1, gw))
        top, left = int(rng.integers(0, gh - h + 1)), int(rng.integers(0, gw - w + 1))
        new = int((~mask[top : top + h, left : left + w]).sum())
        if 0 < new <= budget:
            mask[top : top + h, left : left + w] = True
            count += new
        else:
            failures += 1
    return _fix_count(mask.reshape(-1), n_mask, rng)


def block_masking(
    n: int, grid: tuple[int, int], ratio: float, generator: torch.Generator | None, fractions: object = None
) -> MaskBatch:
    """BEiT-style blockwise masking, exactly round(ratio * L) patches per sample. `fractions` is ignored."""
    rng = _numpy_rng(generator)
    n_mask = num_masked(grid[0] * grid[1], ratio)
    mask = torch.from_numpy(np.stack([_block_one(grid, n_mask, rng) for _ in range(n)]))
    region, region_mask = _empty_regions(n, grid[0] * grid[1])
    return MaskBatch(mask=mask, region=region, region_mask=region_mask)


def crfr_p_one(fractions: np.ndarray, n_mask: int, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """CRFR-P (FSFM) for one sample: (mask (L,) bool with True = masked, chosen region label or -1).

    fractions: (L, R) share of each patch covered by each region of `REGIONS`. One facial region present
    in the face is chosen uniformly and every patch it touches is masked; the remaining budget is spread
    over the other patches in proportion to the patch counts of their dominant regions, then topped up
    or trimmed at random (never unmasking the chosen region) to exactly n_mask. If the chosen region
    alone touches more than n_mask patches, n_mask of them are masked at random. A face without region
    information (all fractions zero) gets uniform random masking and region -1.
    """
    num_patches = fractions.shape[0]
    touched_by = fractions > 0  # (L, R)
    present = [r for r in FACIAL_REGIONS if touched_by[:, r].any()]
    if not present:
        mask = np.zeros(num_patches, dtype=bool)
        mask[rng.choice(num_patches, n_mask, replace=False)] = True
        return mask, -1
    region = int(rng.choice(present))
    touched = touched_by[:, region]  # (L,)
    if touched.sum() >= n_mask:
        mask = np.zeros(num_patches, dtype=bool)
        mask[rng.choice(np.flatnonzero(touched), n_mask, replace=False)] = True
        return mask, region
    mask = touched.copy()
    others = np.flatnonzero(~touched)
    budget = n_mask - int(touched.sum())
    dominant = fractions[others].argmax(axis=1)  # (L_other,) region label of each remaining patch
    for label in np.unique(dominant):
        members = others[dominant == label]
        quota = min(len(members), int(round(budget * len(members) / len(others))))
        mask[rng.choice(members, quota, replace=False)] = True
    return _fix_count(mask, n_mask, rng, protect=touched), region


def crfr_p_masking(
    n: int,
    grid: tuple[int, int],
    ratio: float,
    generator: torch.Generator | None,
    fractions: torch.Tensor | np.ndarray | None = None,
) -> MaskBatch:
    """CRFR-P masking for a batch (see `crfr_p_one`).

    fractions: (N, gh, gw, R) per-patch region fractions from `realface.faces.regions.patch_region_fractions`,
    or None for a batch without landmarks. A sample whose fractions are all zero has no landmarks and
    falls back to uniform random masking (region -1, empty region_mask).
    """
    gh, gw = grid
    num_patches = gh * gw
    n_mask = num_masked(num_patches, ratio)
    if fractions is None:
        frac = np.zeros((n, num_patches, len(REGIONS)), dtype=np.float32)
    else:
        frac = fractions.detach().cpu().numpy() if isinstance(fractions, torch.Tensor) else np.asarray(fractions)
        if frac.shape[:3] != (n, gh, gw):
            raise RealfaceError(f"region fractions have shape {frac.shape}, expected ({n}, {gh}, {gw}, R)")
        frac = frac.reshape(n, num_patches, -1)
    rng = _numpy_rng(generator)
    masks, regions = zip(*(crfr_p_one(frac[i], n_mask, rng) for i in range(n)))
    mask = torch.from_numpy(np.stack(masks))  # (N, L)
    region = torch.tensor(regions, dtype=torch.long)  # (N,)
    touched = torch.from_numpy(frac > 0)  # (N, L, R)
    chosen = touched.gather(2, region.clamp(min=0).view(n, 1, 1).expand(-1, num_patches, 1)).squeeze(2)
    region_mask = chosen & mask & (region >= 0).unsqueeze(1)
    return MaskBatch(mask=mask, region=region, region_mask=region_mask)


MASKINGS: dict[str, MaskFn] = {
    "random": random_masking,
    "block": block_masking,
    "crfr-p": crfr_p_masking,
}


def sample_masks(
    name: str,
    n: int,
    grid: tuple[int, int],
    ratio: float = 0.75,
    generator: torch.Generator | None = None,
    fractions: torch.Tensor | np.ndarray | None = None,
) -> MaskBatch:
    """Masks for n samples from the strategy `name` in `MASKINGS`; checks the arguments.

    grid: (gh, gw) patches; ratio: fraction of patches masked; fractions: (N, gh, gw, R) for `crfr-p`;
    generator: the source of randomness (torch's global generator when None).
    """
    if name not in MASKINGS:
        raise RealfaceError(f"unknown masking {name!r}; choose one of {', '.join(MASKINGS)}")
    num_patches = grid[0] * grid[1]
    n_mask = num_masked(num_patches, ratio)
    if not 0 < n_mask < num_patches:
        raise RealfaceError(f"mask ratio {ratio} leaves {n_mask} of {num_patches} patches masked; need 1..L-1")
    return MASKINGS[name](n, grid, ratio, generator, fractions)


@dataclass(frozen=True)
class MaskIndices:
    """Index form of a mask, for gathering tokens; indices sorted ascending within each row."""

    keep_idx: torch.Tensor  # (N, L_keep) long, visible patches
    mask_idx: torch.Tensor  # (N, L_mask) long, masked patches
    restore_idx: torch.Tensor  # (N, L) long: cat([visible, masked], 1).gather(1, restore_idx) is in patch order


def mask_to_indices(mask: torch.Tensor) -> MaskIndices:
    """keep/mask/restore indices from mask (N, L) bool, True = masked; every row needs the same count."""
    counts = mask.sum(dim=1)
    if mask.ndim != 2 or (counts != counts[0]).any():
        raise RealfaceError("every sample of a batch must mask the same number of patches")
    n_keep = mask.shape[1] - int(counts[0])
    length = mask.shape[1]
    key = mask.to(torch.int64) * length + torch.arange(length, device=mask.device)  # distinct keys: no stable sort
    order = torch.argsort(key, dim=1)  # (N, L): visible first, each part ascending (exports to ONNX as TopK)
    return MaskIndices(keep_idx=order[:, :n_keep], mask_idx=order[:, n_keep:], restore_idx=torch.argsort(order, dim=1))
