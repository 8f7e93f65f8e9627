"""`realface finetune`: turn a real-face representation into a forgery (or spoof) detector.

Composes the shared pieces: labelled faces and SBI pseudo-fakes (`data.labelled`), the detectors
(`models.detectors`), the loop (`train.engine`). The best epoch is chosen on validation AUC of data from the
training distribution (never a test set); on that checkpoint the decision threshold and confidence band are
fitted on the same validation set and stored in RUN/decision.json, which `realface detect` uses; every
validation face's score goes to RUN/val_scores.csv (`eval.report` format) for any later analysis.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from realface.data.augment import WildAugmentConfig
from realface.data.faceset import CropCache, Preprocessing
from realface.data.balance import GroupBalancedSampler, balance_record, group_keys
from realface.data.labelled import DetectionFaces, Item, PairedSampler, build_items
from realface.data.sbi import SBIConfig
from realface.eval.groups import Grouping
from realface.errors import RealfaceError
from realface.faces.align import CropSettings
from realface.faces.manifest import crop_settings_of
from realface.labels import label_to_int
from realface.eval.metrics import roc_auc
from realface.eval.thresholds import BAND_ACCURACY
from realface.eval.report import FaceScore, write_scores_csv
from realface.models.detectors import DetectorConfig, build_detector
from realface.models.encoders import encoder_info
from realface.predict import score_batches
from realface.train import checkpoint as ckpt
from realface.train.distributed import init_distributed, shutdown_distributed
from realface.train.engine import History, TrainConfig, build_optimizer, fit, open_run
from realface.train.pretrain import load_face_records
from realface.train.schedule import param_groups

VAL_SCORES = "val_scores.csv"  # the selected checkpoint's score of every validation face


def training_crop(records: list, crop_size: int | None = None) -> CropSettings:
    """The crop settings of the training data (`crop_settings_of`); `crop_size` (e.g. --crop-size) must agree
    with them, and is the side assumed for crops without a preprocess.json (default 224, the default margin)."""
    crop = crop_settings_of(records)
    if crop is None:
        return CropSettings(size=crop_size or 224)
    if crop_size is not None and crop_size != crop.size:
        raise RealfaceError(f"--crop-size {crop_size} differs from the {crop.size} px crops the data was preprocessed with")
    return crop


def split_records(records: list, split_column: str = "split") -> tuple[list, list]:
    """(train, val) by a manifest column `split` (values 'train' / 'val'); other values are dropped."""
    train = [r for r in records if r.extra.get(split_column, "train") == "train"]
    val = [r for r in records if r.extra.get(split_column) == "val"]
    return train, val


def score_dataset(
    model: nn.Module, dataset: DetectionFaces, batch_size: int, workers: int = 0, flip: bool = False
) -> tuple[np.ndarray, np.ndarray | None]:
    """p(fake) (N,) and uncertainty (N,) or None for every item of `dataset`, in order (flip: test-time flip
    averaging)."""
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers)
    device = next(model.parameters()).device
    return score_batches(model, (b["image"] for b in loader), device, flip=flip)


def teacher_loss(student_logits: torch.Tensor, teacher_probs: torch.Tensor) -> torch.Tensor:
    """KL(teacher || student) over the two classes, mean over the faces: the student learns the teachers' p(fake)
    for each face, not only its label (knowledge distillation, Hinton et al. 2015, at temperature 1)."""
    return F.kl_div(F.log_softmax(student_logits.float(), dim=1), teacher_probs.float(), reduction="batchmean")


class FinetuneTask:
    """Plugs a detector into `fit`; selects on validation AUC when a validation set is given.

    teachers: trained detectors (eval mode, on the training device) whose mean class probabilities on each training
    batch the student also learns, with weight `teacher_weight` (`teacher_loss`); e.g. an ensemble distilled into one
    model of one model's inference cost. Only the faces of a batch with "taught" 1 are scored by the teachers (a
    batch without any adds no teacher loss).
    """

    def __init__(
        self,
        val_set: DetectionFaces | None,
        batch_size: int,
        workers: int,
        teachers: list[nn.Module] = (),
        teacher_weight: float = 1.0,
    ) -> None:
        self.val_set = val_set
        self.batch_size = batch_size
        self.workers = workers
        self.teachers = list(teachers)
        self.teacher_weight = teacher_weight
        self.progress = 0.0  # fraction of training done, for annealed loss terms
        self.selection = ("val_auc", "max") if val_set is not None else ("train_loss", "min")

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        core = getattr(model, "module", model)  # the detector inside DDP
        out = model(batch["image"])
        loss, parts = core.loss(out, batch["label"], self.progress, targets=batch)
        if self.teachers:
            rows = batch["taught"].bool()
            taught = out.logits.new_zeros(())
            if rows.any():
                images = batch["image"][rows]
                with torch.no_grad():
                    probs = torch.stack([t(images).logits.float().softmax(dim=1) for t in self.teachers]).mean(dim=0)
                taught = teacher_loss(out.logits[rows], probs)
            loss, parts = loss + self.teacher_weight * taught, {**parts, "teacher": taught.detach()}
        return loss, parts

    def after_step(self, model: nn.Module, step: int, total_steps: int) -> None:
        self.progress = (step + 1) / total_steps

    def validation_scores(self, model: nn.Module) -> tuple[np.ndarray, np.ndarray | None]:
        return score_dataset(model, self.val_set, self.batch_size, self.workers)

    def end_of_epoch(self, model: nn.Module, epoch: int, run_dir: Path) -> dict[str, float]:
        if self.val_set is None:
            return {}
        probs, _ = self.validation_scores(model)
        return {"val_auc": roc_auc(self.val_set.labels(), probs)}


def calibration_batch(dataset: DetectionFaces, n: int = 256) -> torch.Tensor:
    """(about n, 3, S, S): faces spread evenly over `dataset`, for `export_bundle(..., calibration=...)`."""
    return torch.stack([dataset[i]["image"] for i in range(0, len(dataset), max(1, len(dataset) // n))])


def val_face_scores(val_set: DetectionFaces, probs: np.ndarray, uncertainty: np.ndarray | None) -> list[FaceScore]:
    """One `FaceScore` per validation item; confidence 1 - u where the detector reports an uncertainty."""
    rows = []
    for i, item in enumerate(val_set.items):
        rec = item.record
        path = f"{rec.path}#{rec.offset}" if rec.offset >= 0 else str(rec.path)  # a face inside a tar shard
        rows.append(FaceScore(
            dataset="val", path=path, source=rec.source, frame=rec.frame, face=rec.face,
            video=rec.source if rec.frame >= 0 else "", group=rec.extra.get("group") or "", label=item.label,
            score=float(probs[i]),
            confidence=None if uncertainty is None else float(np.clip(1.0 - uncertainty[i], 0.0, 1.0)),
        ))  # fmt: skip
    return rows


def fit_decision(
    labels: np.ndarray,
    probs: np.ndarray,
    uncertainty: np.ndarray | None,
    policy: str = "eer",
    policy_params: dict[str, float] | None = None,
    target_accuracy: float = BAND_ACCURACY,
) -> dict:
    """The decision rule fitted on validation scores, as stored in decision.json.

    1. Temperature scaling: T >= 1 minimizing the validation NLL of sigmoid(logit(p) / T); detection reports
       the calibrated p(fake) = sigmoid(logit(p) / T).
    2. The threshold on calibrated p(fake), by `policy` (realface.eval.thresholds).
    3. The confidence band. Confidence is 1 - uncertainty for evidential detectors, else the distance of the
       calibrated p(fake) from the threshold (realface.eval.thresholds.distance_confidence). The band holds one
       least confidence for "real" verdicts and one for "fake" verdicts, each as low as it can be while the
       validation faces told that verdict are right `target_accuracy` (90%) of the time (`fit_two_sided_band`).
       When a verdict cannot reach it, one band for both that keeps 80% of the faces.
    """
    from realface.eval.calibration import (
        apply_temperature,
        expected_calibration_error,
        fit_temperature,
        probabilities_to_logits,
    )
    from realface.eval.metrics import binary_report
    from realface.eval.thresholds import (
        band_json,
        confident,
        distance_confidence,
        fit_confidence_band,
        fit_threshold,
        fit_two_sided_band,
    )

    # Only softening (T >= 1) is applied: on a small or separable validation set the NLL keeps falling as T -> 0,
    # which would push calibrated probabilities to exactly 0 or 1 and the threshold onto them.
    temperature = max(1.0, fit_temperature(probabilities_to_logits(probs), labels))
    calibrated = apply_temperature(probabilities_to_logits(probs), temperature)
    threshold = fit_threshold(labels, calibrated, policy, **(policy_params or {}))
    kind = "evidential" if uncertainty is not None else "distance"
    conf = 1.0 - uncertainty if uncertainty is not None else distance_confidence(calibrated, threshold.value)
    try:
        band = fit_two_sided_band(labels, calibrated, conf, threshold.value, target_accuracy=target_accuracy)
    except RealfaceError:
        band = fit_confidence_band(labels, calibrated, conf, threshold.value, target_coverage=0.8)
    kept = confident(calibrated, threshold.value, conf, band)
    report = binary_report(labels, calibrated, threshold.value)
    return {
        "threshold": threshold.to_dict(),
        "temperature": float(temperature),
        "confidence": kind,
        "band": band_json(band),
        "val": {
            **{k: v for k, v in report.items() if isinstance(v, (int, float))},
            "coverage": float(kept.mean()),
            "ece_before": float(expected_calibration_error(labels, probs)),
            "ece_after": float(expected_calibration_error(labels, calibrated)),
        },
    }


def record_validation(
    run: Path,
    val_set: DetectionFaces,
    probs: np.ndarray,
    uncertainty: np.ndarray | None,
    policy: str = "eer",
    policy_params: dict[str, float] | None = None,
) -> dict:
    """Write what the selected checkpoint's validation scores decide into `run`: the decision rule
    (`fit_decision`, decision.json) and every validation face's score (val_scores.csv); returns the rule."""
    decision = fit_decision(val_set.labels(), probs, uncertainty, policy, policy_params)
    ckpt.write_json(run / ckpt.DECISION, decision)
    write_scores_csv(val_face_scores(val_set, probs, uncertainty), run / VAL_SCORES)
    return decision


