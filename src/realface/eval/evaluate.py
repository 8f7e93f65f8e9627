"""`realface evaluate`: score test sets with a model and write the report.

Inputs are face crops written by `realface preprocess` (a manifest with a `landmarks` column: scored as
they are) or raw images and videos (then found, aligned and cropped by the same face pipeline and crop
settings the model was trained with, read from its config). Raw files go through the same `Scanner` as
`realface detect`, so both find the same face by the same path (tight crops included, through the face
pipeline's fallbacks) and give it the same score; a file in which `detect` finds no face is not scored here
either, and is listed in `unscored.txt`. Every face's score lands in scores.csv; see `eval.report`. A dataset
with group columns (`DatasetSpec.grouping`) carries each face's groups to the report, which gives error
rates per group (`eval.groups`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tqdm import tqdm

from realface.preprocessing import read_rgb
from realface.detect import Scanner
from realface.errors import InputError
from realface.eval.protocol import DatasetSpec, Protocol, read_dataset, read_header, resolve_threshold
from realface.eval.report import FaceScore, write_report
from realface.eval.thresholds import Threshold
from realface.model import Model


def score_dataset_items(
    scanner: Scanner, spec: DatasetSpec, progress: bool = True
) -> tuple[list[FaceScore], list[str]]:
    """FaceScore rows for every face of a dataset, and one message per item that gave none."""
    items = read_dataset(spec)
    crops_given = "landmarks" in read_header(spec.data)
    groups_of = spec.grouping.groups_of
    rows: list[FaceScore] = []
    problems: list[str] = []
    bar = tqdm(total=len(items), desc=spec.name, unit="item", disable=not progress)
    if crops_given:
        batch = 256
        for start in range(0, len(items), batch):
            chunk = items[start : start + batch]
            crops = [read_rgb(str(it.path)) for it in chunk]
            probs, conf, _ = scanner.score(crops)
            for it, p, c in zip(chunk, probs, conf):
                rows.append(
                    FaceScore(
                        dataset=spec.name, path=str(it.path), source=it.fields.get("source", ""), frame=it.frame,
                        video=it.video, group=it.group, label=it.label, score=float(p), confidence=float(c),
                        attributes=groups_of(it.fields),
                    )
                )  # fmt: skip
            bar.update(len(chunk))
    else:
        for it in items:
            result = scanner.scan(it.path)
            if result.status != "ok":
                problems.append(f"{it.path}: {result.message}")
            video = it.video or (str(it.path) if result.kind == "video" else "")
            for f in result.faces:
                rows.append(
                    FaceScore(
                        dataset=spec.name, path=str(it.path), source=str(it.path), frame=f.frame, face=f.face,
                        video=video, group=it.group, label=it.label, score=f.p_fake, confidence=f.confidence,
                        attributes=groups_of(it.fields),
                    )
                )  # fmt: skip
            bar.update(1)
    bar.close()
    return rows, problems


def evaluate(
    model: Model,
    protocol: Protocol,
    out: Path,
    *,
    frames: int = 32,
    batch_size: int = 32,
    bootstrap: int = 1000,
    progress: bool = True,
) -> dict:
    """Score every dataset of `protocol` with `model` and write the report to `out`; returns metrics.json."""
    scanner = Scanner(model, frames=frames, batch_size=batch_size)
    rows: list[FaceScore] = []
    scored: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    problems: list[str] = []
    for spec in protocol.datasets:
        ds_rows, ds_problems = score_dataset_items(scanner, spec, progress)
        if not ds_rows:
            raise InputError(f"dataset {spec.name!r}: no face could be scored ({len(ds_problems)} items failed)")
        rows.extend(ds_rows)
        problems.extend(ds_problems)
        scored[spec.name] = (np.array([r.label for r in ds_rows]), np.array([r.score for r in ds_rows]))
    d = model.decision
    stored = Threshold(value=float(d.threshold), policy=d.policy, params=dict(d.params))
    threshold, source = resolve_threshold(protocol, scored, stored)
    report = write_report(
        rows, out, threshold=threshold, band=d.band, model_info=model.info(), bootstrap=bootstrap,
        name=protocol.name, threshold_source=source,
    )  # fmt: skip
    if problems:
        (Path(out) / "unscored.txt").write_text("\n".join(problems) + "\n")
    return report
