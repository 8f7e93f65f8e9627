"""`realface recipe`: the one reproducible chain that makes the default model.

preprocess (landmarks for the crops) -> pretrain on real faces only (UTKFace + DFDC train-split reals) ->
fine-tune on the DFDC train split (+ SBI pseudo-fakes) -> select on the DFDC val split, fit threshold and
confidence band on it -> export fp16 weights with a model card -> measure the exported weights on DFDC val
and on the FF++ sample videos.

Every stage resumes: preprocessing skips what its journal holds, training continues from its last epoch,
and a finished stage is not run again. Presets size the chain: `tiny` (tests, a minute), `cpu` (1.5 to
2.5 hours on 2 cores: 1 h 27 min timed), `gpu` (two teachers and their distilled student: minutes on one GPU).
"""

from __future__ import annotations

import csv
import json
import os
import platform
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from realface.data.sbi import SBIConfig
from realface.errors import RealfaceError
from realface.eval.thresholds import BAND_ACCURACY


@dataclass(frozen=True)
class RecipeConfig:
    """Sizes of every stage of the chain."""

    crop_size: int = 224  # side of the aligned crops written by preprocess (the model resizes them to img_size)
    img_size: int = 96  # model input side, a multiple of the encoder's stride (96 px: 12 epochs in 128 px's 9)
    encoder: str = "resnet18"  # encoder name (realface.models.encoders.ENCODERS)
    # the UTKFace shards i/n the recipe reads (a third: 7.9k faces each); fairness.py measures on 1/3, which none reads
    utk_shards: tuple[tuple[int, int], ...] = ((0, 3),)
    limit: int | None = None  # at most this many inputs per data set (tiny runs)
    frames: int = 32  # frames per FF++ video when measuring
    mask: str = "crfr-p"  # pretraining masking strategy
    mask_ratio: float = 0.6  # fraction of mask cells hidden (FCMAE's 0.6 for CNNs, MAE's 0.75 for ViTs)
    mask_cell: int = 16  # mask cell side in pixels (a ViT's patch)
    distill_weight: float = 0.1  # self-distillation weight (0 = off)
    decoder_dim: int = 128  # MAE decoder width (a light decoder keeps the masked step cheap on a CPU)
    decoder_depth: int = 2  # MAE decoder blocks (ViT) or conv blocks per level (CNN)
    pretrain_epochs: int = 0  # 0 = no pretraining: the detector starts from random weights
    pretrain_batch: int = 128
    pretrain_blr: float = 1.5e-4
    detector: str = "classifier"  # classifier, rffr or competitive
    drop_path: float = 0.05  # stochastic depth of the fine-tuned encoder
    layer_decay: float = 1.0  # fine-tuning layer-wise lr decay (1 = off; < 1 suits a pretrained encoder)
    rffr_blocks: int = 2  # (rffr) k*k blocks tile the mask grid
    mask_weight: float = 1.0  # (classifier) per-cell forgery-mask loss weight (0 = no cell head)
    finetune_epochs: int = 19  # equal-minute ablation (BENCHMARKS.md): fine-tuning alone beats CNN MIM + fewer epochs
    finetune_batch: int = 64
    finetune_blr: float = 4e-3
    finetune_warmup: float = 0.5  # warmup epochs of fine-tuning
    # SBI pseudo-fakes per real training face (0 = none: at 96 px from random weights the blends are label noise; equal
    # minutes, DFDC val 0.836 with x0.5 -> 0.887 without, BENCHMARKS.md "DFDC fakes alone at equal minutes")
    sbi_ratio: float = 0.0
    # the blend mask shapes SBI draws from (realface.data.sbi.MASK_HULLS): SBI's own three, face-swap-like; "lower" adds
    # reenactment-like blends of the mouth and chin
    sbi_hulls: tuple[str, ...] = SBIConfig.hulls
    labelled_fakes: bool = True  # train on DFDC's labelled fakes too
    paired: bool = True  # batches with every DFDC fake next to its own real (equal minutes: 0.803 -> 0.835)
    affine_prob: float = 0.0  # fine-tuning faces randomly zoomed, tilted and shifted this often (WildAugmentConfig)
    utk_reals: bool = False  # fine-tune on the UTKFace shard's real photos too (all ages; SBI is made from them too)
    utk_every: int = 3  # fine-tuning and polish take every k-th of the shard's photos (pretraining takes them all)
    balance_groups: tuple[str, ...] = ()  # epochs with UTKFace reals drawn balanced over these columns (race, gender, age)
    teachers: int = 0  # first fine-tune this many teachers (seeds 1, 2, ...), then distil their mean into the detector
    teacher_epochs: int | None = None  # each teacher's fine-tuning epochs (None: finetune_epochs)
    teacher_weight: float = 1.0  # weight of the teachers' loss (finetune --teacher-weight)
    teacher_sbi: bool = True  # teachers also score the SBI fakes made from the faces they teach (finetune --no-teacher-sbi)
    sbi_photos: bool = True  # SBI fakes are made from the UTKFace photos too (False: from the DFDC reals only; --sbi-data)
    polish_epochs: int = 2  # then continue the fine-tuned detector this many epochs with the UTKFace shard's reals added
    polish_blr: float = 1e-3  # base learning rate of that continuation (a quarter of fine-tuning's)
    polish_teacher: float = 0.0  # > 0: the polish also learns the fine-tuned detector's own p(fake) on the DFDC faces, at this weight
    polish_sbi_ratio: float | None = None  # SBI pseudo-fakes per real face in the polish (None: sbi_ratio)
    # The operating point, fitted on DFDC val: None = the EER threshold; a fraction f = the threshold that calls the most
    # val fakes "fake" while at most f of the val reals score at or above it (finetune's target_fpr policy). 0.05 is the
    # least strict of 0.10/0.05/0.02/0.01 that met issue 16's targets on UTKFace shard 2/3 (selection photos no stage
    # trains on); README "Fairness": false alarms on photos 3.7% -> 0.7%, confident "fake" on val fakes 63% -> 58%.
    threshold_fpr: float | None = 0.05
    workers: int = 2  # data loader processes (and preprocess workers)
    max_steps_per_epoch: int | None = None  # cap (tiny runs)

    def __post_init__(self) -> None:
        from realface.models.encoders import encoder_info

        encoder_info(self.encoder).check_size(self.img_size)
        if self.crop_size < self.img_size // 2:
            raise RealfaceError("crops must be at least half the model's input side")
        if not self.labelled_fakes and self.sbi_ratio <= 0:
            raise RealfaceError("a detector needs fakes: keep labelled fakes or set an SBI ratio")
        if not 0.0 <= self.affine_prob <= 1.0:
            raise RealfaceError(f"affine_prob is a probability in [0, 1], got {self.affine_prob}")
        if self.utk_every < 1:
            raise RealfaceError("utk_every must be at least 1 (every photo)")
        if self.balance_groups and not (self.utk_reals or self.polish_epochs):
            raise RealfaceError("balance_groups needs utk_reals or polish_epochs: only the UTKFace faces carry group columns")
        if self.teachers < 0 or (self.teacher_epochs is not None and self.teacher_epochs < 1) or self.teacher_weight < 0:
            raise RealfaceError("teachers must be >= 0, teacher_epochs >= 1 and teacher_weight >= 0")
        if self.polish_teacher < 0:
            raise RealfaceError(f"polish_teacher is a loss weight (0 = off), got {self.polish_teacher}")
        if self.sbi_ratio < 0 or (self.polish_sbi_ratio or 0.0) < 0:
            raise RealfaceError("sbi_ratio and polish_sbi_ratio count pseudo-fakes per real face: 0 or more")
        if self.threshold_fpr is not None and not 0.0 < self.threshold_fpr < 1.0:
            raise RealfaceError(f"threshold_fpr is a share of the val reals in (0, 1), or None for the EER point; got {self.threshold_fpr}")
        try:
            self.sbi  # the mask shapes exist
        except ValueError as e:
            raise RealfaceError(f"sbi_hulls: {e}") from None
        if self.balance_groups and self.paired:
            raise RealfaceError("paired and balance_groups each set the fine-tuning order: choose one")

    @property
    def pretrained(self) -> bool:
        return self.pretrain_epochs > 0

    @property
    def sbi(self) -> SBIConfig:
        """How the chain's SBI pseudo-fakes are made."""
        return SBIConfig(hulls=self.sbi_hulls)