def _face_key(rec) -> tuple[str, int]:
    """Which face a record is: a crop file, or a JPEG inside a tar shard."""
    return os.path.normpath(rec.path), rec.offset


def _in_manifests(manifests: list[Path]) -> Callable[[object], bool]:
    """Whether a record's face is one of the faces of `manifests`."""
    keys = {_face_key(rec) for rec in load_face_records(manifests)}
    return lambda rec: _face_key(rec) in keys


def _taught_items(items: list[Item], manifests: list[Path] | None, *, sbi: bool = True) -> list[Item]:
    """`items` with `taught` set where the item's face comes from one of `manifests` (None: any), and with sbi
    False only where the item is that face itself, not an SBI fake made from it; an error where none is taught."""
    known = (lambda rec: True) if manifests is None else _in_manifests(manifests)
    items = [replace(it, taught=known(it.record) and (sbi or it.kind != "sbi")) for it in items]
    if not any(it.taught for it in items):
        raise RealfaceError("--teacher-data: none of its faces are training faces (name manifests also given as --data)")
    return items


def _load_teachers(paths: list[Path], pre: Preprocessing, device: torch.device, layout: torch.memory_format) -> list[nn.Module]:
    """The teacher detectors, checked to take the student's faces: same input side, normalization and crops."""
    from realface.bundle import load_bundle

    teachers = []
    for path in paths:
        bundle = load_bundle(path, device)
        theirs, ours = bundle.pre.to_dict(), pre.to_dict()
        if theirs != ours:
            differ = ", ".join(f"{k} {theirs.get(k)} against {ours.get(k)}" for k in sorted(set(theirs) | set(ours))
                               if theirs.get(k) != ours.get(k))  # fmt: skip
            raise RealfaceError(f"teacher {path} takes other faces than the student: {differ}")
        teachers.append(bundle.detector.to(memory_format=layout).requires_grad_(False))
    return teachers


