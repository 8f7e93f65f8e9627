"""`competitive` (FFDBackbone): two branches from the same pretrained encoder compete, a shared head fuses them.

    f1, f2 = pool(branch1(x)), pool(branch2(x))                         (N, D) each
    z1, z2 = head(f1), head(f2)                                          per-branch logits (N, 2)
    e_i = softplus(z_i), alpha_i = e_i + 1, u_i = K / sum(alpha_i), K=2  Dirichlet uncertainty in (0, 1]
    (w1, w2) = softmax(-fusion_lambda * (u1, u2))                        per face; u detached: a gate, not a target
    logits = head(w1 * f1 + w2 * f2)
    loss = CE(logits) + edl_weight * (EDL(z1) + EDL(z2)) + corr_weight * mean_n |pearson(f1[n].detach(), f2[n])|

softplus evidence: smooth, never exactly 0 (relu can die), and does not overflow (exp can).
EDL is the log form of Sensoy et al. 2018 (eq. 4) plus their KL term to the uniform Dirichlet on the
wrong-class evidence, weighted min(1, progress / edl_anneal).
DetectorOutput.uncertainty is the fused uncertainty w1 * u1 + w2 * u2: the expected uncertainty under
the fusion weights (the fused head is trained with CE, so its own evidence is not an EDL quantity).
`export()` keeps one branch and the shared head as a `classifier` detector. Works on any encoder.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from realface.errors import RealfaceError
from realface.models.detectors.base import (
    ClassifierHead,
    Detector,
    DetectorConfig,
    DetectorOptions,
    DetectorOutput,
    ce_loss,
    check_labels,
    check_progress,
    make_encoder,
    output_from_logits,
)
from realface.models.detectors.classifier import ClassifierDetector, ClassifierOptions
from realface.models.encoders import Encoder
from realface.models.pretrainer import Pretrainer


@dataclass(frozen=True)
class CompetitiveOptions(DetectorOptions):
    """Options of the `competitive` detector."""

    fusion_lambda: float = 1.0  # branch fusion weights = softmax(-fusion_lambda * (u1, u2))
    corr_weight: float = 0.1  # weight of the Pearson decorrelation loss
    edl_weight: float = 1.0  # weight of each branch's evidential loss
    edl_anneal: float = 0.5  # the EDL KL term ramps 0 -> 1 over this fraction of training; 0 = full at once

    def check(self, config: DetectorConfig) -> None:
        if self.fusion_lambda < 0 or self.corr_weight < 0 or self.edl_weight < 0:
            raise RealfaceError("fusion_lambda, corr_weight and edl_weight must be >= 0 (0 turns a term off)")
        if not 0.0 <= self.edl_anneal <= 1.0:
            raise RealfaceError(f"edl_anneal {self.edl_anneal} must be a fraction of training in [0, 1]")
        if config.freeze:
            raise RealfaceError("freeze is not supported by 'competitive': its branches must train to diverge")


def pearson_loss(f1: torch.Tensor, f2: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """() mean over faces n of |Pearson correlation between the D-dim vectors f1[n] and f2[n]|.

    f1, f2: (N, D). Each vector is centred over its D features; r_n = <a, b> / (|a| |b| + eps).
    0 for uncorrelated features, 1 for features equal up to a positive or negative affine map.
    The caller detaches f1 (branch 1 is the reference that branch 2 moves away from).
    """
    a = f1.float() - f1.float().mean(dim=1, keepdim=True)
    b = f2.float() - f2.float().mean(dim=1, keepdim=True)
    r = (a * b).sum(dim=1) / (a.norm(dim=1) * b.norm(dim=1) + eps)  # (N,)
    return r.abs().mean()


def dirichlet_alpha(logits: torch.Tensor) -> torch.Tensor:
    """(N, K) logits -> (N, K) Dirichlet concentration alpha = softplus(logits) + 1."""
    return F.softplus(logits.float()) + 1.0


def dirichlet_uncertainty(alpha: torch.Tensor) -> torch.Tensor:
    """(N, K) alpha -> (N,) u = K / sum_k alpha_k, 1 with no evidence, -> 0 with much evidence."""
    return alpha.shape[1] / alpha.sum(dim=1)


def kl_to_uniform_dirichlet(alpha: torch.Tensor) -> torch.Tensor:
    """(N, K) alpha -> (N,) KL(Dir(alpha) || Dir(1, ..., 1))."""
    k = alpha.shape[1]
    s = alpha.sum(dim=1)  # (N,)
    log_norm = torch.lgamma(s) - torch.lgamma(alpha).sum(dim=1) - torch.lgamma(alpha.new_tensor(float(k)))
    return log_norm + ((alpha - 1.0) * (torch.digamma(alpha) - torch.digamma(s)[:, None])).sum(dim=1)


def edl_loss(logits: torch.Tensor, labels: torch.Tensor, kl_weight: float) -> torch.Tensor:
    """() mean over faces of sum_k y_k (log S - log alpha_k) + kl_weight * KL(Dir(alpha~) || Dir(1)).

    logits (N, K), labels (N,) long; alpha~ = y + (1 - y) * alpha keeps only the wrong-class evidence.
    """
    alpha = dirichlet_alpha(logits)  # (N, K)
    y = F.one_hot(labels, alpha.shape[1]).to(alpha.dtype)  # (N, K)
    s = alpha.sum(dim=1, keepdim=True)  # (N, 1)
    nll = (y * (s.log() - alpha.log())).sum(dim=1)  # (N,)
    if kl_weight == 0.0:
        return nll.mean()
    return (nll + kl_weight * kl_to_uniform_dirichlet(y + (1.0 - y) * alpha)).mean()


def fusion_weights(u: torch.Tensor, lam: float) -> torch.Tensor:
    """u (N, 2) branch uncertainties -> (N, 2) weights softmax(-lam * u): the surer branch weighs more."""
    return torch.softmax(-lam * u, dim=1)


class CompetitiveDetector(Detector):
    """Two branches, one shared head, uncertainty-weighted fusion (see the module docstring)."""

    def __init__(self, config: DetectorConfig, branch1: Encoder, branch2: Encoder) -> None:
        super().__init__(config)
        self.branches = nn.ModuleList([branch1, branch2])
        self.head = ClassifierHead(branch1.out_channels)

    def branch_features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """images (N, 3, H, W) -> [f1, f2], pooled features (N, D) of each branch."""
        return [branch.features(images, self.config.pool)[1] for branch in self.branches]

    def forward(self, images: torch.Tensor) -> DetectorOutput:
        f1, f2 = self.branch_features(images)
        z1, z2 = self.head(f1), self.head(f2)  # (N, 2) each
        u = torch.stack([dirichlet_uncertainty(dirichlet_alpha(z)) for z in (z1, z2)], dim=1)  # (N, 2)
        w = fusion_weights(u.detach(), self.config.options.fusion_lambda)  # (N, 2)
        fused = w[:, :1].to(f1.dtype) * f1 + w[:, 1:].to(f2.dtype) * f2  # (N, D)
        extras = {"features_b1": f1, "features_b2": f2, "logits_b1": z1, "logits_b2": z2, "u": u, "weights": w}
        return output_from_logits(self.head(fused), (w * u).sum(dim=1), extras)

    def loss(
        self, output: DetectorOutput, labels: torch.Tensor, progress: float = 0.0, targets: dict | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        cfg, ex = self.config.options, output.extras
        check_labels(labels, output.logits.shape[0])
        check_progress(progress)
        kl_weight = 1.0 if cfg.edl_anneal == 0 else min(1.0, progress / cfg.edl_anneal)
        ce = ce_loss(output.logits, labels, self.config.label_smoothing)
        edl1 = edl_loss(ex["logits_b1"], labels, kl_weight)
        edl2 = edl_loss(ex["logits_b2"], labels, kl_weight)
        corr = pearson_loss(ex["features_b1"].detach(), ex["features_b2"])
        loss = ce + cfg.edl_weight * (edl1 + edl2) + cfg.corr_weight * corr
        u_mean = ex["u"].mean(dim=0)  # (2,)
        parts = {"ce": ce, "edl_b1": edl1, "edl_b2": edl2, "corr": corr, "u_b1": u_mean[0], "u_b2": u_mean[1]}
        return loss, {k: v.detach() for k, v in parts.items()}

    @torch.no_grad()
    def choose_branch(self, calibration: torch.Tensor | None = None) -> int:
        """0 or 1: the branch with the lower mean uncertainty on `calibration` (N, 3, H, W); 0 without one."""
        if calibration is None:
            return 0
        was_training = self.training
        u = self.eval()(calibration).extras["u"]  # (N, 2), without drop path
        self.train(was_training)
        return int(u.mean(dim=0).argmin())

    def export(self, calibration: torch.Tensor | None = None) -> ClassifierDetector:
        """A `classifier` detector with copies of one branch (see `choose_branch`) and of the shared head.

        Its logits equal this model's `logits_b{i+1}`; it reports no uncertainty.
        """
        i = self.choose_branch(calibration)
        config = dataclasses.replace(self.config, name="classifier", options=ClassifierOptions())
        exported = ClassifierDetector(config, copy.deepcopy(self.branches[i]), copy.deepcopy(self.head))
        return exported.train(self.training)


def build_competitive(config: DetectorConfig, pretrainer: Pretrainer | None) -> CompetitiveDetector:
    """Both branches start from the same weights: the pretrained encoder, or one random init copied twice."""
    branch1 = make_encoder(config, pretrainer)
    return CompetitiveDetector(config, branch1, copy.deepcopy(branch1))