PRESETS: dict[str, RecipeConfig] = {
    "tiny": RecipeConfig(
        crop_size=64, img_size=64, utk_shards=((0, 1),), limit=24, frames=2, pretrain_epochs=1, pretrain_batch=8,
        finetune_epochs=1, finetune_batch=8, workers=0, max_steps_per_epoch=2, layer_decay=0.75, polish_epochs=1,
        paired=False,  # 24 DFDC crops hold no fake together with its real
        sbi_ratio=0.5,  # keeps the SBI path of the chain under test
    ),
    # 19 epochs of ResNet-18 at 96 px on DFDC's fakes in paired batches, no SBI (BENCHMARKS.md "DFDC fakes alone at
    # equal minutes": 0.887 on DFDC val), then the polish with all of the shard's photos and SBI x0.5 made from all its
    # reals while the model keeps its own p(fake) on the DFDC faces ("Polishing the SBI-free detector": 0.881, 3.7% of
    # unseen photos called fake). The shipped default's chain since 2026-12-05.
    "cpu": RecipeConfig(utk_every=1, polish_teacher=1.0, polish_sbi_ratio=0.5),
    # The chain that made the default model until 2026-12 (ViT-tiny, DFDC val AUC 0.575), for comparison.
    "cpu-vit": RecipeConfig(
        crop_size=112, img_size=112, encoder="vit_tiny_patch16", mask_ratio=0.75, pretrain_epochs=8, drop_path=0.1,
        layer_decay=0.75, finetune_blr=5e-4, finetune_warmup=1.0, polish_epochs=0, paired=False, finetune_epochs=12,
        sbi_ratio=0.5,
    ),
    # The cpu chain polished with all of the shard's photos, no SBI and no teacher (issue 16): fewer false alarms on
    # ordinary photos (2.5% against 3.7%), lower DFDC val AUC (0.875 against 0.881; README "Fairness").
    "cpu-fair": RecipeConfig(utk_every=1),
    # The cpu chain without the polish: DFDC video frames are its only reals.
    "cpu-dfdc": RecipeConfig(polish_epochs=0),
    # Two teachers, each the cpu chain's fine-tuning, then the detector fine-tuned as their student (BENCHMARKS.md
    # "Distilling two runs into one": with SBI x0.5, 15-epoch teachers and a 12-epoch student, the student scored 0.852
    # against its teachers' 0.836-0.840; without SBI not measured yet), polished as the cpu chain is. On an H200 a
    # 15-epoch fine-tuning took 4.3 minutes, loader-bound at about 1,350 faces/s with 15 loader processes ("On a GPU").
    "gpu": RecipeConfig(teachers=2, utk_every=1, polish_teacher=1.0, polish_sbi_ratio=0.5,
                        workers=max(2, (os.cpu_count() or 3) - 1)),
}  # fmt: skip


