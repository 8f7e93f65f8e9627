"""What every detector shares: its configuration, its output, its interface, and the pieces they compose.

A detector is an encoder (or two) plus a head. Inputs are faces (N, 3, H, W) normalized with the
preprocessing of the weights; labels are (N,) long with 1 = fake, 0 = real; class index 1 of the logits
is "fake".
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import TYPE_CHECKING

import torch
import torch.nn as nn
import torch.nn.functional as F

from realface.errors import RealfaceError
from realface.models.encoders import Encoder, build_encoder, encoder_info
from realface.models.explain import gradient_x_input

if TYPE_CHECKING:
    from realface.models.pretrainer import ModelConfig, Pretrainer

POOLS = ("avg", "cls")
NUM_CLASSES = 2  # 0 = real, 1 = fake


@dataclass(frozen=True)
class DetectorOptions:
    """Base of each detector's own options (a frozen dataclass registered with the detector)."""

    @property
    def cell_targets(self) -> bool:
        """Whether training must give each face its per-cell forgery targets (a cell head is on)."""
        return False

    def check(self, config: DetectorConfig) -> None:
        """Raise RealfaceError for values that do not fit the rest of `config` (e.g. its grid)."""

    def for_pretrainer(self, model_cfg: ModelConfig) -> DetectorOptions:
        """These options with whatever a pretraining run fixes (e.g. rffr's MAE decoder shape)."""
        return self


@dataclass(frozen=True)
class DetectorConfig:
    """Everything needed to rebuild a detector; saved as JSON next to its weights.

    The fields here are read by every detector; what only one detector reads is in its own options dataclass
    (`options`, e.g. `ClassifierOptions`, `RFFROptions`, `CompetitiveOptions`), None meaning its defaults.
    """

    name: str = "classifier"  # detector, a name in realface.models.detectors.DETECTORS ("vit" is an old alias)
    encoder: str = "vit_tiny_patch16"  # a name in realface.models.encoders.ENCODERS (must match the pretrainer's)
    img_size: int = 224  # input side in pixels, a multiple of the encoder's stride
    pool: str = "avg"  # "avg": mean of the feature map; "cls": a ViT's CLS token
    drop_path: float = 0.1  # stochastic depth rate of the trained encoders
    freeze: bool = False  # linear probe: encoders frozen (eval mode, no grad), only the heads train
    label_smoothing: float = 0.1  # label smoothing of the cross-entropy losses
    layer_decay: float = 0.75  # layer-wise lr decay for the training loop (lr * decay ** (num_layers - layer)); 1 = off
    options: DetectorOptions | None = None  # the detector's own options; None = its defaults

    def __post_init__(self) -> None:
        from realface.models.detectors import ALIASES, DETECTORS  # the registry imports this module

        object.__setattr__(self, "name", ALIASES.get(self.name, self.name))
        if self.name not in DETECTORS:
            raise RealfaceError(f"unknown detector {self.name!r}; choose one of {', '.join(DETECTORS)}")
        kind = DETECTORS[self.name].options
        if self.options is None:
            object.__setattr__(self, "options", kind())
        elif type(self.options) is not kind:
            raise RealfaceError(f"detector {self.name!r} takes {kind.__name__}, got {type(self.options).__name__}")
        info = encoder_info(self.encoder)
        info.check_size(self.img_size)
        if self.pool not in POOLS or (self.pool == "cls" and info.family != "vit"):
            raise RealfaceError(f"pool must be 'avg' (any encoder) or 'cls' (a ViT), got {self.pool!r} for {self.encoder}")
        if not 0.0 <= self.drop_path < 1.0:
            raise RealfaceError(f"drop_path {self.drop_path} must be in [0, 1)")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise RealfaceError(f"label_smoothing {self.label_smoothing} must be in [0, 1)")
        if not 0.0 < self.layer_decay <= 1.0:
            raise RealfaceError(f"layer_decay {self.layer_decay} must be in (0, 1]; 1 turns it off")
        self.options.check(self)

    @property
    def grid(self) -> tuple[int, int]:
        """(rows, cols) of the encoder's feature map: the cells of the forgery-mask head."""
        return encoder_info(self.encoder).grid(self.img_size)

    def to_dict(self) -> dict[str, object]:
        return {**{f.name: getattr(self, f.name) for f in fields(self) if f.name != "options"}, "options": asdict(self.options)}

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> DetectorConfig:
        """Build from a dict (e.g. JSON); unknown keys raise RealfaceError. Reads configs written before options
        had their own dataclasses (every detector's options flat in one dict, e.g. "rffr_blocks")."""
        shared, options = split_detector_dict(data)
        return cls(**shared, options=options_for(str(shared.get("name", "classifier")), options))  # type: ignore[arg-type]

    def for_pretrainer(self, model_cfg: ModelConfig, img_size: int | None = None) -> DetectorConfig:
        """This config with the encoder, input size and anything else a pretraining run fixes.

        img_size: fine-tune at this side instead of the pretraining one; only for a CNN, whose weights do not
        depend on the input size (e.g. pretrain at 96 px, fine-tune at 128: FixRes, progressive resizing). A
        ViT's position embeddings fix its side.
        """
        size = model_cfg.img_size
        if img_size is not None and img_size != size:
            if encoder_info(model_cfg.encoder).family != "cnn":
                raise RealfaceError(
                    f"{model_cfg.encoder} was pretrained at {size} px and fine-tunes at that side only, not {img_size}"
                )
            size = img_size
        return replace(self, encoder=model_cfg.encoder, img_size=size, options=self.options.for_pretrainer(model_cfg))


