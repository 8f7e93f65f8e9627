"""FSFM instance discrimination by self-distillation (BYOL-style, negative-free).

The student is the MAE encoder on the masked view (visible part only); the teacher is an EMA copy of
it that sees the full, unmasked image. Student: features pooled over the visible part -> projector -> predictor.
Teacher: pooled features (`Encoder.features`) -> EMA copy of the projector. Works on any encoder. Loss: 2 - 2 * cos(student, teacher), averaged
over the batch (0 when aligned, 4 when opposite). Gradients never reach the teacher; it changes only
through `update_teacher`.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from realface.models.encoders import Encoder


def momentum_schedule(step: int, total_steps: int, base: float = 0.996, final: float = 1.0) -> float:
    """EMA momentum at `step`: cosine from `base` (step 0) to `final` (step >= total_steps)."""
    if total_steps <= 0:
        raise ValueError(f"total_steps must be positive, got {total_steps}")
    progress = min(max(step, 0), total_steps) / total_steps
    return final - (final - base) * (math.cos(math.pi * progress) + 1) / 2


def mlp(in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    """Projector / predictor head: Linear -> LayerNorm -> ReLU -> Linear.

    LayerNorm rather than BatchNorm: no batch statistics, so it needs no SyncBatchNorm under DDP and
    works with any per-process batch size.
    """
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.LayerNorm(hidden), nn.ReLU(inplace=True), nn.Linear(hidden, out_dim))


class SelfDistillation(nn.Module):
    """EMA teacher + projector/predictor heads for the 3C instance-discrimination loss.

    `student` is a reference to the encoder, not a submodule: its weights belong to the module that
    trains it (the MAE), so they appear once in a state dict and in `parameters()` of that module.
    Owns: projector, predictor (trained) and teacher_encoder, teacher_projector (EMA, requires_grad False).
    """

    def __init__(self, student_encoder: Encoder, proj_dim: int = 256, hidden: int = 1024) -> None:
        super().__init__()
        object.__setattr__(self, "student", student_encoder)  # not registered (see class docstring)
        dim = student_encoder.out_channels
        self.projector = mlp(dim, hidden, proj_dim)
        self.predictor = mlp(proj_dim, hidden, proj_dim)
        self.teacher_encoder = copy.deepcopy(student_encoder)
        self.teacher_projector = copy.deepcopy(self.projector)
        for p in self._teacher_parameters():
            p.requires_grad_(False)
        self.teacher_encoder.eval()
        self.teacher_projector.eval()

    def _teacher_parameters(self) -> list[nn.Parameter]:
        return [*self.teacher_encoder.parameters(), *self.teacher_projector.parameters()]

    def _student_parameters(self) -> list[nn.Parameter]:
        return [*self.student.parameters(), *self.projector.parameters()]

    def train(self, mode: bool = True) -> SelfDistillation:
        """Train the heads; the teacher always stays in eval mode (no drop path)."""
        super().train(mode)
        self.teacher_encoder.eval()
        self.teacher_projector.eval()
        return self

    @torch.no_grad()
    def teacher_targets(self, imgs: torch.Tensor) -> torch.Tensor:
        """imgs: (N, 3, H, W), full view -> (N, proj_dim) teacher projections (no gradient)."""
        return self.teacher_projector(self.teacher_encoder.features(imgs)[1])

    def forward(self, imgs: torch.Tensor, student_pooled: torch.Tensor) -> torch.Tensor:
        """Loss 2 - 2 cos, a scalar. imgs: (N, 3, H, W) unmasked; student_pooled: (N, D), the student encoder's
        features pooled over the visible part of the same images (MAEOutput.pooled)."""
        online = self.predictor(self.projector(student_pooled))  # (N, proj_dim)
        target = self.teacher_targets(imgs)  # (N, proj_dim)
        cos = F.cosine_similarity(online.float(), target.float(), dim=-1)  # (N,)
        return 2 - 2 * cos.mean()

    @torch.no_grad()
    def update_teacher(self, momentum: float) -> None:
        """teacher <- momentum * teacher + (1 - momentum) * student, for encoder and projector weights."""
        teacher, student = self._teacher_parameters(), self._student_parameters()
        for t, s in zip(teacher, student, strict=True):
            t.lerp_(s.detach().to(t.dtype), 1.0 - momentum)
        for t, s in zip(self.teacher_encoder.buffers(), self.student.buffers(), strict=True):
            t.copy_(s)