PRETRAIN_SETTINGS = ("encoder", "img_size", "mask", "mask_ratio", "mask_cell", "distill_weight", "decoder_dim",
                     "decoder_depth", "pretrain_epochs", "pretrain_batch", "pretrain_blr", "max_steps_per_epoch", "utk_shards")
FINETUNE_SETTINGS = ("detector", "drop_path", "layer_decay", "rffr_blocks", "mask_weight", "finetune_epochs", "finetune_batch",
                     "finetune_blr", "finetune_warmup", "sbi_ratio", "sbi_hulls", "labelled_fakes", "paired", "affine_prob", "utk_reals",
                     "utk_every", "balance_groups", "crop_size", "max_steps_per_epoch", "teacher_weight", "teacher_sbi",
                     "sbi_photos", "utk_shards")
POLISH_WARMUP = 0.2  # warmup epochs of the polish stage
STAGE_FILE = "recipe_stage.json"  # the recipe settings a stage's run was made with
# Settings added after runs began recording theirs, with the value every run recorded before then was made with.
UNRECORDED = {"paired": False, "mask_weight": 0.0, "mask_ratio": 0.75, "mask_cell": 16, "drop_path": 0.1, "finetune_warmup": 1.0,
              "utk_reals": False, "utk_every": 1, "balance_groups": [], "affine_prob": 0.0, "teacher_weight": 1.0,
              "seed": 0, "teachers": [], "utk_shards": [[0, 3]], "sbi_hulls": list(SBIConfig.hulls),
              "teacher_sbi": True, "sbi_photos": True}


def _stage_done(run: Path, epochs: int, settings: dict[str, Any]) -> bool:
    """Whether the run in `run` has finished `epochs`, after recording `settings` there; refuses a run made with
    other recipe settings, which would otherwise be resumed or reused as if it were this one (settings it recorded
    that are not in `settings` do not shape it)."""
    record = run / STAGE_FILE
    if record.is_file():
        before = json.loads(record.read_text())
        before = {**{k: v for k, v in UNRECORDED.items() if k in settings}, **before}
        changed = sorted(k for k in settings if before.get(k) != settings[k])
        if changed:
            raise RealfaceError(
                f"{run} was made with other recipe settings ({', '.join(changed)} differ): "
                "remove it, or give the recipe another --work folder"
            )
    # (a run from before settings were recorded is taken as made with these)
    run.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps(settings, indent=2, default=str))
    meta = run / "last" / "meta.json"
    return meta.is_file() and json.loads(meta.read_text())["epoch"] >= epochs - 1


def _settings(cfg: RecipeConfig, names: tuple[str, ...], **more: Any) -> dict[str, Any]:
    """The settings as their JSON record reads back (tuples as lists, paths as strings)."""
    return json.loads(json.dumps({**{k: getattr(cfg, k) for k in names}, **more}, default=str))


def _write_manifest_subset(manifest: Path, out: Path, keep: Callable[[int, dict[str, str]], bool]) -> Path:
    """The rows (index, row) of a preprocess manifest that `keep` selects, with paths made relative to `out`'s folder
    (outside any preprocess folder, whose manifest*.csv files are all read as one data set)."""
    with manifest.open(newline="") as f:
        reader = csv.DictReader(f)
        rows = [r for i, r in enumerate(reader) if keep(i, r)]
        fields = reader.fieldnames
    rel = manifest.parent.relative_to(out.parent) if manifest.parent.is_relative_to(out.parent) else manifest.parent
    with out.open("w", newline="") as f:
        writer = csv.DictWriter(f, fields)
        writer.writeheader()
        writer.writerows({**r, "path": str(rel / r["path"])} for r in rows)
    return out


def _write_reals_manifest(manifest: Path, out: Path, split: str = "train") -> Path:
    """The real faces of one split of a preprocess manifest."""
    return _write_manifest_subset(manifest, out, lambda _, r: r["label"] == "real" and r.get("split", split) == split)


def _utk_finetune_data(cfg: RecipeConfig, manifests: list[Path]) -> list[Path]:
    """What fine-tuning reads of the preprocessed UTKFace shards whose manifests are `manifests`: their folder (which
    holds the shards the recipe preprocessed), or every `utk_every`-th face of each (sorted by path as preprocess
    writes it, so the sample spreads over ages, genders and races)."""
    if cfg.utk_every == 1:
        return [manifests[0].parent]

    def subset(m: Path) -> Path:  # utkface-every3.csv, or utkface-manifest.shard0of3-every3.csv for several shards
        name = m.parent.name + (f"-{m.stem}" if len(manifests) > 1 else "") + f"-every{cfg.utk_every}.csv"
        return _write_manifest_subset(m, m.parent.with_name(name), lambda i, _: i % cfg.utk_every == 0)

    return [subset(m) for m in manifests]


