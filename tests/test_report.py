"""Evaluation protocols (YAML) and reports written from face scores."""

from __future__ import annotations

import csv
import json
import re
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from realface.errors import RealfaceError
from realface.eval import metrics
from realface.eval.calibration import expected_calibration_error
from realface.eval.protocol import Protocol, load_protocol, read_dataset, resolve_threshold
from realface.eval.report import (
    FaceScore,
    complete_scores,
    markdown_table,
    read_scores_csv,
    scores_from_table,
    write_report,
)
from realface.eval.thresholds import Threshold, decide, distance_confidence, fit_threshold

BOOTSTRAP = 200


# ---------------------------------------------------------------------------------------------
# protocol files


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture()
def small_manifest(tmp_path: Path) -> Path:
    """A manifest of 4 videos (2 frames each) in 2 splits, labels spelled as in the shared sets."""
    rows = ["path,label,video,split,frame"]
    for v, label in enumerate(["real", "FAKE", "original", "spoof"]):
        for f in range(2):
            rows.append(f"faces/v{v}_{f}.jpg,{label},vid{v},{'val' if v < 2 else 'test'},{f}")
    return _write(tmp_path / "data" / "set-a" / "manifest.csv", "\n".join(rows) + "\n")


def test_protocol_resolves_paths_against_its_folder_and_filters_rows(tmp_path: Path, small_manifest: Path) -> None:
    proto = _write(
        tmp_path / "protocols" / "p.yaml",
        "name: cross\n"
        "datasets:\n"
        "  a-val: {data: ../data/set-a/manifest.csv, filter: {split: val}, video_column: video}\n"
        "  a-all: {data: ../data/set-a, filter: {split: [val, test]}}\n"
        "threshold: {policy: target_fpr, fpr: 0.1, fit_on: a-val}\n",
    )
    p = load_protocol(proto)
    assert p.name == "cross"
    assert [d.name for d in p.datasets] == ["a-val", "a-all"]
    assert p.datasets[0].data == small_manifest.resolve()
    assert p.datasets[1].data == small_manifest.resolve()  # a folder means its manifest.csv
    assert p.threshold is not None and p.threshold.params == {"fpr": 0.1} and p.threshold.fit_on == "a-val"

    val = read_dataset(p.dataset("a-val"))
    assert [i.path for i in val] == [(small_manifest.parent / f"faces/v{v}_{f}.jpg").absolute()
                                     for v in (0, 1) for f in (0, 1)]
    assert [i.label for i in val] == [0, 0, 1, 1]  # "FAKE" read case-insensitively
    assert [i.video for i in val] == ["vid0", "vid0", "vid1", "vid1"]
    assert [i.frame for i in val] == [0, 1, 0, 1]
    every = read_dataset(p.dataset("a-all"))
    assert [i.label for i in every] == [0, 0, 1, 1, 0, 0, 1, 1]  # original -> 0, spoof -> 1
    assert all(i.video == "" for i in every)  # no video column, no source: rows are single images


