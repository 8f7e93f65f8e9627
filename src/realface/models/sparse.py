"""Dense convolutions that behave like sparse ones on the visible part of a masked image (SparK, ConvNeXt V2).

A CNN cannot drop masked positions the way a ViT drops masked tokens: a convolution mixes neighbours, so a
masked region would leak into the visible features around it, and normalisation statistics would count it.
`SparseMasking` installs, once, on a CNN encoder:
- a forward hook on every leaf module that multiplies its output by the visibility mask at that output's
  resolution (the mask lives on a grid of `cell`-pixel cells; finer maps repeat it, coarser maps count a cell
  visible when any of its sub-cells is), and the input is masked before the first layer;
- BatchNorm layers whose statistics, while a mask is set, are computed over visible positions only.
While no mask is set (fine-tuning, the EMA teacher, evaluation) every hook passes its input through.

Why this equals sparse convolution on the visible positions: a submanifold sparse convolution computes outputs
at active (visible) sites only, from the active sites in its window, as if inactive sites held zeros. Here every
masked position holds exactly 0 when each layer reads its input (the input is masked and every layer's output
is re-masked), so a dense convolution's output at a visible position is that same sum; its output at masked
positions, which a sparse convolution would not compute, is zeroed before anything reads it. Element-wise
layers map 0 to 0 or are re-masked; BatchNorm sees only visible positions; LayerNorm is per position; ConvNeXt
V2's GRN sums squares over space, where masked zeros add nothing. So no masked pixel ever reaches a visible
feature, and the statistics are those of the visible part. One approximation is left: squeeze-excitation blocks
(EfficientNet, MobileNet) average over all positions, so masked zeros dilute their gate (no leak of content).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn


def visibility_at(visible: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """visible (N, 1, gh, gw) -> (N, 1, h, w): each cell repeated on a finer map; on a coarser map a position is
    visible when any cell under it is."""
    gh, gw, h, w = (int(v) for v in (*visible.shape[-2:], h, w))  # plain ints: fixed sizes in an ONNX graph
    if h >= gh:
        m = visible.repeat_interleave(h // gh, dim=2).repeat_interleave(w // gw, dim=3)
    else:
        m = F.max_pool2d(visible, (gh // h, gw // w))  # fixed windows (not adaptive): exports to ONNX
    if m.shape[-2:] != (h, w):
        raise RuntimeError(f"a {h}x{w} map does not tile the {gh}x{gw} mask grid")
    return m


class SparseMasking:
    """Hooks that make `encoder` compute on the visible cells of `visible` while `masked(visible)` is active."""

    def __init__(self, encoder: nn.Module) -> None:
        self.visible: torch.Tensor | None = None  # (N, 1, gh, gw) float, 1 = visible, while a mask is set
        self._cache: dict[tuple[int, int], torch.Tensor] = {}
        for module in encoder.modules():
            if isinstance(module, nn.BatchNorm2d) and not isinstance(module, _SparseBatchNorm):
                module.__class__ = _sparse_bn_class(type(module))
                module.__dict__["_sparse"] = self  # a plain attribute, not a submodule
            if not any(True for _ in module.children()):
                module.register_forward_hook(self._remask)

    def at(self, h: int, w: int) -> torch.Tensor:
        """(N, 1, h, w) visibility at a map's resolution: cells repeated on finer maps, any-visible on coarser ones."""
        if self.visible is None:
            raise RuntimeError("no mask is set")
        if (h, w) not in self._cache:
            self._cache[(h, w)] = visibility_at(self.visible, h, w)
        return self._cache[(h, w)]

    @contextmanager
    def masked(self, visible: torch.Tensor) -> Iterator[None]:
        """Inside, the encoder sees only the cells where `visible` (N, 1, gh, gw) is 1."""
        self.visible, self._cache = visible, {}
        try:
            yield
        finally:
            self.visible, self._cache = None, {}

    def _remask(self, module: nn.Module, inputs: tuple, output: object) -> object:
        if self.visible is None or not isinstance(output, torch.Tensor) or output.ndim != 4:
            return None
        n, a, b, c = output.shape
        if (b, c) == self._side(b, c):  # (N, C, h, w)
            return output * self.at(b, c).to(output.dtype)
        if (a, b) == self._side(a, b):  # (N, h, w, C): channels-last layers (Linear, LayerNorm in ConvNeXt blocks)
            return output * self.at(a, b).to(output.dtype).permute(0, 2, 3, 1)
        return None

    def _side(self, h: int, w: int) -> tuple[int, int] | None:
        """(h, w) when a map of that size tiles or is tiled by the mask grid (a spatial map), else None."""
        gh, gw = self.visible.shape[-2:]
        fits = lambda size, g: size % g == 0 or (g % size == 0)  # noqa: E731
        return (h, w) if h * gw == w * gh and fits(h, gh) and fits(w, gw) else None


class _SparseBatchNorm:
    """Mixin: BatchNorm with statistics over visible positions only while a mask is set (SparK's SparseBatchNorm)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sparse: SparseMasking | None = self.__dict__.get("_sparse")
        if sparse is None or sparse.visible is None:
            return super().forward(x)
        m = sparse.at(*x.shape[-2:]).to(x.dtype)  # (N, 1, h, w)
        if self.training or not self.track_running_stats:
            count = m.sum().clamp(min=2.0)
            mean = (x * m).sum(dim=(0, 2, 3)) / count  # (C,)
            var = (((x - mean[None, :, None, None]) ** 2) * m).sum(dim=(0, 2, 3)) / count
            if self.training and self.track_running_stats:
                with torch.no_grad():
                    self.num_batches_tracked.add_(1)
                    momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                    self.running_mean.lerp_(mean.detach(), momentum)
                    self.running_var.lerp_(var.detach() * count / (count - 1), momentum)
        else:
            mean, var = self.running_mean, self.running_var
        y = (x - mean[None, :, None, None]) * torch.rsqrt(var[None, :, None, None] + self.eps)
        if self.affine:
            y = y * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        if hasattr(self, "act"):  # timm's BatchNormAct2d: norm, then dropout and activation
            y = self.act(self.drop(y))
        return y


_CLASSES: dict[type, type] = {}


def _sparse_bn_class(cls: type) -> type:
    """The sparse variant of a BatchNorm2d class (its state dict keys are unchanged)."""
    if cls not in _CLASSES:
        _CLASSES[cls] = type(f"Sparse{cls.__name__}", (_SparseBatchNorm, cls), {})
    return _CLASSES[cls]