def _shards_text(cfg: RecipeConfig) -> str:
    """ "UTKFace shard 0/3", "UTKFace shards 0/3 and 2/3"."""
    names = [f"{i}/{n}" for i, n in cfg.utk_shards]
    return f"UTKFace shard {names[0]}" if len(names) == 1 else f"UTKFace shards {', '.join(names[:-1])} and {names[-1]}"


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    text = f"{cpu}, {os.cpu_count()} cores"
    if torch.cuda.is_available():
        text += f", GPU {torch.cuda.get_device_name(0)}"
    return text


def measure_ffpp(model, shared: Path, frames: int) -> list[dict[str, Any]]:
    """Video-level score of each FF++ sample video (not a claim of accuracy: one video per method)."""
    from realface.detect import Scanner

    scanner = Scanner(model, frames=frames)
    rows = []
    with (shared / "ffpp-videos" / "manifest.csv").open(newline="") as f:
        for row in csv.DictReader(f):
            result = scanner.scan(shared / "ffpp-videos" / row["path"])
            rows.append({"video": row["path"], "label": row["label"], "method": row["method"],
                         "p_fake": result.p_fake, "verdict": result.verdict, "status": result.status})  # fmt: skip
    return rows


def ffpp_fakes_above_originals(rows: list[dict[str, Any]]) -> tuple[int, int]:
    """(how many of the scored fakes score above every scored original, how many fakes were scored) of
    `measure_ffpp`'s rows; no fake is above when no original was scored."""
    fakes = [r["p_fake"] for r in rows if r["label"] == "fake" and r["p_fake"] is not None]
    originals = [r["p_fake"] for r in rows if r["label"] == "real" and r["p_fake"] is not None]
    return (sum(f > max(originals) for f in fakes) if originals else 0), len(fakes)


def measure_robustness(bundle, val_records: list, probs, workers: int) -> dict[str, Any]:
    """DFDC val AUC (cluster-bootstrap 95% CI over source videos) as the faces are, re-encoded the same way for reals
    and fakes (0.75x and back, JPEG 75: a detector reading sharpness instead of forgery falls here), and with
    test-time flip averaging. probs: the model's scores of `val_records` as they are."""
    import numpy as np

    from realface.data.augment import reencode
    from realface.data.labelled import DetectionFaces, build_items
    from realface.eval.metrics import bootstrap_ci, roc_auc
    from realface.train.finetune import score_dataset

    items = build_items(val_records)
    labels = np.array([it.label for it in items])
    groups = [r.extra.get("group") or r.source for r in val_records]
    reencoded, _ = score_dataset(bundle.detector, DetectionFaces(items, bundle.pre, degrade=reencode), 64, workers)
    flipped, _ = score_dataset(bundle.detector, DetectionFaces(items, bundle.pre), 64, workers, flip=True)
    rows = {"as stored": probs, "re-encoded (0.75x, JPEG 75)": reencoded, "flip averaging": flipped}
    return {name: {"auc": roc_auc(labels, p), "ci": bootstrap_ci(roc_auc, labels, p, groups, n=500)} for name, p in rows.items()}


def pretrain_stage(cfg: RecipeConfig, data: list[Path], run: Path, *, device: str = "auto", progress: bool = True) -> None:
    """Pretrain on the real faces `data` into `run` with the recipe's settings; resumes, and skips a finished run."""
    from realface.models.pretrainer import ModelConfig
    from realface.train.engine import TrainConfig
    from realface.train.pretrain import pretrain

    if _stage_done(run, cfg.pretrain_epochs, _settings(cfg, PRETRAIN_SETTINGS, data=[str(d) for d in data])):
        return
    pretrain(
        data, run,
        model_cfg=ModelConfig(encoder=cfg.encoder, img_size=cfg.img_size, mask=cfg.mask, mask_ratio=cfg.mask_ratio,
                              mask_cell=cfg.mask_cell, distill_weight=cfg.distill_weight, decoder_dim=cfg.decoder_dim,
                              decoder_depth=cfg.decoder_depth, decoder_heads=4),
        train_cfg=TrainConfig(epochs=cfg.pretrain_epochs, batch_size=cfg.pretrain_batch, base_lr=cfg.pretrain_blr,
                              warmup_epochs=min(1.0, cfg.pretrain_epochs / 10), workers=cfg.workers, seed=0),
        resume=(run / "last").exists(), device=device, progress=progress, max_steps_per_epoch=cfg.max_steps_per_epoch,
    )  # fmt: skip


