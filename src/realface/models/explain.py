"""Heatmaps of where a detector sees forgery: gradient x input, smoothed and scaled to [0, 1] per image.

Gradient x input (Shrikumar et al. 2016) of a scalar score per face: |sum over channels of
d score / d x * x| at each pixel, in the normalized input space (a pixel at the dataset mean counts 0).
It needs one backward pass, works for any architecture (one or two encoders), and is at the input
resolution already. Raw maps are speckled at pixel level, so they are box-blurred over a window of
about 1/16 of the side, then divided by their 99th percentile and clipped to [0, 1].
Gradients go to the images only: parameters' `.grad` are left untouched.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F


def normalize_maps(maps: torch.Tensor, quantile: float = 0.99) -> torch.Tensor:
    """maps (N, H, W) >= 0 -> (N, H, W) in [0, 1]: divided by each map's `quantile`, clipped. All-zero stays 0."""
    n = maps.shape[0]
    flat = maps.reshape(n, -1).float()
    scale = torch.quantile(flat, quantile, dim=1).clamp(min=1e-12)  # (N,)
    return (flat / scale[:, None]).clamp(0.0, 1.0).reshape(maps.shape)


def smooth_maps(maps: torch.Tensor, fraction: float = 1 / 16) -> torch.Tensor:
    """maps (N, H, W) -> (N, H, W) box-blurred over an odd window of about `fraction` of the height."""
    k = max(1, int(round(maps.shape[-2] * fraction))) | 1  # odd window
    if k == 1:
        return maps
    return F.avg_pool2d(maps.unsqueeze(1), k, stride=1, padding=k // 2, count_include_pad=False).squeeze(1)


def gradient_x_input(score: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor) -> torch.Tensor:
    """(N, H, W) in [0, 1]: smoothed |gradient x input| of score(images) (N,) with respect to images (N, 3, H, W)."""
    x = images.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        values = score(x)  # (N,)
        (grad,) = torch.autograd.grad(values.sum(), x)  # faces are independent: sum gives per-face gradients
    maps = (grad * x.detach()).sum(dim=1).abs()  # (N, H, W)
    return normalize_maps(smooth_maps(maps))