def test_protocol_filter_on_real_manifest_matches_csv(shared_data: Path, tmp_path: Path) -> None:
    manifest = shared_data / "dfdc" / "manifest.csv"
    proto = _write(
        tmp_path / "p.yaml",
        f"datasets:\n  dfdc-val: {{data: {manifest}, filter: {{split: val}}, group_column: group}}\n",
    )
    p = load_protocol(proto)
    assert p.name == "p"  # named after the file when the protocol has no name
    items = read_dataset(p.datasets[0])
    with manifest.open(newline="") as fh:
        expected = [r for r in csv.DictReader(fh) if r["split"] == "val"]
    assert len(items) == len(expected)
    assert [i.group for i in items] == [r["group"] for r in expected]
    assert [i.label for i in items] == [int(r["label"] == "fake") for r in expected]
    assert all(i.path.is_file() for i in items[:20])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("datasets: {a: {data: ../data/set-a/manifest.csv}}\nthreshhold: {policy: eer}\n", "unknown key"),
        ("datasets: {a: {data: ../data/set-a/manifest.csv, filtr: {split: val}}}\n", "unknown key"),
        ("datasets: {a: {data: ../data/nowhere/manifest.csv}}\n", "manifest not found"),
        ("datasets: {a: {data: ../data/set-a/manifest.csv, filter: {spilt: val}}}\n", "filter 'spilt'"),
        ("datasets: {a: {data: ../data/set-a/manifest.csv, filter: {split: {x: 1}}}}\n", "filter 'split'"),
        ("datasets: {a: {data: ../data/set-a/manifest.csv, filter: split}}\n", "filter must map"),
        ("datasets: {a: {data: ../data/set-a/manifest.csv, video_column: vid}}\n", "video_column"),
        ("datasets: {a: {data: ../data/set-a/manifest.csv, level: clip}}\n", "level"),
        ("datasets: {a: {data: ../data/set-a/manifest.csv}}\nthreshold: {policy: best}\n", "threshold policy"),
        ("datasets: {a: {data: ../data/set-a/manifest.csv}}\nthreshold: {policy: eer, fit_on: b}\n", "fit_on"),
        ("datasets: {}\n", "datasets"),
        ("datasets: [unclosed\n", "not valid YAML"),
    ],
)
def test_protocol_errors_are_clear(tmp_path: Path, small_manifest: Path, text: str, message: str) -> None:
    proto = _write(tmp_path / "protocols" / "p.yaml", text)
    with pytest.raises(RealfaceError, match=re.escape(message)):
        load_protocol(proto)


def test_protocol_missing_file_and_row_level_errors(tmp_path: Path, small_manifest: Path, shared_data: Path) -> None:
    with pytest.raises(RealfaceError, match="protocol file not found"):
        load_protocol(tmp_path / "absent.yaml")
    proto = _write(tmp_path / "p.yaml", "datasets: {a: {data: data/set-a/manifest.csv, filter: {split: train}}}\n")
    with pytest.raises(RealfaceError, match="no rows .* pass the filters"):
        read_dataset(load_protocol(proto).datasets[0])
    proto = _write(tmp_path / "p.yaml", "datasets: {a: {data: data/set-a/manifest.csv, positive_labels: [fake]}}\n")
    with pytest.raises(RealfaceError, match="label 'spoof' is neither positive"):
        read_dataset(load_protocol(proto).datasets[0])
    # DFDC's group holds a real video and its fakes: it is a cluster, not a video
    proto = _write(tmp_path / "p.yaml", f"datasets: {{d: {{data: {shared_data / 'dfdc'}, video_column: group}}}}\n")
    with pytest.raises(RealfaceError, match="group_column"):
        read_dataset(load_protocol(proto).datasets[0])


def test_protocol_from_manifests_names_sets_after_folders(shared_data: Path) -> None:
    p = Protocol.from_manifests([shared_data / "ffpp-videos" / "manifest.csv", shared_data / "antispoof"])
    assert [d.name for d in p.datasets] == ["ffpp-videos", "antispoof"]
    assert p.threshold is None
    assert p.datasets[0].group_column == "group" and p.datasets[1].group_column is None
    videos = read_dataset(p.datasets[0])
    assert all(i.video == str(i.path) for i in videos)  # a row that is a video file is its own video
    assert sorted(i.label for i in videos) == [0, 0, 0, 1, 1, 1, 1]
    spoof = read_dataset(p.datasets[1])
    assert {i.label for i in spoof} == {0, 1}  # live -> 0, spoof -> 1
    with pytest.raises(RealfaceError, match="manifest not found"):
        Protocol.from_manifests([shared_data / "no-such-set"])