def finetune_stage(
    cfg: RecipeConfig,
    data: list[Path],
    run: Path,
    pretrained: Path | None,
    *,
    init: Path | None = None,
    teachers: list[Path] = (),
    teacher_data: list[Path] | None = None,
    seed: int = 0,
    device: str = "auto",
    progress: bool = True,
) -> None:
    """Fine-tune a detector on the labelled manifests `data` (DFDC's first, then any UTKFace subsets; val = their
    split=val rows) from the pretraining run `pretrained` (None: random init), or continue the finished fine-tuning
    stage `init`, with the recipe's settings, distilling the finished stages `teachers` if any (on the faces of
    `teacher_data`, None: all); SBI blends of DFDC's reals only unless `cfg.sbi_photos`; resumes, and skips a
    finished run."""
    from realface.data.augment import WildAugmentConfig
    from realface.eval.groups import Grouping
    from realface.models.detectors import DetectorConfig, options_for
    from realface.train.engine import TrainConfig
    from realface.train.finetune import finetune

    # A fine-tuning run depends on its pretraining too: a run remade with other settings must not be reused.
    names = FINETUNE_SETTINGS + (PRETRAIN_SETTINGS if pretrained is not None else ("encoder", "img_size"))
    more: dict[str, Any] = {"data": [str(d) for d in data], "pretrained": pretrained, "seed": seed}
    if init is not None:  # and on the stage it continues
        more["init"] = {"run": str(init), "settings": json.loads((Path(init) / STAGE_FILE).read_text())}
    # and on its teachers (a teacher remade with other settings makes another student)
    more["teachers"] = [{"run": str(t), "settings": json.loads((Path(t) / STAGE_FILE).read_text())} for t in teachers]
    if teacher_data is not None:
        more["teacher_data"] = [str(d) for d in teacher_data]
    if not cfg.sbi_ratio:  # no blends: how they would be made does not shape the run
        names = tuple(n for n in names if n not in ("sbi_hulls", "teacher_sbi", "sbi_photos"))
    if _stage_done(run, cfg.finetune_epochs, _settings(cfg, names, **more)):
        return
    policy, params = threshold_rule(cfg)  # the run's decision.json; the export refits the shipped rule the same way
    finetune(
        data, run,
        detector_cfg=DetectorConfig(name=cfg.detector, encoder=cfg.encoder, img_size=cfg.img_size, drop_path=cfg.drop_path,
                                    layer_decay=cfg.layer_decay,
                                    options=options_for(cfg.detector, {"blocks": cfg.rffr_blocks, "mae_mask_cell": cfg.mask_cell,
                                                                       "mask_weight": cfg.mask_weight}, strict=False)),
        train_cfg=TrainConfig(epochs=cfg.finetune_epochs, batch_size=cfg.finetune_batch, base_lr=cfg.finetune_blr,
                              warmup_epochs=min(cfg.finetune_warmup, cfg.finetune_epochs / 5), workers=cfg.workers, seed=seed),
        pretrained=pretrained, init=init, teachers=list(teachers), teacher_weight=cfg.teacher_weight, teacher_data=teacher_data, teacher_sbi=cfg.teacher_sbi, sbi_data=None if cfg.sbi_photos else data[:1], labelled_fakes=cfg.labelled_fakes, sbi_ratio=cfg.sbi_ratio, sbi=cfg.sbi, paired=cfg.paired, crop_size=cfg.crop_size,
        augment=WildAugmentConfig(affine_prob=cfg.affine_prob),
        balance=Grouping(columns=cfg.balance_groups) if cfg.balance_groups else None,
        resume=(run / "last").exists(), device=device, progress=progress, max_steps_per_epoch=cfg.max_steps_per_epoch,
        threshold_policy=policy, threshold_params=params,
    )  # fmt: skip


def threshold_rule(cfg: RecipeConfig) -> tuple[str, dict[str, float]]:
    """The threshold policy and its parameters (realface.eval.thresholds) of the recipe's operating point."""
    return ("eer", {}) if cfg.threshold_fpr is None else ("target_fpr", {"fpr": cfg.threshold_fpr})


def polish_sbi(cfg: RecipeConfig) -> float:
    """SBI pseudo-fakes per real face in the polish stage."""
    return cfg.sbi_ratio if cfg.polish_sbi_ratio is None else cfg.polish_sbi_ratio


def polish_stage(
    cfg: RecipeConfig, dfdc: Path, utk: list[Path], run: Path, start: Path, *, device: str = "auto", progress: bool = True
) -> None:
    """Continue the finished fine-tuning stage `start` for `cfg.polish_epochs` at `cfg.polish_blr` on the DFDC
    manifest and the UTKFace shard's reals (SBI made from both at `polish_sbi`, if any), balanced over
    `cfg.balance_groups` if any; with `cfg.polish_teacher` > 0 it also learns `start`'s own p(fake) on the DFDC faces
    (at that weight), so that learning the photos costs less of what it knew there ("learning without forgetting").

    Why (issue 16, README "Fairness"): a detector that learned real faces from DFDC's video frames alone calls 45% of
    ordinary photos fake. Two epochs that also show it UTKFace's photos of every age and origin as real, with the same
    decision rule for everyone, bring that to 3.2% on UTKFace photos it never saw with a third of the shard (the
    default; DFDC val AUC 0.835 -> 0.822) and to 1.2% with all of it (`cpu-fair`, measured without paired batches:
    AUC 0.803 -> 0.775).
    """
    polish = replace(cfg, finetune_epochs=cfg.polish_epochs, finetune_blr=cfg.polish_blr, finetune_warmup=POLISH_WARMUP,
                     utk_reals=True, teacher_weight=cfg.polish_teacher or cfg.teacher_weight, sbi_ratio=polish_sbi(cfg))  # fmt: skip
    teacher = {"teachers": [start], "teacher_data": [dfdc]} if cfg.polish_teacher else {}
    finetune_stage(polish, [dfdc, *utk], run, None, init=start, **teacher, device=device, progress=progress)