def finetune(
    data: list[Path],
    out: Path,
    *,
    detector_cfg: DetectorConfig,
    train_cfg: TrainConfig,
    pretrained: Path | None,
    init: Path | None = None,
    val: list[Path] | None = None,
    labelled_fakes: bool = True,
    sbi_ratio: float = 0.0,
    sbi: SBIConfig | None = None,
    paired: bool = False,
    balance: Grouping | None = None,
    augment: WildAugmentConfig | None = WildAugmentConfig(),
    threshold_policy: str = "eer",
    threshold_params: dict[str, float] | None = None,
    teachers: list[Path] = (),
    teacher_weight: float = 1.0,
    teacher_data: list[Path] | None = None,
    teacher_sbi: bool = True,
    sbi_data: list[Path] | None = None,
    crop_size: int | None = None,
    keep_img_size: bool = False,
    cache_crops: bool = True,
    resume: bool = False,
    device: str = "auto",
    progress: bool = True,
    limit: int | None = None,
    max_steps_per_epoch: int | None = None,
) -> History:
    """Fine-tune a detector and write the run to `out`: checkpoints, config.json, decision.json.

    data: face manifests from `realface preprocess` (label column real/fake or live/spoof). Without `val`,
    rows with split=val in `data` are the validation set. pretrained: a `realface pretrain` run folder, or
    None for a randomly initialised encoder (its encoder size, input side and MAE settings then override
    those of `detector_cfg`; with keep_img_size a CNN keeps `detector_cfg.img_size` instead of the pretraining
    side). The crop settings come from the preprocess.json of the data (one setting for all of it, or an error)
    and are recorded so detection crops faces the same way; crop_size is the side of crops that have none
    (plain folders), and must agree with the data's where it has one. cache_crops: decode each crop once per
    run into a memory-mapped file in `out` (`CropCache`, removed at the end) instead of once per epoch.
    sbi: how the SBI pseudo-fakes are made (None: `SBIConfig()`, SBI's own face-swap-like blends); recorded.
    sbi_data: the manifests (of `data`) whose reals the SBI pseudo-fakes are made from, sbi_ratio per real of them
    (None: every real); e.g. blends of video frames only, while photos of other people are learned as real alone.
    balance: draw each epoch so every group of people in these manifest columns has the same share
    (`realface.data.balance`); not with `paired`.
    augment: the in-the-wild augmentation of training faces (None: none); recorded in config.json.
    init: continue from a trained detector (a finetune run or exported weights, `realface.bundle.load_bundle`)
    instead of a pretrained encoder: its architecture, input side and normalization are kept, while the
    training-time fields of `detector_cfg` (drop_path, label_smoothing, layer_decay, freeze) apply; e.g. to
    teach the shipped model a user's own real photos.
    teachers: trained detectors (finetune runs or exported weights) taking the same faces as this one, whose mean
    p(fake) the student learns besides the labels, with weight teacher_weight (`FinetuneTask`); teacher_data: the
    manifests (of `data`) whose faces, and the SBI fakes made from them, the teachers score (None: every training
    face); teacher_sbi False: they score those faces but not the SBI fakes made from them, whose label then teaches
    alone (a teacher that never saw such blends calls them real, against their label). E.g. the teacher is the
    `init` detector itself, on the data it was trained on, while it learns new reals from other manifests: it keeps
    what it knew there ("learning without forgetting", Li & Hoiem 2016).
    """
    from realface.bundle import load_bundle
    from realface.models.pretrained import load_pretrainer

    from realface.eval.thresholds import check_threshold_policy

    check_threshold_policy(threshold_policy, **(threshold_params or {}))  # before the first step, not after the last
    if paired and balance is not None:
        raise RealfaceError("--paired and --balance-groups each set the training order: choose one")
    if init is not None and pretrained is not None:
        raise RealfaceError("--init starts from a trained detector, --pretrained from a pretraining run: choose one")
    out = Path(out)
    saved, train_cfg = open_run(out, resume, train_cfg)
    if saved is not None:
        detector_cfg = DetectorConfig.from_dict(saved["detector"])

    torch.manual_seed(train_cfg.seed)
    dist_info = init_distributed(device)
    cache = None
    try:
        records = load_face_records(data)
        train_records, val_records = split_records(records)
        if val:
            val_records = load_face_records(val)
        if limit:
            train_records, val_records = train_records[:limit], val_records[:limit]
        crop = training_crop(train_records + val_records, crop_size)
        pretrainer, pre = None, Preprocessing(img_size=detector_cfg.img_size, crop=crop)
        if pretrained is not None and not resume:
            pretrainer, pre = load_pretrainer(pretrained)
            # The encoder (size, input side) and the MAE that rffr keeps come from the pretraining run.
            detector_cfg = detector_cfg.for_pretrainer(pretrainer.config, detector_cfg.img_size if keep_img_size else None)
            pre = replace(pre, crop=crop, img_size=detector_cfg.img_size)
        elif resume:
            pre = Preprocessing.from_dict(saved["preprocessing"])
        start = None
        if init is not None and not resume:
            start = load_bundle(init)
            detector_cfg = replace(
                start.config, drop_path=detector_cfg.drop_path, label_smoothing=detector_cfg.label_smoothing,
                layer_decay=detector_cfg.layer_decay, freeze=detector_cfg.freeze,
            )  # fmt: skip
            pre = replace(start.pre, crop=crop)
        detector = build_detector(detector_cfg, pretrainer)
        if start is not None:
            detector.load_state_dict(start.detector.state_dict())
        del pretrainer, start

        sbi_from = None
        if sbi_data is not None and sbi_ratio > 0:
            sbi_from = _in_manifests(sbi_data)
            if not any(sbi_from(r) and label_to_int(r.label) == 0 for r in train_records):
                raise RealfaceError("--sbi-data: none of its faces are real training faces (name manifests also given as --data)")
        items = build_items(train_records, labelled_fakes=labelled_fakes, sbi_ratio=sbi_ratio, sbi_from=sbi_from)
        if teachers and (teacher_data is not None or not teacher_sbi):
            items = _taught_items(items, teacher_data, sbi=teacher_sbi)
        if len({it.label for it in items}) < 2:
            raise RealfaceError("training needs both classes: add labelled fakes or --pseudo-fakes sbi")
        if cache_crops:
            out.mkdir(parents=True, exist_ok=True)
            cache = CropCache(out / f".crops-{dist_info.rank}.u8", train_records + val_records, pre.crop.size)
        train_set = DetectionFaces(
            items, pre, seed=train_cfg.seed, augment=augment, sbi=sbi,
            mask_grid=detector_cfg.grid if detector_cfg.options.cell_targets else None, cache=cache,
        )  # fmt: skip
        val_set = None
        if val_records:
            val_set = DetectionFaces(build_items(val_records), pre, seed=train_cfg.seed, cache=cache)
        micro = train_cfg.micro_batch(dist_info.world_size)
        layout = encoder_info(detector_cfg.encoder).layout
        task = FinetuneTask(val_set, micro, train_cfg.workers, _load_teachers(teachers, pre, dist_info.device, layout),
                            teacher_weight)  # fmt: skip
        run_config = {
            "kind": "detector",
            "detector": detector_cfg.to_dict(),
            "train": train_cfg.to_dict(),
            "preprocessing": pre.to_dict(),
            "data": [str(p) for p in data],
            "val": [str(p) for p in val] if val else "split=val rows of data",
            "pretrained": str(pretrained) if pretrained else None,
            "init": str(init) if init else None,
            "labelled_fakes": labelled_fakes,
            "sbi_ratio": sbi_ratio,
            "sbi_hulls": list((sbi or SBIConfig()).hulls) if sbi_ratio > 0 else None,
            "sbi_data": None if sbi_ratio <= 0 else [str(p) for p in sbi_data] if sbi_data is not None else "all",
            "paired": paired,
            "augment": None if augment is None else asdict(augment),
            "num_train": len(items),
            "num_val": len(val_set) if val_set else 0,
        }
        if teachers:
            run_config.update(teachers=[str(t) for t in teachers], teacher_weight=teacher_weight,
                              teacher_data=[str(p) for p in teacher_data] if teacher_data is not None else "all",
                              teacher_sbi=teacher_sbi)  # fmt: skip
        groups = param_groups(
            detector,
            train_cfg.weight_decay,
            layer_decay=detector_cfg.layer_decay,
            num_layers=detector.num_layers,
            layer_of=detector.layer_of,
        )
        sampler = None
        if paired:
            sampler = PairedSampler(items, train_cfg.seed, dist_info.world_size, dist_info.rank)
            if sampler.pairs == 0:
                raise RealfaceError("--paired: no labelled fake has its real in the data (same group, frame and face)")
        if balance is not None:
            keys = group_keys([it.record.extra for it in items], balance)
            sampler = GroupBalancedSampler(keys, train_cfg.seed, dist_info.world_size, dist_info.rank)
            run_config["balance_groups"] = balance_record(balance, sampler)
        history = fit(
            detector,
            train_set,
            task,
            train_cfg,
            out,
            dist_info,
            build_optimizer(groups, train_cfg),
            run_config,
            sampler=sampler,
            resume=resume,
            progress=progress,
            max_steps_per_epoch=max_steps_per_epoch,
            layout=layout,
        )
        if dist_info.is_main and val_set is not None:
            detector.load_state_dict(ckpt.load_weights(out / "best" / ckpt.WEIGHTS))
            probs, unc = task.validation_scores(detector)
            record_validation(out, val_set, probs, unc, threshold_policy, threshold_params)
        return history
    finally:
        if cache is not None:
            cache.close()
        shutdown_distributed()
