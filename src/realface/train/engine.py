"""The training loop shared by pretraining and fine-tuning.

`fit` takes explicit objects: a model, a dataset, a `Task` that knows how to turn a batch into a loss and
how to score an epoch, a `TrainConfig`, the optimizer (`build_optimizer`: AdamW, or SGD with Nesterov momentum,
which BatchNorm CNNs trained from scratch often prefer), an optional sampler (default: shuffled, split over
processes; `realface.data.labelled.PairedSampler` puts each fake next to its real), and the run folder. It handles
the rest once for every command: DDP under torchrun, the warmup + cosine schedule, gradient accumulation and
clipping, bf16 autocast, an optional moving average of the weights (`ema`), a progress bar, a CSV log, and a
checkpoint every epoch (`last` and `best`) from which
`resume=True` continues exactly: the data order, masks and augmentations of an epoch are functions of
(seed, epoch, sample index), and the torch RNG is reseeded from (seed, epoch, rank) at each epoch start.
"""

from __future__ import annotations

import copy
import csv
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm import tqdm

from realface.errors import RealfaceError
from realface.train import checkpoint as ckpt
from realface.train.distributed import DistInfo, all_reduce_mean, barrier
from realface.train.schedule import cosine_lr, scaled_lr, set_lr

PRECISIONS = ("auto", "bf16", "fp32")
OPTIMIZERS = ("adamw", "sgd")


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 10  # passes over the training set
    batch_size: int = 64  # global batch per optimizer step, summed over processes and accumulation steps
    base_lr: float = 1.5e-4  # lr for a batch of 256; the actual lr is base_lr * batch_size / 256
    min_lr: float = 1e-6  # floor of the cosine schedule
    warmup_epochs: float = 1.0  # linear warmup length, in epochs (fractions allowed)
    weight_decay: float = 0.05  # weight decay (not on biases, norms, tokens); decoupled for AdamW
    betas: tuple[float, float] = (0.9, 0.95)  # AdamW betas (SGD: betas[0] is the Nesterov momentum)
    optimizer: str = "adamw"  # "adamw" or "sgd" (Nesterov momentum)
    accum_steps: int = 1  # micro-batches accumulated per optimizer step
    clip_grad: float = 1.0  # max global grad norm; 0 disables clipping
    precision: str = "auto"  # "bf16" autocast, "fp32", or "auto" (bf16 on a GPU that supports it)
    seed: int = 0  # seeds data order, masks, augmentations and init
    workers: int = 2  # DataLoader worker processes per training process (0 = load in the main process)
    tensorboard: bool = False  # also log to RUN/tensorboard (needs the `tensorboard` package)
    ema: float = 0.0  # decay of a moving average of the weights that is validated and kept as `best` (0 = off)

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise RealfaceError(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1 or self.accum_steps < 1:
            raise RealfaceError("batch size and accumulation steps must be >= 1")
        if self.batch_size % self.accum_steps:
            raise RealfaceError(f"batch size {self.batch_size} is not a multiple of accum steps {self.accum_steps}")
        if self.precision not in PRECISIONS:
            raise RealfaceError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.optimizer not in OPTIMIZERS:
            raise RealfaceError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.base_lr <= 0 or self.warmup_epochs < 0 or self.workers < 0:
            raise RealfaceError("base lr must be > 0, warmup epochs and workers >= 0")
        if not 0 <= self.ema < 1:
            raise RealfaceError(f"ema decay must be in [0, 1), got {self.ema}")

    def micro_batch(self, world_size: int) -> int:
        """Samples per process per forward pass."""
        per = self.batch_size // self.accum_steps
        if per % world_size:
            raise RealfaceError(
                f"batch size {self.batch_size} / accum {self.accum_steps} does not split over {world_size} processes"
            )
        return per // world_size

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        data = dict(data)
        if "betas" in data:
            data["betas"] = tuple(data["betas"])
        return cls(**data)


class Task(Protocol):
    """What a command plugs into `fit`."""

    selection: tuple[str, str]  # (metric name, "min" | "max") that picks the best checkpoint

    def loss(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The batch's mean loss and its named parts (detached scalars) for logging."""

    def after_step(self, model: nn.Module, step: int, total_steps: int) -> None:
        """Called after each optimizer step on the unwrapped model (e.g. EMA teacher update)."""

    def end_of_epoch(self, model: nn.Module, epoch: int, run_dir: Path) -> dict[str, float]:
        """Validation metrics and pictures for the epoch, on the main process; may return {}."""


@dataclass
class History:
    epochs: list[dict[str, float]] = field(default_factory=list)  # one row per epoch: train means + metrics


def open_run(out: Path, resume: bool, train_cfg: TrainConfig) -> tuple[dict[str, Any] | None, TrainConfig]:
    """Start or continue a run folder.

    resume: (the run's saved config.json, its saved training settings with `train_cfg.epochs` as the new
    epoch count and `train_cfg.tensorboard`). Otherwise (None, train_cfg), after checking that `out` holds no run yet.
    """
    out = Path(out)
    if resume:
        saved = ckpt.read_json(out / ckpt.CONFIG)
        # the saved hyperparameters, with the new epoch count and this call's choice of TensorBoard logging
        train = {**saved["train"], "epochs": train_cfg.epochs, "tensorboard": train_cfg.tensorboard}
        return saved, TrainConfig.from_dict(train)
    if (out / "last").exists():
        raise RealfaceError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
    return None, train_cfg


def build_optimizer(param_groups: list[dict], cfg: TrainConfig) -> torch.optim.Optimizer:
    """The optimizer of `cfg` over `param_groups` (see `schedule.param_groups`; each may carry `lr_scale`). Its lr
    is set by the schedule at every step."""
    lr = scaled_lr(cfg.base_lr, cfg.batch_size)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(param_groups, lr=lr, momentum=cfg.betas[0], nesterov=True)
    return torch.optim.AdamW(param_groups, lr=lr, betas=cfg.betas, fused=True)  # fused: 5x faster step on CPU


def use_bf16(precision: str, device: torch.device) -> bool:
    if precision == "bf16":
        return True
    if precision == "auto":
        return device.type == "cuda" and torch.cuda.is_bf16_supported()
    return False


class WeightAverage:
    """An exponential moving average of a model's weights and buffers (BatchNorm's running statistics included),
    updated after every optimizer step, as timm trains its CNNs from scratch (MobileNetV3, EfficientNet): the
    average of the last few hundred steps' weights, an ensemble that costs one copy of the model.

    The decay ramps up as min(decay, (1 + step) / (10 + step)), so early steps are not averaged with random weights.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        keep = min(self.decay, (1 + step) / (10 + step))
        for mine, theirs in zip(self.model.state_dict().values(), model.state_dict().values(), strict=True):
            if mine.dtype.is_floating_point:
                mine.lerp_(theirs, 1.0 - keep)
            else:  # step counters
                mine.copy_(theirs)


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """The torch seed of one process in one epoch (drop path and anything else drawn from the global RNG)."""
    return (seed * 1_000_003 + epoch * 1009 + rank) % (2**63)


def _move(batch: Any, device: torch.device, layout: torch.memory_format = torch.contiguous_format) -> Any:
    """Tensors of `batch` (nested in dicts, lists, tuples) onto `device`; image batches (4-d) in `layout`."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True, memory_format=layout if batch.dim() == 4 else torch.preserve_format)
    if isinstance(batch, dict):
        return {k: _move(v, device, layout) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_move(v, device, layout) for v in batch)
    return batch


class _CsvLog:
    """Append-only CSV of per-step numbers; on resume, rows after the resumed step are dropped."""

    def __init__(self, path: Path, resume_step: int | None) -> None:
        self.path = path
        self.fields: list[str] | None = None
        if resume_step is not None and path.exists():
            with path.open() as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= resume_step]
            if rows:
                self.fields = list(rows[0].keys())
                with path.open("w", newline="") as f:
                    writer = csv.DictWriter(f, self.fields)
                    writer.writeheader()
                    writer.writerows(rows)
        elif path.exists():
            path.unlink()

    def write(self, row: dict[str, float]) -> None:
        new = self.fields is None
        if new:
            self.fields = list(row.keys())
        with self.path.open("a", newline="") as f:
            writer = csv.DictWriter(f, self.fields, extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow(row)


class _TensorBoardLog:
    """The same numbers as event files for `tensorboard --logdir RUN/tensorboard`: every per-step column of
    log.csv, and each epoch's summary (e.g. val_auc) at the epoch's last step."""

    def __init__(self, path: Path, resume_step: int | None) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise RealfaceError("--tensorboard needs the tensorboard package: pip install tensorboard") from None
        # purge_step: a resumed run hides what an interrupted one logged after the step it resumes from
        self.writer = SummaryWriter(str(path), purge_step=None if resume_step is None else resume_step + 1)

    def write(self, row: dict[str, float], prefix: str = "train/") -> None:
        step = int(row["step"])
        for key, value in row.items():
            if key not in ("epoch", "step"):
                self.writer.add_scalar(prefix + key, float(value), step)

    def flush(self) -> None:
        self.writer.flush()  # otherwise every 2 minutes (SummaryWriter's default)

    def close(self) -> None:
        self.writer.close()


def fit(
    model: nn.Module,
    train_set: Dataset,
    task: Task,
    cfg: TrainConfig,
    run_dir: Path,
    dist_info: DistInfo,
    optimizer: torch.optim.Optimizer,
    run_config: dict[str, Any],
    *,
    sampler: Any = None,
    resume: bool = False,
    progress: bool = True,
    max_steps_per_epoch: int | None = None,
    layout: torch.memory_format = torch.contiguous_format,
) -> History:
    """Train `model` on `train_set` and checkpoint into `run_dir` every epoch.

    optimizer: over the model's parameters (`build_optimizer`); its groups may carry `lr_scale`.
    sampler: this process's indices of `train_set` for an epoch, with `set_epoch(epoch)` and `len()`; default a
    shuffled `DistributedSampler` seeded with `cfg.seed`.
    run_config: the full JSON configuration written to RUN/config.json (model, data, preprocessing, training), with
    the `layout` added.
    The dataset must expose `set_epoch(epoch)` so per-sample randomness is a function of (seed, epoch, index).
    layout: the memory format of the model's weights and of image batches; `torch.channels_last` for CNNs (oneDNN's
    preferred layout: fine-tuning ResNet-18 at 96 px ran at 36.9 faces/s against 29.0 here, loader included).
    Checkpoints are written contiguous.
    With `cfg.ema`, the epoch's validation, the selection and `best` are of the weights' moving average
    (`WeightAverage`); `last` holds the trained weights, and the average travels in its training state.
    """
    run_dir = Path(run_dir)
    device = dist_info.device
    model.to(device, memory_format=layout)
    micro = cfg.micro_batch(dist_info.world_size)
    if sampler is None:
        sampler = DistributedSampler(
            train_set, num_replicas=dist_info.world_size, rank=dist_info.rank, shuffle=True, seed=cfg.seed, drop_last=True
        )
    steps_per_epoch = len(sampler) // (micro * cfg.accum_steps)
    if max_steps_per_epoch is not None:
        steps_per_epoch = min(steps_per_epoch, max_steps_per_epoch)
    if steps_per_epoch < 1:
        raise RealfaceError(
            f"{len(train_set)} training samples are fewer than one batch of {cfg.batch_size}; lower --batch-size"
        )
    total_steps = steps_per_epoch * cfg.epochs
    warmup_steps = int(round(cfg.warmup_epochs * steps_per_epoch))
    lr = scaled_lr(cfg.base_lr, cfg.batch_size)
    bf16 = use_bf16(cfg.precision, device)

    start_epoch, best_value, history, state = 0, None, History(), {}
    if resume:
        last = run_dir / "last"
        state = ckpt.load_train_state(last)
        meta = ckpt.read_json(last / ckpt.META)
        model.load_state_dict(ckpt.load_weights(last / ckpt.WEIGHTS))
        optimizer.load_state_dict(state["optimizer"])
        start_epoch = int(meta["epoch"]) + 1
        best_value = meta.get("best_value")
        history.epochs = list(meta.get("history", []))
        if start_epoch >= cfg.epochs:
            raise RealfaceError(f"{run_dir} already finished its {cfg.epochs} epochs; raise --epochs to go on")
    elif dist_info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        # The memory layout sets the training rate (benchmarks/ablation_runs.py reads it to price a run's minutes).
        layout_name = "channels_last" if layout == torch.channels_last else "contiguous"
        ckpt.write_json(run_dir / ckpt.CONFIG, {**run_config, "layout": layout_name})
    average = WeightAverage(model, cfg.ema) if cfg.ema else None
    if average is not None and resume:
        if "ema" not in state:
            raise RealfaceError(f"{run_dir}'s training state holds no weight average to continue (ema {cfg.ema})")
        average.model.load_state_dict(state["ema"])

    wrapped: nn.Module = model
    if dist_info.distributed:
        wrapped = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    resume_step = start_epoch * steps_per_epoch if resume else None
    log = _CsvLog(run_dir / "log.csv", resume_step=resume_step) if dist_info.is_main else None
    board = _TensorBoardLog(run_dir / "tensorboard", resume_step) if dist_info.is_main and cfg.tensorboard else None
    sel_key, sel_mode = task.selection

    for epoch in range(start_epoch, cfg.epochs):
        torch.manual_seed(epoch_seed(cfg.seed, epoch, dist_info.rank))
        sampler.set_epoch(epoch)
        train_set.set_epoch(epoch)  # type: ignore[attr-defined]
        loader = DataLoader(
            train_set,
            batch_size=micro,
            sampler=sampler,
            num_workers=cfg.workers,
            pin_memory=device.type == "cuda",
            drop_last=True,
        )
        wrapped.train()
        sums: dict[str, float] = {}
        bar = tqdm(
            total=steps_per_epoch,
            desc=f"epoch {epoch + 1}/{cfg.epochs}",
            disable=not (progress and dist_info.is_main),
            dynamic_ncols=True,
        )
        it = iter(loader)
        t0 = time.perf_counter()
        for i in range(steps_per_epoch):
            step = epoch * steps_per_epoch + i
            set_lr(optimizer, cosine_lr(step, total_steps, warmup_steps, lr, cfg.min_lr))
            parts_acc: dict[str, torch.Tensor] = {}
            loss_acc = torch.zeros((), device=device)
            for micro_i in range(cfg.accum_steps):
                batch = _move(next(it), device, layout)
                sync = micro_i == cfg.accum_steps - 1 or not dist_info.distributed
                ctx = wrapped.no_sync() if not sync else nullcontext()
                with ctx, torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                    loss, parts = task.loss(wrapped, batch)
                    if not torch.isfinite(loss):
                        raise RealfaceError(f"loss became {loss.item()} at step {step}; lower the learning rate")
                    (loss / cfg.accum_steps).backward()
                loss_acc += loss.detach() / cfg.accum_steps
                for k, v in parts.items():
                    parts_acc[k] = parts_acc.get(k, 0) + v.detach().float() / cfg.accum_steps
            if cfg.clip_grad > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            task.after_step(model, step, total_steps)
            if average is not None:
                average.update(model, step)

            row = {"loss": float(all_reduce_mean(loss_acc))}
            row.update({k: float(all_reduce_mean(v)) for k, v in parts_acc.items()})
            for k, v in row.items():
                sums[k] = sums.get(k, 0.0) + v
            elapsed = time.perf_counter() - t0
            ips = (i + 1) * cfg.batch_size / max(elapsed, 1e-9)
            if log is not None:
                log.write({"epoch": epoch, "step": step + 1, "lr": optimizer.param_groups[0]["lr"], **row, "images_per_s": ips})
            if board is not None:
                board.write({"step": step + 1, "lr": optimizer.param_groups[0]["lr"], **row, "images_per_s": ips})
            bar.set_postfix(loss=f"{row['loss']:.4f}", img_s=f"{ips:.1f}")
            bar.update(1)
        bar.close()

        summary = {f"train_{k}": v / steps_per_epoch for k, v in sums.items()}
        summary["epoch"] = epoch
        kept = model if average is None else average.model  # what is validated and kept as `best`
        if dist_info.is_main:
            summary.update(task.end_of_epoch(kept, epoch, run_dir))
            history.epochs.append(summary)
            if board is not None:
                board.write({**summary, "step": (epoch + 1) * steps_per_epoch}, prefix="epoch/")
                board.flush()
            value = summary.get(sel_key)
            if value is None:
                raise RealfaceError(f"selection metric {sel_key!r} missing from epoch summary {sorted(summary)}")
            is_best = best_value is None or (value < best_value if sel_mode == "min" else value > best_value)
            if is_best:
                best_value = value
            meta = {
                "epoch": epoch,
                "step": (epoch + 1) * steps_per_epoch,
                "selection": {"metric": sel_key, "mode": sel_mode},
                "best_value": best_value,
                "history": history.epochs,
            }
            state = {"optimizer": optimizer.state_dict(), "rng": ckpt.rng_state()}
            if average is not None:
                state["ema"] = average.model.state_dict()
            ckpt.save_checkpoint(run_dir, "last", model.state_dict(), meta, state)
            if is_best:
                ckpt.save_checkpoint(run_dir, "best", kept.state_dict(), {**meta, "best_epoch": epoch})
        barrier()
    if board is not None:
        board.close()
    return history