def test_resolve_threshold_fits_on_the_named_set(tmp_path: Path, small_manifest: Path) -> None:
    proto = _write(tmp_path / "p.yaml", "datasets: {a: {data: data/set-a}, b: {data: data/set-a}}\n"
                                        "threshold: {policy: eer, fit_on: b}\n")
    p = load_protocol(proto)
    rng = np.random.default_rng(1)
    scored = {n: (rng.integers(0, 2, 50), rng.uniform(size=50)) for n in ("a", "b")}
    t, source = resolve_threshold(p, scored, stored=Threshold(0.5, "eer"))
    assert t == fit_threshold(*scored["b"], "eer") and "b" in source
    stored = Threshold(0.42, "max_balanced_accuracy")
    plain = Protocol.from_manifests([small_manifest])
    assert resolve_threshold(plain, scored, stored) == (stored, "stored with the model")


# ---------------------------------------------------------------------------------------------
# reports


def _synthetic_rows() -> list[FaceScore]:
    """Two datasets: videos in groups (both labels per group, like DFDC) and a single-class image set."""
    rng = np.random.default_rng(7)
    rows = []
    for v in range(36):
        label = int(v % 3 != 0)
        shift = rng.normal(0.0, 0.8)  # per-video difficulty, so videos overlap too
        for frame in range(6):
            for face in range(2 if v % 4 == 0 else 1):
                score = float(rng.beta(np.exp(shift) * (2 + 2 * label), 4 - 2 * label))
                rows.append(FaceScore(
                    dataset="lab <videos>", path=f"/nonexistent/v{v:02d}/f{frame}_{face}.jpg", source=f"v{v:02d}.mp4",
                    frame=frame, face=face, video=f"v{v:02d}", group=f"g{v // 3}", label=label, score=score,
                    confidence=float(rng.uniform(0.0, 1.0)),
                ))
    for i in range(25):
        rows.append(FaceScore(dataset="live-only", path=f"/nonexistent/live/{i}.png", label=0,
                              score=float(rng.beta(2, 6))))
    return rows


@pytest.fixture(scope="module")
def synthetic_report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, list[FaceScore], Threshold]:
    rows = _synthetic_rows()
    threshold = Threshold(0.45, "eer")
    out = tmp_path_factory.mktemp("report")
    report = write_report(rows, out, threshold=threshold, band=0.25, model_info={"model": "vit_tiny", "epochs": 3},
                          bootstrap=BOOTSTRAP, seed=0, name="synthetic")
    return out, report, rows, threshold


def _by_video(rows: list[FaceScore], method: str) -> tuple[np.ndarray, np.ndarray]:
    """Video labels and scores computed by hand (videos sorted by id)."""
    members: dict[str, list[FaceScore]] = defaultdict(list)
    for r in rows:
        members[r.video].append(r)
    labels, scores = [], []
    for v in sorted(members):
        m = members[v]
        labels.append(m[0].label)
        if method == "mean":
            scores.append(np.mean([r.score for r in m]))
        elif method == "confidence_weighted":
            scores.append(sum(r.score * r.confidence for r in m) / sum(r.confidence for r in m))
        else:
            per_frame: dict[int, float] = defaultdict(lambda: -1.0)
            for r in m:
                per_frame[r.frame] = max(per_frame[r.frame], r.score)
            scores.append(np.mean(list(per_frame.values())))
    return np.array(labels), np.array(scores)


def test_report_writes_every_file(synthetic_report) -> None:
    out, report, _, _ = synthetic_report
    for rel in ("scores.csv", "metrics.json", "report.md", "index.html", "plots/reliability.png"):
        assert (out / rel).is_file(), rel
    for name in ("lab <videos>", "live-only"):
        for rel in report["files"]["datasets"][name].values():
            assert (out / rel).is_file() and (out / rel).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "roc" in report["files"]["datasets"]["lab <videos>"]
    assert "roc" not in report["files"]["datasets"]["live-only"]  # no ROC curve for one class
    assert json.loads((out / "metrics.json").read_text()) == report


