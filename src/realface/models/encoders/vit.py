"""ViT encoders by name (timm's VisionTransformer, random init) and loading of local checkpoints.

An encoder runs either on all patch tokens (`forward_features`, or `forward_map` for the `Encoder` contract:
the patch tokens reshaped to a (N, D, gh, gw) map with a stride of one patch) or on a subset of them
(`forward_visible`), which is what the masked autoencoder uses: compute scales with the visible fraction.
Attention is timm's fused `F.scaled_dot_product_attention`.
"""

from __future__ import annotations

import contextvars
import math
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from timm.layers import PatchEmbed, resample_abs_pos_embed
from timm.models import checkpoint_seq
from timm.models.vision_transformer import VisionTransformer

from realface.errors import RealfaceError
from realface.models.encoders.base import Encoder, EncoderInfo


@dataclass(frozen=True)
class EncoderSpec:
    """Size of a ViT encoder."""

    embed_dim: int  # token width D
    depth: int  # number of transformer blocks
    heads: int  # attention heads per block
    patch: int  # patch side in pixels
    mlp_ratio: float = 4.0  # MLP hidden width / D
    conv_stem: bool = False  # patches embedded by a stack of stride-2 3x3 convolutions instead of one linear map


SPECS: dict[str, EncoderSpec] = {
    "vit_tiny_patch16": EncoderSpec(embed_dim=192, depth=12, heads=3, patch=16),
    "vit_small_patch16": EncoderSpec(embed_dim=384, depth=12, heads=6, patch=16),
    "vit_base_patch16": EncoderSpec(embed_dim=768, depth=12, heads=12, patch=16),
    # a hybrid: ViT-tiny on a convolutional stem ("Early convolutions help transformers see better", Xiao et al. 2021)
    "vit_tiny_convstem16": EncoderSpec(embed_dim=192, depth=12, heads=3, patch=16, conv_stem=True),
}


class ConvStemEmbed(PatchEmbed):
    """timm's PatchEmbed with its one patch-sized convolution replaced by log2(patch) stride-2 3x3 convolutions
    (BatchNorm, ReLU; widths doubling up to D / 2) and a 1x1 projection to D: the same (N, L, D) tokens on the same
    grid, with the local inductive bias and better-behaved optimisation of a convolutional stem."""

    def __init__(self, *args: object, **kw: object) -> None:
        super().__init__(*args, **kw)
        dim, patch = self.proj.out_channels, self.patch_size[0]
        steps = int(math.log2(patch))
        if 2**steps != patch:
            raise RealfaceError(f"a convolutional stem needs a power-of-two patch size, got {patch}")
        layers: list[torch.nn.Module] = []
        channels = 3
        for i in range(steps):
            width = max(16, dim >> (steps - i))
            layers += [torch.nn.Conv2d(channels, width, 3, 2, 1, bias=False), torch.nn.BatchNorm2d(width), torch.nn.ReLU(inplace=True)]
            channels = width
        layers.append(torch.nn.Conv2d(channels, dim, 1))
        self.proj = torch.nn.Sequential(*layers)


def sincos_pos_embed_2d(dim: int, grid: tuple[int, int]) -> torch.Tensor:
    """Fixed 2D sine-cosine position embedding: (gh*gw, dim), rows in row-major patch order.

    Half of the channels encode the row, half the column (as in MAE); dim must be a multiple of 4.
    """
    if dim % 4:
        raise ValueError(f"sin-cos embedding needs a width divisible by 4, got {dim}")
    gh, gw = grid
    rows, cols = torch.meshgrid(torch.arange(gh, dtype=torch.float64), torch.arange(gw, dtype=torch.float64), indexing="ij")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim / 4))  # (dim/4,)

    def embed_1d(pos: torch.Tensor) -> torch.Tensor:  # pos: (gh*gw,) -> (gh*gw, dim/2)
        angles = pos[:, None] * omega[None, :]
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    return torch.cat([embed_1d(rows.reshape(-1)), embed_1d(cols.reshape(-1))], dim=1).float()


_SKIP_INIT: contextvars.ContextVar[bool] = contextvars.ContextVar("realface_skip_init", default=False)


@contextmanager
def weights_to_be_loaded() -> Iterator[None]:
    """Encoders built inside skip timm's random weight init (truncated normals over every weight: about a second
    of a CPU's start-up for a ViT-S), for a model whose weights are loaded right after."""
    token = _SKIP_INIT.set(True)
    try:
        yield
    finally:
        _SKIP_INIT.reset(token)


_BLOCK = re.compile(r"(?:^|\.)blocks\.(\d+)\.")
_EMBED = ("patch_embed", "cls_token", "pos_embed", "reg_token")