def run_recipe(
    shared: Path,
    work: Path,
    cfg: RecipeConfig,
    *,
    export_to: Path,
    preset: str = "custom",
    device: str = "auto",
    progress: bool = True,
) -> dict[str, Any]:
    """Run (or resume) the whole chain in `work` and export the model to `export_to`; returns the model card."""
    from realface.faces.pipeline import PipelineConfig
    from realface.faces.preprocess import preprocess

    shared, work = Path(shared), Path(work)
    for need in ("dfdc/manifest.csv", "utkface/manifest.csv", "ffpp-videos/manifest.csv"):
        if not (shared / need).is_file():
            raise RealfaceError(f"{shared / need} not found: point --shared at the shared data folder")
    work.mkdir(parents=True, exist_ok=True)
    # Wall time per stage, kept across resumed runs: a resumed stage adds its new time to what earlier runs of
    # it took (a finished stage adds ~0); the final stage, redone on every run, keeps its latest time.
    times_file = work / "stage_times.json"
    times: dict[str, float] = json.loads(times_file.read_text()) if times_file.is_file() else {}

    @contextmanager
    def stage(name: str, accumulate: bool = True) -> Iterator[None]:
        if progress:
            print(f"== {name}", flush=True)
        start = time.perf_counter()
        yield
        times[name] = (times.get(name, 0.0) if accumulate else 0.0) + time.perf_counter() - start
        times_file.write_text(json.dumps(times, indent=2))

    faces = work / "faces"
    pipe = PipelineConfig(crop_size=cfg.crop_size, assume_cropped=True)
    with stage("preprocess"):
        manifests = {}
        for name, shard in (("dfdc", (0, 1)), *(("utkface", s) for s in cfg.utk_shards)):
            report = preprocess(
                [shared / name / "manifest.csv"], faces / name, config=pipe, workers=max(1, cfg.workers),
                shard=shard, limit=cfg.limit, progress=progress,
            )  # fmt: skip
            if not report.ok:
                raise RealfaceError(f"preprocessing {name} found no face")
            manifests.setdefault(name, []).append(report.manifest)
        dfdc = manifests["dfdc"][0]
        reals = _write_reals_manifest(dfdc, faces / "dfdc-train-real.csv")
        utk = _utk_finetune_data(cfg, manifests["utkface"])

    pre_run = work / "pretrain" if cfg.pretrained else None
    if pre_run is not None:
        with stage("pretrain"):
            pretrain_stage(cfg, [faces / "utkface", reals], pre_run, device=device, progress=progress)

    ft_data = [dfdc, *(utk if cfg.utk_reals else [])]
    teachers = [work / f"teacher{k}" for k in range(1, cfg.teachers + 1)]
    for k, run in enumerate(teachers, start=1):
        with stage(f"teacher {k}"):
            finetune_stage(replace(cfg, finetune_epochs=cfg.teacher_epochs or cfg.finetune_epochs), ft_data, run, pre_run,
                           seed=k, device=device, progress=progress)  # fmt: skip
    ft_run = work / "finetune"
    with stage("finetune"):
        finetune_stage(cfg, ft_data, ft_run, pre_run, teachers=teachers, device=device, progress=progress)
    final = ft_run
    if cfg.polish_epochs:
        final = work / "polish"
        with stage("polish"):
            polish_stage(cfg, dfdc, utk, final, ft_run, device=device, progress=progress)

    with stage("export and measure", accumulate=False):
        card = export_and_measure(cfg, final, dfdc, shared, export_to, preset=preset, times=times)
    card["wall_time_s"] = {k: round(v, 1) for k, v in times.items()}
    export_card(card, export_to, work)
    return card


