"""`realface pretrain`: learn what real faces look like (FSFM's 3C objectives on an MAE).

The pieces are elsewhere and composed here: face crops and their region maps (`data.faceset`), masking
strategies and the pretrainer (`models`), the loop (`train.engine`). What this module adds is the glue:
reading the inputs, sampling masks per face, the picture grid of each epoch, and the run configuration.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from realface.data.balance import GroupBalancedSampler, balance_record, group_keys
from realface.data.faceset import CropCache, Preprocessing, PretrainFaces
from realface.errors import RealfaceError
from realface.eval.groups import Grouping
from realface.faces.align import CropSettings
from realface.faces.manifest import crop_settings_of
from realface.faces.regions import patch_region_fractions
from realface.models.encoders import encoder_info
from realface.models.masking import sample_masks
from realface.models.pretrainer import ModelConfig, Pretrainer, build_pretrainer
from realface.models.encoders.vit import ViTEncoder, load_init
from realface.train.distributed import init_distributed, shutdown_distributed
from realface.train.engine import History, TrainConfig, build_optimizer, fit, open_run
from realface.train.schedule import param_groups

GRID_FACES = 8  # faces shown in each epoch's picture grid


@dataclass(frozen=True)
class FaceMasker:
    """Per-sample mask for `PretrainFaces`: the configured strategy on the face's region fractions.

    Returns mask (L,) bool (True = masked) and region_mask (L,) bool (masked patches of the region chosen to
    be masked whole; all False for strategies without one or faces without landmarks).
    """

    strategy: str
    ratio: float
    patch: int
    grid: tuple[int, int]

    def __call__(self, labels: np.ndarray | None, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        fractions = None
        if labels is not None:
            fractions = patch_region_fractions(labels, self.patch)[None]  # (1, gh, gw, R)
        generator = torch.Generator().manual_seed(int(rng.integers(0, 2**62)))
        batch = sample_masks(self.strategy, 1, self.grid, self.ratio, generator, fractions)
        return batch.mask[0].numpy(), batch.region_mask[0].numpy()


def load_face_records(inputs: list[Path], limit: int | None = None) -> list:
    """Face records from manifests written by `realface preprocess`, their folders, or plain crop folders."""
    from realface.faces.manifest import read_face_manifest

    records = []
    for path in inputs:
        records.extend(read_face_manifest(Path(path)))
    if not records:
        raise RealfaceError(f"no face crops found in {', '.join(map(str, inputs))}")
    return records[:limit] if limit else records


def save_sample_grid(model: Pretrainer, batch: dict[str, torch.Tensor], pre: Preprocessing, path: Path) -> None:
    """A PNG with one column per face and rows: input / masked input / reconstruction / reconstruction + visible."""
    import cv2

    model.eval()
    device = next(model.parameters()).device
    imgs, mask = batch["image"].to(device), batch["mask"].to(device)
    with torch.no_grad():
        rec_only = model.mae.reconstruct(imgs, mask, paste_visible=False)
        rec = model.mae.reconstruct(imgs, mask, paste_visible=True)
    p = model.mae.cell
    gh, gw = model.grid
    hidden = mask.view(-1, 1, gh, 1, gw, 1).expand(-1, 1, gh, p, gw, p).reshape(imgs.shape[0], 1, gh * p, gw * p)
    masked = imgs.masked_fill(hidden, float("nan"))
    mean = torch.tensor(pre.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(pre.std, device=device).view(1, 3, 1, 1)
    rows = []
    for row in (imgs, masked, rec_only, rec):
        pix = (row.float() * std + mean).nan_to_num(0.5).clamp(0, 1)  # masked patches shown grey
        rows.append(torch.cat(list(pix), dim=2))  # (3, H, N*W)
    grid = (torch.cat(rows, dim=1).permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(grid, cv2.COLOR_RGB2BGR))
    model.train()


class PretrainTask:
    """Plugs the pretrainer into `fit`: loss = 3C objective; best checkpoint = lowest mean training loss."""

    selection = ("train_loss", "min")

    def __init__(self, grid_set: PretrainFaces, pre: Preprocessing) -> None:
        self.grid_set = grid_set
        self.pre = pre

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        out = model(batch["image"], batch["mask"], batch["region_mask"])
        parts = {k: v for k, v in out.parts.items() if k != "total"}
        return out.loss, parts

    def after_step(self, model: nn.Module, step: int, total_steps: int) -> None:
        model.after_step(step, total_steps)

    def end_of_epoch(self, model: nn.Module, epoch: int, run_dir: Path) -> dict[str, float]:
        n = min(GRID_FACES, len(self.grid_set))
        batch = {k: torch.stack([self.grid_set[i][k] for i in range(n)]) for k in ("image", "mask")}
        save_sample_grid(model, batch, self.pre, Path(run_dir) / "samples" / f"epoch_{epoch + 1:03d}.png")
        return {}


def pretrain(
    data: list[Path],
    out: Path,
    *,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    init: Path | None = None,
    balance: Grouping | None = None,
    cache_crops: bool = True,
    resume: bool = False,
    device: str = "auto",
    progress: bool = True,
    limit: int | None = None,
    max_steps_per_epoch: int | None = None,
) -> History:
    """Pretrain an encoder on real face crops and write checkpoints to `out` (see `train.checkpoint`).

    data: manifests or folders written by `realface preprocess` (crops + landmarks), or plain folders of
    face crops (then region masking falls back to random). The run's `config.json` records the model, the
    training settings and the preprocessing the weights expect. cache_crops: decode each crop once per run
    (`CropCache`, a file in `out` removed at the end) instead of once per epoch. balance: draw each epoch so
    every group of people in these manifest columns has the same share (`realface.data.balance`).
    """
    out = Path(out)
    saved, train_cfg = open_run(out, resume, train_cfg)
    if saved is not None:
        model_cfg = ModelConfig.from_dict(saved["model"])

    torch.manual_seed(train_cfg.seed)
    dist_info = init_distributed(device)
    cache = None
    try:
        records = load_face_records(data, limit)
        if saved is not None:
            pre = Preprocessing.from_dict(saved["preprocessing"])
        else:  # crops made one way, recorded with the weights (refuses a mix)
            pre = Preprocessing(img_size=model_cfg.img_size, crop=crop_settings_of(records) or CropSettings())
        model = build_pretrainer(model_cfg)
        if init is not None and not resume:
            if not isinstance(model.encoder, ViTEncoder):
                raise RealfaceError("--init loads ViT checkpoints; a CNN encoder starts from random weights")
            report = load_init(model.encoder, init)
            if dist_info.is_main:
                print(report)
        masker = FaceMasker(model_cfg.mask, model_cfg.mask_ratio, model.mae.cell, model.grid)
        if cache_crops:
            out.mkdir(parents=True, exist_ok=True)
            cache = CropCache(out / f".crops-{dist_info.rank}.u8", records, pre.crop.size)
        train_set = PretrainFaces(records, pre, masker, seed=train_cfg.seed, augment=True, cache=cache)
        grid_set = PretrainFaces(records[:GRID_FACES], pre, masker, seed=train_cfg.seed + 1, augment=False)
        run_config = {
            "kind": "pretrain",
            "model": model_cfg.to_dict(),
            "train": train_cfg.to_dict(),
            "preprocessing": pre.to_dict(),
            "data": [str(p) for p in data],
            "num_faces": len(records),
            "world_size": dist_info.world_size,
        }
        sampler = None
        if balance is not None:
            sampler = GroupBalancedSampler(group_keys([r.extra for r in records], balance), train_cfg.seed,
                                           dist_info.world_size, dist_info.rank)  # fmt: skip
            run_config["balance_groups"] = balance_record(balance, sampler)
        optimizer = build_optimizer(param_groups(model, train_cfg.weight_decay), train_cfg)
        return fit(
            model,
            train_set,
            PretrainTask(grid_set, pre),
            train_cfg,
            out,
            dist_info,
            optimizer,
            run_config,
            sampler=sampler,
            resume=resume,
            progress=progress,
            max_steps_per_epoch=max_steps_per_epoch,
            layout=encoder_info(model_cfg.encoder).layout,
        )
    finally:
        if cache is not None:
            cache.close()
        shutdown_distributed()