class ViTEncoder(VisionTransformer, Encoder):
    """timm ViT with a CLS token and learned position embedding, without a classifier head.

    Token order everywhere: CLS first, then patches in row-major order of the (gh, gw) patch grid.
    """

    def __init__(self, spec: EncoderSpec, img_size: int = 224, drop_path: float = 0.0, **kw: object) -> None:
        super().__init__(
            img_size=img_size,
            patch_size=spec.patch,
            embed_dim=spec.embed_dim,
            depth=spec.depth,
            num_heads=spec.heads,
            mlp_ratio=spec.mlp_ratio,
            num_classes=0,
            drop_path_rate=drop_path,
            **({"embed_layer": ConvStemEmbed} if spec.conv_stem else {}),
            **({"weight_init": "skip"} if _SKIP_INIT.get() else {}),
            **kw,
        )
        if self.num_prefix_tokens != 1 or self.no_embed_class or self.dynamic_img_size or self.pos_embed is None:
            raise RealfaceError("realface encoders need exactly one CLS token and a learned absolute pos embed")
        self.spec = spec
        self.stride = spec.patch
        self.out_channels = spec.embed_dim

    @property
    def grid(self) -> tuple[int, int]:
        """Patch grid (gh, gw)."""
        gh, gw = self.patch_embed.grid_size
        return int(gh), int(gw)

    @property
    def patch_size(self) -> int:
        return self.spec.patch

    def forward_map(self, images: torch.Tensor) -> torch.Tensor:
        """images (N, 3, H, W) -> (N, D, gh, gw): the patch tokens after the final norm, as a map."""
        return self.features(images)[0]

    def features(self, images: torch.Tensor, pool: str = "avg") -> tuple[torch.Tensor, torch.Tensor]:
        """(map (N, D, gh, gw), pooled (N, D)): pool "avg" is the mean of the patch tokens, "cls" the CLS token."""
        if pool not in ("avg", "cls"):
            raise RealfaceError(f"pool must be 'avg' or 'cls', got {pool!r}")
        tokens = self.forward_features(images)  # (N, 1 + L, D)
        n, _, d = tokens.shape
        gh, gw = self.grid
        fmap = tokens[:, 1:].transpose(1, 2).reshape(n, d, gh, gw)
        return fmap, (tokens[:, 1:].mean(dim=1) if pool == "avg" else tokens[:, 0])

    @property
    def num_layers(self) -> int:
        """Patch embedding = 0, block i = i + 1, everything above the blocks = depth + 1."""
        return self.spec.depth + 1

    def layer_of(self, param_name: str) -> int:
        match = _BLOCK.search(param_name)
        if match:
            return int(match.group(1)) + 1
        if any(key in param_name for key in _EMBED):
            return 0
        return self.num_layers

    def load_pretrained(self, state: dict[str, torch.Tensor]) -> None:
        """Copy encoder weights in place (strict); the position embedding is resampled if the grid differs."""
        state = dict(state)
        pos, own = state.get("pos_embed"), self.pos_embed
        if pos is not None and pos.shape != own.shape:
            side = int(round((pos.shape[1] - 1) ** 0.5))
            if pos.shape[-1] != own.shape[-1] or side * side != pos.shape[1] - 1:
                raise RealfaceError(f"pos_embed {tuple(pos.shape)} does not fit the encoder's {tuple(own.shape)}")
            state["pos_embed"] = resample_abs_pos_embed(pos, new_size=list(self.grid), old_size=[side, side], num_prefix_tokens=1)
        Encoder.load_pretrained(self, state)

    def _blocks(self, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(self.blocks, x)
        return self.blocks(x)

    def forward_visible(self, x: torch.Tensor, keep_idx: torch.Tensor) -> torch.Tensor:
        """Encode only the kept patches.

        x: (N, 3, H, W) images; keep_idx: (N, L_keep) long indices into the L patches (row-major).
        Returns (N, 1 + L_keep, D): CLS, then the kept patches in keep_idx order, after the final norm.
        """
        if self.spec.conv_stem:  # the stem's receptive field crosses patches: hidden patches must be blank
            x = x * _kept_pixels(keep_idx, self.grid, self.spec.patch).to(x.dtype)
        x = self.patch_embed(x)  # (N, L, D)
        x = x + self.pos_embed[:, 1:, :]  # patch positions, without the CLS slot
        n, _, d = x.shape
        x = torch.gather(x, 1, keep_idx.unsqueeze(-1).expand(-1, -1, d))  # (N, L_keep, D)
        cls = (self.cls_token + self.pos_embed[:, :1, :]).expand(n, -1, -1)  # (N, 1, D)
        x = torch.cat([cls, x], dim=1)  # (N, 1 + L_keep, D)
        x = self.norm_pre(x)
        x = self._blocks(x)
        return self.norm(x)


def _kept_pixels(keep_idx: torch.Tensor, grid: tuple[int, int], patch: int) -> torch.Tensor:
    """keep_idx (N, L_keep) -> (N, 1, H, W) float: 1 on the pixels of kept patches, 0 elsewhere."""
    n = keep_idx.shape[0]
    kept = torch.zeros(n, grid[0] * grid[1], device=keep_idx.device).scatter_(1, keep_idx, 1.0)
    return kept.reshape(n, 1, *grid).repeat_interleave(patch, 2).repeat_interleave(patch, 3)


def encoder_from_spec(spec: EncoderSpec, img_size: int = 224, drop_path: float = 0.0, **kw: object) -> ViTEncoder:
    """A randomly initialised ViT of size `spec` (no download); also for sizes outside the registry (tests).

    The learned position embedding starts from the fixed 2D sin-cos table (MAE's choice), which makes
    small-data pretraining converge faster than a random start.
    """
    if img_size <= 0 or img_size % spec.patch:
        raise RealfaceError(f"img_size {img_size} must be a positive multiple of the patch size {spec.patch}")
    encoder = ViTEncoder(spec, img_size=img_size, drop_path=drop_path, **kw)
    with torch.no_grad():
        encoder.pos_embed[0, 1:].copy_(sincos_pos_embed_2d(spec.embed_dim, encoder.grid))
        encoder.pos_embed[0, :1].zero_()
    return encoder


def _info(spec: EncoderSpec) -> EncoderInfo:
    return EncoderInfo(
        family="vit", stride=spec.patch, channels=spec.embed_dim,
        build=lambda img_size=224, drop_path=0.0, **kw: encoder_from_spec(spec, img_size, drop_path, **kw),
    )  # fmt: skip


VIT_ENCODERS: dict[str, EncoderInfo] = {name: _info(spec) for name, spec in SPECS.items()}


@dataclass(frozen=True)
class LoadReport:
    """What `load_init` did: keys of the encoder not in the file, and keys of the file it ignored."""

    missing: tuple[str, ...]
    unexpected: tuple[str, ...]
    resized_pos_embed: bool


PREFIXES: tuple[str, ...] = ("module.", "encoder.", "model.")


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    if path.suffix in (".pth", ".pt", ".bin"):
        obj = torch.load(path, map_location="cpu", weights_only=True)
        for key in ("model", "state_dict", "module"):  # MAE / Lightning style wrappers
            if isinstance(obj, dict) and isinstance(obj.get(key), dict):
                obj = obj[key]
        if not isinstance(obj, dict):
            raise RealfaceError(f"{path}: expected a state dict, found {type(obj).__name__}")
        return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    raise RealfaceError(f"{path}: unsupported checkpoint type {path.suffix!r}; use .safetensors, .pth or .pt")


def strip_prefixes(state: dict[str, torch.Tensor], prefixes: tuple[str, ...] = PREFIXES) -> dict[str, torch.Tensor]:
    """Remove wrapper prefixes ("module.", "encoder.", "model.") from every key, repeatedly."""
    out = {}
    for key, value in state.items():
        stripped = True
        while stripped:
            stripped = False
            for p in prefixes:
                if key.startswith(p):
                    key, stripped = key[len(p) :], True
        out[key] = value
    return out


def load_init(encoder: ViTEncoder, path: str | Path) -> LoadReport:
    """Load encoder weights from a local timm/MAE checkpoint file (in place; nothing is downloaded).

    Accepts .safetensors, or .pth/.pt read with `torch.load(weights_only=True)` (a "model"/"state_dict"
    entry is unwrapped). Wrapper prefixes are stripped; the position embedding is resampled (bicubic)
    when the file's patch grid differs from the encoder's. Keys that are not the encoder's (decoder,
    head) are reported as unexpected; other shape mismatches raise RealfaceError.
    """
    path = Path(path)
    if not path.is_file():
        raise RealfaceError(f"init checkpoint not found: {path}")
    state = strip_prefixes(_read_state_dict(path))
    own = encoder.state_dict()
    resized = False
    pos = state.get("pos_embed")
    if pos is not None and pos.shape != own["pos_embed"].shape:
        if pos.ndim != 3 or pos.shape[-1] != own["pos_embed"].shape[-1]:
            raise RealfaceError(
                f"{path}: pos_embed has shape {tuple(pos.shape)}, the encoder expects {tuple(own['pos_embed'].shape)} "
                "(different model size?)"
            )
        n_tokens = pos.shape[1]
        side = math.isqrt(n_tokens)
        prefix = n_tokens - side * side
        if prefix not in (0, 1):
            raise RealfaceError(f"{path}: cannot infer the square patch grid of pos_embed with {n_tokens} tokens")
        pos = resample_abs_pos_embed(pos, new_size=list(encoder.grid), old_size=[side, side], num_prefix_tokens=prefix)
        if prefix == 0:  # the file had no CLS position: keep ours
            pos = torch.cat([own["pos_embed"][:, :1].to(pos.dtype), pos], dim=1)
        state["pos_embed"] = pos
        resized = True
    usable = {k: v for k, v in state.items() if k in own}
    for key, value in usable.items():
        if value.shape != own[key].shape:
            raise RealfaceError(
                f"{path}: {key} has shape {tuple(value.shape)}, the encoder expects {tuple(own[key].shape)} "
                "(different model size or patch size?)"
            )
    result = encoder.load_state_dict(usable, strict=False)
    unexpected = tuple(sorted(k for k in state if k not in own))
    return LoadReport(missing=tuple(sorted(result.missing_keys)), unexpected=unexpected, resized_pos_embed=resized)