def export_and_measure(
    cfg: RecipeConfig,
    ft_run: Path,
    dfdc: Path,
    shared: Path,
    export_to: Path,
    *,
    preset: str,
    times: dict[str, float] | None = None,
    note: str | None = None,
) -> dict[str, Any]:
    """Export the best checkpoint of the fine-tuning run `ft_run` to `export_to` (fp16) and measure exactly what
    ships: DFDC val (threshold, band, temperature refitted on it), robustness, localization, FF++ videos.
    Returns the model card (`export_card` writes it); `note` is shown in it (e.g. a run stopped early)."""
    from realface.bundle import export_bundle, load_bundle
    from realface.model import Decision, Model
    from realface.data.faceset import Preprocessing
    from realface.data.labelled import DetectionFaces, build_items
    from realface.eval.localization import localization_report
    from realface.faces.manifest import read_face_manifest
    from realface.train import checkpoint as ckpt
    from realface.train.finetune import calibration_batch, fit_decision, score_dataset

    bundle = load_bundle(ft_run)
    val_records = [r for r in read_face_manifest(dfdc) if r.extra.get("split") == "val"]
    val_set = DetectionFaces(build_items(val_records), bundle.pre)
    export_bundle(bundle, export_to, card={}, calibration=calibration_batch(val_set))
    shipped = load_bundle(export_to)  # measure exactly what ships (fp16, one branch)
    probs, unc = score_dataset(shipped.detector, val_set, 64, cfg.workers)
    decision = Decision.from_json(fit_decision(val_set.labels(), probs, unc, *threshold_rule(cfg)))
    shipped = replace(shipped, decision=decision)
    config = ckpt.read_json(Path(export_to) / ckpt.CONFIG)  # the rule fitted on what ships is the rule that ships
    ckpt.write_json(Path(export_to) / ckpt.CONFIG, {**config, "decision": decision.to_json()})
    ffpp = measure_ffpp(Model.from_bundle(shipped), shared, cfg.frames)
    robustness = measure_robustness(shipped, val_records, probs, cfg.workers)
    where = None
    if shipped.config.options.cell_targets:
        with_maps = DetectionFaces(build_items(val_records), bundle.pre, mask_grid=shipped.config.grid)
        where = localization_report(shipped.detector, with_maps, workers=cfg.workers)
    meta = json.loads((Path(ft_run) / "last" / "meta.json").read_text())
    polish = None
    start = json.loads((Path(ft_run) / "config.json").read_text()).get("init")
    if cfg.polish_epochs and start:  # a polish run: the epochs of the fine-tuning it continued come first
        polish = {"epochs_done": int(meta["epoch"]) + 1, "val_auc_per_epoch": _val_aucs(meta)}
        meta = json.loads((Path(start) / "last" / "meta.json").read_text())
    best = max(meta["history"], key=lambda e: e.get("val_auc", float("-inf")))
    utk = f"{_shards_text(cfg)} reals" + (f" (one photo in {cfg.utk_every})" if cfg.utk_every > 1 else "")
    above, scored = ffpp_fakes_above_originals(ffpp)
    return {
        "name": f"realface default ({preset})",
        "recipe": {"preset": preset, **asdict(cfg)},
        "data": {
            "pretraining": f"real faces only: {_shards_text(cfg)} + DFDC train-split reals"
            if cfg.pretrained else "none",
            "finetuning": "DFDC train split (real + labelled fakes)"
            + (f" + {utk}" if cfg.utk_reals else "")
            + (f" + SBI pseudo-fakes x{cfg.sbi_ratio}" if cfg.sbi_ratio else "")
            + (" in paired order (every DFDC fake next to its own real)" if cfg.paired else "")
            + (f"; then {cfg.polish_epochs} epoch(s) more from those weights (base lr {cfg.polish_blr}) with the {utk}"
               " added" if cfg.polish_epochs else "")
            + (f" and SBI pseudo-fakes x{polish_sbi(cfg)} made from " + ("all its reals" if cfg.sbi_photos else "its DFDC reals")
               + ("" if cfg.sbi_hulls == SBIConfig.hulls else f" ({', '.join(cfg.sbi_hulls)} blends)")
               if cfg.polish_epochs and polish_sbi(cfg) else "")
            + (f", while keeping its own p(fake) on the DFDC faces (it is its own teacher there, weight {cfg.polish_teacher}"
               + ("" if cfg.teacher_sbi or not polish_sbi(cfg) else "; not on the SBI fakes made from them") + ")"
               if cfg.polish_epochs and cfg.polish_teacher else "")
            + (f"; epochs with UTKFace reals balanced over {', '.join(cfg.balance_groups)}" if cfg.balance_groups else ""),
            "selection_and_threshold": "DFDC val split (split by source video; never trained on)",
        },
        "finetune_epochs_done": int(meta["epoch"]) + 1,
        "best_epoch": int(best["epoch"]) + 1,
        "val_auc_per_epoch": _val_aucs(meta),
        "polish": polish,
        "preprocessing": Preprocessing.to_dict(shipped.pre),
        "dfdc_val": decision.val,
        "dfdc_val_robustness": robustness,
        "dfdc_val_localization": where,
        "ffpp_videos": ffpp,
        "ffpp_fakes_above_originals": bool(scored and above == scored),
        "hardware": machine(),
        "wall_time_s": {k: round(v, 1) for k, v in (times or {}).items()},
        "date": time.strftime("%Y-%m-%d"),
        "note": note,
    }


def _val_aucs(meta: dict[str, Any]) -> list[float]:
    return [round(float(e["val_auc"]), 4) for e in meta["history"] if "val_auc" in e]


def export_card(card: dict[str, Any], export_to: Path, work: Path | None = None) -> None:
    """Write the card into the exported bundle's config.json and MODEL_CARD.md (and WORK/card.json)."""
    from realface.bundle import load_bundle
    from realface.train import checkpoint as ckpt

    config = ckpt.read_json(Path(export_to) / ckpt.CONFIG)
    config["card"] = card
    ckpt.write_json(Path(export_to) / ckpt.CONFIG, config)
    load_bundle(export_to)  # still a valid model
    (Path(export_to) / "MODEL_CARD.md").write_text(model_card_markdown(card))
    if work is not None:
        (Path(work) / "card.json").write_text(json.dumps(card, indent=2, default=float))