# Flat keys of configs written before per-detector options: old name -> (detector, option name).
LEGACY_OPTIONS: dict[str, tuple[str, str]] = {
    "mask_weight": ("classifier", "mask_weight"),
    "rffr_blocks": ("rffr", "blocks"),
    **{k: ("rffr", k) for k in ("mae_decoder_dim", "mae_decoder_depth", "mae_decoder_heads", "mae_norm_pix", "mae_mask_cell")},
    **{k: ("competitive", k) for k in ("fusion_lambda", "corr_weight", "edl_weight", "edl_anneal")},
}


def split_detector_dict(data: dict[str, object]) -> tuple[dict[str, object], dict[str, object]]:
    """(shared fields, the named detector's options) of a detector config dict, old flat layout included; keys
    that are neither raise RealfaceError."""
    from realface.models.detectors import ALIASES

    data = dict(data)
    name = ALIASES.get(str(data.get("name", "classifier")), str(data.get("name", "classifier")))
    options = data.pop("options", None) or {}
    if not isinstance(options, dict):
        raise RealfaceError(f"detector options must be a JSON object, got {options!r}")
    options = dict(options)
    for key in [k for k in data if k in LEGACY_OPTIONS]:
        owner, option = LEGACY_OPTIONS[key]
        value = data.pop(key)
        if owner == name:  # (old configs held every detector's options; the others' are dropped)
            options.setdefault(option, value)
    known = {f.name for f in fields(DetectorConfig)} - {"options"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise RealfaceError(f"unknown detector config keys: {', '.join(unknown)}")
    return data, options


def options_for(name: str, values: dict[str, object], strict: bool = True) -> DetectorOptions:
    """The options dataclass of detector `name` from `values`; a key it does not take raises RealfaceError (or,
    with strict False, is left out: e.g. a recipe's settings for other detectors)."""
    from realface.models.detectors import ALIASES, DETECTORS

    name = ALIASES.get(name, name)
    if name not in DETECTORS:
        raise RealfaceError(f"unknown detector {name!r}; choose one of {', '.join(DETECTORS)}")
    kind = DETECTORS[name].options
    known = {f.name for f in fields(kind)}
    unknown = sorted(set(values) - known)
    if unknown and strict:
        raise RealfaceError(
            f"detector {name!r} has no option {', '.join(unknown)} (its options: {', '.join(sorted(known)) or 'none'})"
        )
    return kind(**{k: v for k, v in values.items() if k in known})


@dataclass
class DetectorOutput:
    """Result of a detector's forward pass."""

    logits: torch.Tensor  # (N, 2) class scores, index 1 = fake
    prob_fake: torch.Tensor  # (N,) softmax probability of "fake"
    uncertainty: torch.Tensor | None  # (N,) in (0, 1], higher = less sure; None for detectors without one
    extras: dict[str, torch.Tensor]  # detector-specific tensors (features, residual, branch outputs)


class Detector(nn.Module):
    """Common interface. Subclasses implement `forward` and `loss`; the rest has defaults.

    heatmap default: gradient x input of the fake-vs-real logit margin (see `realface.models.explain`).
    """

    def __init__(self, config: DetectorConfig) -> None:
        super().__init__()
        self.config = config

    def forward(self, images: torch.Tensor) -> DetectorOutput:  # images: (N, 3, H, W) normalized
        raise NotImplementedError

    def loss(
        self, output: DetectorOutput, labels: torch.Tensor, progress: float = 0.0, targets: dict | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(loss, parts): the batch's mean loss and its named parts as detached scalars.

        labels: (N,) long, 1 = fake; progress: fraction of training done, in [0, 1] (for annealed terms);
        targets: the batch's other targets, e.g. "mask" (N, L) and "mask_known" (N,) for a cell head.
        """
        raise NotImplementedError

    def heatmap(self, images: torch.Tensor) -> torch.Tensor:
        """(N, H, W) in [0, 1]: where the model sees forgery. Call `eval()` first for a deterministic map."""
        return gradient_x_input(lambda x: fake_margin(self(x).logits), images)

    @property
    def map_kind(self) -> str | None:
        """How `map_from`'s maps become heatmaps (`realface.model.MAP_KINDS`); None: this detector has no
        forward-pass map (its heatmap needs gradients, which an ONNX graph does not carry)."""
        return None

    def map_from(self, output: DetectorOutput) -> torch.Tensor | None:
        """(N, h, w) raw map of where the model sees forgery, from a forward pass's output (no gradients: it
        exports to ONNX); None when `map_kind` is None."""
        return None

    def export(self, calibration: torch.Tensor | None = None) -> Detector:
        """A lighter model for inference with the same interface (default: self). calibration: (N, 3, H, W)."""
        return self

    def encoders(self) -> dict[str, Encoder]:
        """Every encoder inside, by its module path (e.g. "encoder", "branches.0")."""
        return {name: m for name, m in self.named_modules() if isinstance(m, Encoder) and name}

    @property
    def num_layers(self) -> int:
        """Depth for layer-wise lr decay: the encoder's stem = 0, ..., heads = the encoder's num_layers."""
        return next(iter(self.encoders().values())).num_layers

    def layer_of(self, param_name: str) -> int:
        """Layer of a parameter for `realface.train.schedule.param_groups`: the encoder's own numbering for its
        parameters, `num_layers` for everything outside an encoder (heads)."""
        for prefix, encoder in self.encoders().items():
            if param_name.startswith(prefix + "."):
                return encoder.layer_of(param_name[len(prefix) + 1 :])
        return self.num_layers

    def frozen_modules(self) -> list[nn.Module]:
        """Submodules that stay in eval mode and get no gradient."""
        return []

    def train(self, mode: bool = True) -> Detector:
        super().train(mode)
        for module in self.frozen_modules():
            module.eval()
        return self


# --------------------------------------------------------------------------------------------------
# shared pieces


def fake_margin(logits: torch.Tensor) -> torch.Tensor:
    """logits (N, 2) -> (N,) fake-minus-real logit, the log-odds of "fake"."""
    return logits[:, 1] - logits[:, 0]


class ClassifierHead(nn.Module):
    """LayerNorm + linear layer to the 2 classes (MAE's fine-tuning fc_norm + head)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, NUM_CLASSES)
        nn.init.trunc_normal_(self.fc.weight, std=0.02)
        nn.init.zeros_(self.fc.bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:  # (N, D) -> (N, 2)
        return self.fc(self.norm(features))


def ce_loss(logits: torch.Tensor, labels: torch.Tensor, smoothing: float) -> torch.Tensor:
    """Mean cross-entropy with label smoothing; logits (N, 2) any float dtype, labels (N,) long."""
    check_labels(labels, logits.shape[0])
    return F.cross_entropy(logits.float(), labels, label_smoothing=smoothing)


def patch_mask_loss(patch_logits: torch.Tensor, target: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of per-patch forgery logits (N, L) against targets (N, L) in [0, 1], averaged over
    the faces whose target is known (known: (N,) 0/1); 0 when none is."""
    per_face = F.binary_cross_entropy_with_logits(patch_logits.float(), target.float(), reduction="none").mean(dim=1)
    return (per_face * known).sum() / known.sum().clamp(min=1.0)


def check_labels(labels: torch.Tensor, n: int) -> None:
    if labels.dtype != torch.long or labels.shape != (n,):
        raise RealfaceError(f"labels must be a ({n},) long tensor (1 = fake), got {tuple(labels.shape)} {labels.dtype}")


def check_progress(progress: float) -> None:
    if not 0.0 <= progress <= 1.0:
        raise RealfaceError(f"progress {progress} must be the fraction of training done, in [0, 1]")


def output_from_logits(logits: torch.Tensor, uncertainty: torch.Tensor | None, extras: dict) -> DetectorOutput:
    prob_fake = logits.float().softmax(dim=-1)[:, 1]  # (N,)
    return DetectorOutput(logits=logits, prob_fake=prob_fake, uncertainty=uncertainty, extras=extras)


def make_encoder(config: DetectorConfig, pretrainer: Pretrainer | None, drop_path: float | None = None) -> Encoder:
    """A detector encoder: random init without a pretrainer, else a copy of `pretrainer.encoder`'s weights."""
    if pretrainer is not None and pretrainer.config.encoder != config.encoder:
        raise RealfaceError(
            f"the detector's encoder {config.encoder!r} differs from the pretrained {pretrainer.config.encoder!r}; "
            "use DetectorConfig.for_pretrainer"
        )
    rate = config.drop_path if drop_path is None else drop_path
    encoder = build_encoder(config.encoder, img_size=config.img_size, drop_path=rate)
    if pretrainer is not None:
        encoder.load_pretrained(pretrainer.encoder.state_dict())
    return encoder


def freeze_(module: nn.Module) -> nn.Module:
    """No gradient and eval mode, in place; returns the module."""
    module.requires_grad_(False)
    return module.eval()