def test_report_metrics_equal_direct_computation(synthetic_report) -> None:
    _, report, rows, threshold = synthetic_report
    lab = [r for r in rows if r.dataset == "lab <videos>"]
    y, s = np.array([r.label for r in lab]), np.array([r.score for r in lab])
    frame = report["datasets"]["lab <videos>"]["frame"]
    for key, value in metrics.binary_report(y, s, threshold.value).items():
        assert frame[key] == pytest.approx(value), key
    assert frame["ece"] == pytest.approx(expected_calibration_error(y, s))
    assert frame["resampled"] == "groups"
    groups = np.array([r.group for r in lab])
    assert frame["ci"]["auc"] == pytest.approx(list(metrics.bootstrap_ci(metrics.roc_auc, y, s, groups, n=BOOTSTRAP)))
    conf = np.array([r.confidence for r in lab])
    kept = conf >= 0.25
    assert frame["confident"]["coverage"] == pytest.approx(kept.mean())
    assert frame["confident"]["accuracy"] == pytest.approx(((s[kept] >= 0.45) == y[kept]).mean())
    assert frame["confident"]["n_uncertain"] == int((decide(s, threshold, conf, 0.25) == "uncertain").sum())

    video = report["datasets"]["lab <videos>"]["video"]
    assert video["n_videos"] == 36 and video["n_faces"] == len(lab)
    for method in ("mean", "confidence_weighted", "max_face_then_mean"):
        vy, vs = _by_video(lab, method)
        got = video["aggregations"][method]
        for key, value in metrics.binary_report(vy, vs, threshold.value).items():
            assert got[key] == pytest.approx(value), (method, key)
        vc = distance_confidence(vs, threshold)
        assert got["confident"]["coverage"] == pytest.approx((vc >= 0.25).mean())
    assert not np.allclose(_by_video(lab, "mean")[1], _by_video(lab, "max_face_then_mean")[1])


def test_report_intervals_contain_the_estimate(synthetic_report) -> None:
    _, report, _, _ = synthetic_report
    m = report["datasets"]["lab <videos>"]
    levels = [m["frame"], *m["video"]["aggregations"].values()]
    for level in levels:
        for name in ("auc", "eer", "ap"):
            low, high = level["ci"][name]
            assert 0.0 <= low <= level[name] + 1e-12 and level[name] - 1e-12 <= high <= 1.0, name
    assert m["frame"]["ci"]["auc"][1] - m["frame"]["ci"]["auc"][0] > 0.0


def test_report_single_class_dataset_has_note_and_no_nan(synthetic_report) -> None:
    out, report, rows, threshold = synthetic_report

    def no_nan(text: str) -> float:
        raise AssertionError(f"non-finite number {text} in metrics.json")

    json.loads((out / "metrics.json").read_text(), parse_constant=no_nan)
    live = report["datasets"]["live-only"]
    y = np.zeros(25, dtype=np.int64)
    s = np.array([r.score for r in rows if r.dataset == "live-only"])
    assert live["frame"]["accuracy"] == pytest.approx(metrics.accuracy(y, s, threshold.value))
    assert live["frame"]["bpcer"] == pytest.approx(metrics.bpcer(y, s, threshold.value))
    assert live["frame"]["auc"] is None and live["frame"]["apcer"] is None and live["frame"]["ci"] is None
    assert any("only real samples" in n for n in live["frame"]["notes"])
    assert live["video"] is None and live["notes"]
    md = (out / "report.md").read_text()
    assert "only real samples" in md


def test_report_markdown_and_html_show_everything(synthetic_report) -> None:
    out, report, _, threshold = synthetic_report
    frame = report["datasets"]["lab <videos>"]["frame"]
    auc_cell = f"{frame['auc']:.3f} [{frame['ci']['auc'][0]:.3f}, {frame['ci']['auc'][1]:.3f}]"
    md = (out / "report.md").read_text()
    assert "## lab <videos>" in md and auc_cell in md and markdown_table(report["datasets"]["live-only"]) in md
    assert md.count("videos (max face, then mean)") == 1  # only the set with videos has video rows

    page = (out / "index.html").read_text()
    assert "lab &lt;videos&gt;" in page and "lab <videos>" not in page  # escaped
    assert page.count("<table") == 1 + 1 + 2  # model, summary, one per dataset
    assert auc_cell in page and f"{threshold.value:.3f}" in page and "vit_tiny" in page
    sources = re.findall(r'<img[^>]* src="([^"]+)"', page)
    assert "plots/reliability.png" in sources and len(sources) >= 6
    for src in sources:
        assert (out / src).is_file(), src
    assert "no thumbnail" in page  # errors whose crops are missing are listed without an image