def model_card_markdown(card: dict[str, Any]) -> str:
    """The model card as Markdown (numbers from the DFDC val split and the FF++ sample videos)."""
    from realface.data.faceset import Preprocessing

    val = card["dfdc_val"]
    r = card["recipe"]
    lines = [
        f"# Model card: {card['name']}",
        "",
        f"Produced by `realface recipe {r['preset']}` on {card['date']} ({card['hardware']}).",
        "",
        "## What it is",
        f"- Encoder `{r['encoder']}` at {r['img_size']} px, "
        + (f"pretrained on real faces only ({r['mask']} masking, self-distillation weight {r['distill_weight']},"
           f" {r['pretrain_epochs']} epochs), then " if r.get("pretrain_epochs") else "from random weights (no pretraining), ")
        + f"fine-tuned as a `{r['detector']}` detector for {card.get('finetune_epochs_done', r['finetune_epochs'])} of"
        f" {r['finetune_epochs']} epochs (best epoch {card.get('best_epoch', '?')} on val)"
        + (f" while learning the mean p(fake) of {r['teachers']} teacher detectors trained the same way"
           f" ({r.get('teacher_epochs') or r['finetune_epochs']} epochs each, seeds 1-{r['teachers']})" if r.get("teachers") else "")
        + (f", then continued for {card['polish']['epochs_done']} epoch(s) with UTKFace reals added"
           + (" while keeping its own p(fake) on the DFDC faces" if r.get("polish_teacher") else "") + " (see Data)"
           if card.get("polish") else "")
        + (f", with the forgery-mask loss (weight {r['mask_weight']}) and its cell head." if r.get("mask_weight")
           and r["detector"] in ("classifier", "vit") else "."),
        f"- Crops: aligned faces, face box scaled by {Preprocessing.from_dict(card['preprocessing']).crop.margin}, "
        f"{r['crop_size']} px, resized to {r['img_size']} px.",
        "",
        "## Data",
        *[f"- {k.replace('_', ' ')}: {v}" for k, v in card["data"].items()],
        "",
        "## Measured on the DFDC val split (not trained on)",
        "| frame AUC | EER | AP | balanced accuracy at threshold | threshold | coverage of the confident band |",
        "|---|---|---|---|---|---|",
        f"| {val['auc']:.3f} | {val['eer']:.3f} | {val['ap']:.3f} | {val['balanced_accuracy']:.3f} |"
        f" {val['threshold']:.3f} | {val['coverage']:.3f} |",
        "",
        "The threshold is fitted on this same val split, so balanced accuracy there is optimistic: "
        + (f"the lowest one at which at most {r['threshold_fpr']:.0%} of the val reals score at or above it (an"
           " operating point for few false alarms on real faces)." if r.get("threshold_fpr") else "the EER point.")
        + f" The confident band holds a least confidence for \"real\" verdicts and one for \"fake\", each as low as"
        f" it can be while the faces told that verdict are right {BAND_ACCURACY:.0%} of the time on val, where it is fitted;"
        f" expected calibration error after temperature scaling: {val.get('ece_after', float('nan')):.3f}.",
        "",
        *_robustness_lines(card.get("dfdc_val_robustness")),
        *_localization_lines(card.get("dfdc_val_localization")),
        f"## FF++ sample videos (video-level p(fake), {r['frames']} frames; a sanity check, not an accuracy claim)",
        "| video | label | method | p(fake) | verdict |",
        "|---|---|---|---|---|",
        *[
            f"| {v['video']} | {v['label']} | {v['method']} | "
            f"{'-' if v['p_fake'] is None else format(v['p_fake'], '.3f')} | {v['verdict']} |"
            for v in card["ffpp_videos"]
        ],
        "",
        f"All fakes ranked above all originals: {'yes' if card['ffpp_fakes_above_originals'] else 'no'}.",
        "",
        "## Wall time (seconds)",
        *[f"- {k}: {v}" for k, v in card["wall_time_s"].items()],
        "",
        *([f"Val AUC per epoch: {', '.join(f'{a:.3f}' for a in card['val_auc_per_epoch'])}"
           + (f"; then, with UTKFace reals: {', '.join(f'{a:.3f}' for a in card['polish']['val_auc_per_epoch'])}"
              if card.get("polish") else "") + ".", ""]
          if card.get("val_auc_per_epoch") else []),
        *(["## Notes", card["note"], ""] if card.get("note") else []),
    ]
    return "\n".join(lines)


def _robustness_lines(rows: dict[str, Any] | None) -> list[str]:
    if not rows:
        return []
    base = rows["as stored"]["auc"]
    return [
        "## Robustness on the DFDC val split (frame AUC, 95% cluster-bootstrap interval over source videos)",
        "| faces | AUC | interval | change |",
        "|---|---|---|---|",
        *[f"| {name} | {r['auc']:.3f} | [{r['ci'][0]:.3f}, {r['ci'][1]:.3f}] | {r['auc'] - base:+.3f} |" for name, r in rows.items()],
        "",
        "Re-encoded: every val face, real or fake alike, resized to 0.75x and back and re-saved as JPEG quality 75.",
        "",
    ]


def _localization_lines(where: dict[str, Any] | None) -> list[str]:
    if not where:
        return []
    return [
        "## Where: the heatmap (patch head) on the DFDC val fakes",
        "| patch AUC | face-region prior alone | patch AUC inside the face | fakes | patches | forged patches |",
        "|---|---|---|---|---|---|",
        f"| {where['patch_auc']:.3f} | {where['face_prior_auc']:.3f} | {where['inside_face_auc']:.3f} | {where['faces']} |"
        f" {where['patches']} | {where['forged_patches']} |",
        "",
        "Each patch of each val fake whose real is in the split is forged when at least half of it changed (the"
        " fake-minus-real difference after aligning the two); the AUC says how well the heatmap ranks forged patches"
        " above the rest of the same faces (0.5 knows nothing of where). Forged patches lie inside the face, so a"
        " map that only knows where the face is already scores the prior's AUC; the AUC over the patches wholly"
        " inside the face, where that prior cannot help, is what the head knows of where within a face.",
        "",
    ]