def test_scores_csv_round_trips(synthetic_report) -> None:
    out, _, rows, threshold = synthetic_report
    expected = complete_scores(rows, threshold, 0.25)
    assert read_scores_csv(out / "scores.csv") == expected
    assert {r.verdict for r in expected} == {"real", "fake", "uncertain"}
    table = {c: [getattr(r, c) for r in rows] for c in ("dataset", "path", "video", "label", "score", "confidence")}
    assert [(r.path, r.score) for r in scores_from_table(table)] == [(r.path, r.score) for r in rows]


def test_face_score_rejects_bad_values() -> None:
    with pytest.raises(RealfaceError, match="score must be a number in"):
        FaceScore(dataset="d", path="x.jpg", label=1, score=1.5)
    with pytest.raises(RealfaceError, match="label must be 0"):
        FaceScore(dataset="d", path="x.jpg", label=2, score=0.5)
    with pytest.raises(RealfaceError, match="verdict"):
        FaceScore(dataset="d", path="x.jpg", label=0, score=0.5, verdict="maybe")


def test_report_thumbnails_from_real_face_crops(shared_data: Path, tmp_path: Path) -> None:
    p = Protocol.from_manifests([shared_data / "dfdc"])
    items = read_dataset(p.datasets[0])[:20]
    rng = np.random.default_rng(3)
    rows = [FaceScore(dataset="dfdc", path=str(i.path), video=str(i.path), group=i.group, label=i.label,
                      score=float(rng.uniform())) for i in items]
    rows.append(FaceScore(dataset="dfdc", path=str(tmp_path / "missing.jpg"), label=0, score=0.99))
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    rows.append(FaceScore(dataset="dfdc", path=str(tmp_path / "broken.jpg"), label=0, score=0.98))
    threshold = Threshold(0.5, "eer")
    out = tmp_path / "report"
    report = write_report(rows, out, threshold=threshold, band=(0.1, 0.3), model_info={}, bootstrap=50)

    # a band per side: "real" from confidence 0.1 (p < 0.45), "fake" from 0.3 (p >= 0.65)
    assert report["band"] == {"real": 0.1, "fake": 0.3}
    confident = report["datasets"]["dfdc"]["frame"]["confident"]
    assert confident["n_kept"] == sum(r.score < 0.45 or r.score >= 0.65 for r in rows)
    assert "0.100 (real), 0.300 (fake)" in (out / "report.md").read_text()
    errors = report["datasets"]["dfdc"]["hardest_errors"]
    fp, fn = errors["false_positives"], errors["false_negatives"]
    expected_fp = sorted((r for r in rows if r.label == 0 and r.score >= 0.5), key=lambda r: -r.score)[:8]
    expected_fn = sorted((r for r in rows if r.label == 1 and r.score < 0.5), key=lambda r: r.score)[:8]
    assert [e["path"] for e in fp] == [r.path for r in expected_fp]
    assert [e["path"] for e in fn] == [r.path for r in expected_fn]
    assert fp[0]["thumbnail"] is None and fp[1]["thumbnail"] is None  # missing and unreadable: skipped
    real = [e for e in fp[2:] + fn]
    assert real and all(e["thumbnail"] for e in real)
    for e in real:
        with Image.open(out / e["thumbnail"]) as im:
            assert im.format == "JPEG" and max(im.size) <= 128
    page = (out / "index.html").read_text()
    for e in real:
        assert e["thumbnail"] in page
