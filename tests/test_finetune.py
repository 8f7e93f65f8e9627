"""`realface finetune` end to end on real faces: a generic binary task, SBI from real faces alone, and the
detectors that start from a pretraining run."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from realface.bundle import export_bundle, load_bundle
from realface.cli import main
from realface.data.labelled import DetectionFaces, build_items
from realface.eval.metrics import roc_auc
from realface.eval.report import read_scores_csv
from realface.faces.manifest import read_face_manifest
from realface.train import checkpoint as ckpt
from realface.train.finetune import VAL_SCORES, score_dataset

FAST = ["--epochs", "1", "--batch-size", "8", "--workers", "0", "--no-progress", "--max-steps-per-epoch", "2"]


@pytest.fixture(scope="module")
def antispoof(shared_data: Path, tmp_path_factory) -> Path:
    """The anti-spoofing frames through preprocess (64 px crops), every third frame in the val split."""
    from realface.faces.pipeline import PipelineConfig
    from realface.faces.preprocess import preprocess

    out = tmp_path_factory.mktemp("antispoof")
    preprocess([shared_data / "antispoof" / "manifest.csv"], out, config=PipelineConfig(crop_size=64), progress=False)
    with (out / "manifest.csv").open() as f:
        rows = list(csv.DictReader(f))
    for i, row in enumerate(rows):
        row["split"] = "val" if i % 3 == 0 else "train"
    split = out / "split.csv"
    with split.open("w", newline="") as f:
        writer = csv.DictWriter(f, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return split


def test_live_vs_spoof_beats_chance_on_its_val_split(antispoof, tmp_path):
    """The generic binary task: live (0) vs spoof (1). One subject and neighbouring frames, so an easy split:
    this checks that the whole loop learns, not how well anti-spoofing generalizes."""
    run = tmp_path / "ft"
    args = ["finetune", "--data", str(antispoof), "--out", str(run), "--img-size", "64", "--crop-size", "64",
            "--epochs", "2", "--batch-size", "16", "--blr", "0.01", "--workers", "0", "--no-progress"]  # fmt: skip
    assert main(args) == 0
    meta = ckpt.read_json(run / "best" / "meta.json")
    assert meta["selection"] == {"metric": "val_auc", "mode": "max"}
    assert meta["best_value"] > 0.75
    decision = ckpt.read_json(run / "decision.json")
    assert decision["val"]["n"] == 37 and 0.0 < decision["threshold"]["value"] < 1.0
    # every val face's score of the selected checkpoint, in a scores CSV that reproduces the stored AUC
    scores = read_scores_csv(run / VAL_SCORES)
    val_paths = [r["path"] for r in csv.DictReader(antispoof.open()) if r["split"] == "val"]
    assert sorted(Path(r.path).name for r in scores) == sorted(Path(p).name for p in val_paths)
    assert roc_auc([r.label for r in scores], [r.score for r in scores]) == pytest.approx(decision["val"]["auc"])
    bundle = load_bundle(run)
    assert bundle.decision.threshold == decision["threshold"]["value"] and bundle.pre.crop_size == 64


def test_sbi_only_from_real_faces(utk_crops, tmp_path):
    run = tmp_path / "sbi"
    args = ["finetune", "--data", str(utk_crops), "--out", str(run), "--img-size", "64", "--crop-size", "112",
            "--pseudo-fakes", "sbi", "--no-labelled-fakes", "--affine", "0.5", "--sbi-hulls", "lower", "inner",
            *FAST]  # fmt: skip
    assert main(args) == 0
    config = ckpt.read_json(run / "config.json")
    assert config["num_train"] == 32 and config["sbi_ratio"] == 1.0  # 16 reals + 16 pseudo-fakes
    assert config["sbi_hulls"] == ["lower", "inner"]  # the blends it learned, recorded
    assert main([*args[:-len(FAST)], "--sbi-hulls", "ears", *FAST]) == 2  # no such mask shape: one line, nothing trained
    assert config["augment"]["affine_prob"] == 0.5 and config["augment"]["jpeg_prob"] == 0.5  # what augmented them
    assert main([*args[:-len(FAST)], "--affine", "1.5", *FAST]) == 2  # a probability, said in one line
    assert not (run / "decision.json").exists()  # no validation set: nothing to fit a threshold on
    # without any fake, training is refused with a clear message
    assert main(["finetune", "--data", str(utk_crops), "--out", str(tmp_path / "x"), *FAST]) == 2


@pytest.fixture(scope="module")
def pretrain_run(utk_crops, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("pretrain") / "run"
    args = ["pretrain", "--data", str(utk_crops), "--out", str(run), "--img-size", "64", "--decoder-dim", "64",
            "--decoder-depth", "1", "--decoder-heads", "4", *FAST]  # fmt: skip
    assert main(args) == 0
    return run


@pytest.mark.parametrize("detector", ["competitive", "rffr"])
def test_detectors_from_a_pretraining_run(detector, pretrain_run, antispoof, tmp_path):
    run = tmp_path / detector
    args = ["finetune", "--data", str(antispoof), "--out", str(run), "--pretrained", str(pretrain_run),
            "--detector", detector, *(["--rffr-blocks", "2"] if detector == "rffr" else []), "--crop-size", "64",
            *FAST]  # fmt: skip
    assert main(args) == 0
    config = ckpt.read_json(run / "config.json")
    assert config["detector"]["img_size"] == 64  # taken from the pretraining run
    decision = ckpt.read_json(run / "decision.json")
    assert decision["confidence"] == ("evidential" if detector == "competitive" else "distance")
    bundle = load_bundle(run)
    assert bundle.config.name == detector
    exported = bundle.detector.export()
    assert exported.config.name == ("classifier" if detector == "competitive" else "rffr")
    if detector == "competitive":  # export_bundle keeps the branch less uncertain on the calibration faces
        val = read_scores_csv(run / VAL_SCORES)
        faces = DetectionFaces(build_items(read_face_manifest(antispoof)[:8]), bundle.pre)
        calibration = torch.stack([faces[i]["image"] for i in range(len(faces))])
        shipped = load_bundle(export_bundle(bundle, tmp_path / "export", calibration=calibration, fp16=False))
        chosen = bundle.detector.choose_branch(calibration)
        with torch.no_grad():
            full = bundle.detector(calibration).extras[f"logits_b{chosen + 1}"]
            torch.testing.assert_close(shipped.detector(calibration).logits, full)
        assert len(val) == decision["val"]["n"] and all(r.confidence is not None for r in val)


def test_ema_validates_and_keeps_the_weight_average(antispoof, tmp_path):
    """--ema: `best` is the moving average (the training state carries it), `last` the trained weights; the stored
    val scores are the average's, and a resumed run goes on averaging from where it stopped."""
    run = tmp_path / "ema"
    args = ["finetune", "--data", str(antispoof), "--out", str(run), "--model", "resnet18", "--img-size", "64",
            "--crop-size", "64", "--blr", "0.01", "--ema", "0.9", "--batch-size", "8", "--workers", "0",
            "--no-progress", "--max-steps-per-epoch", "2"]  # fmt: skip
    assert main([*args, "--epochs", "1"]) == 0
    assert ckpt.read_json(run / "config.json")["layout"] == "channels_last"  # a CNN trains channels-last
    best, last = (ckpt.load_weights(run / tag / ckpt.WEIGHTS) for tag in ("best", "last"))
    average = ckpt.load_train_state(run / "last")["ema"]
    assert best.keys() == average.keys() == last.keys()
    for name in best:
        torch.testing.assert_close(best[name], average[name].to(best[name].dtype))
    floats = [k for k in best if best[k].is_floating_point()]
    assert any(not torch.equal(best[k], last[k]) for k in floats)
    bundle = load_bundle(run)
    val = DetectionFaces(build_items([r for r in read_face_manifest(antispoof) if r.extra["split"] == "val"]), bundle.pre)
    probs, _ = score_dataset(bundle.detector, val, 16)
    stored = {Path(r.path).name: r.score for r in read_scores_csv(run / VAL_SCORES)}
    assert [stored[Path(item.record.path).name] for item in val.items] == pytest.approx(probs.tolist(), abs=1e-5)
    assert main([*args, "--epochs", "2", "--resume"]) == 0
    assert ckpt.read_json(run / "last" / "meta.json")["epoch"] == 1
    moved = ckpt.load_train_state(run / "last")["ema"]
    assert any(not torch.equal(moved[k], average[k]) for k in floats)
    # the ablation table prices the run at its layout's training rate
    rates = tmp_path / "rates.json"
    rates.write_text(json.dumps({"finetune": {"resnet18@64": 0.01, "resnet18@64:channels_last": 0.02}}))
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "ablation_runs.py"
    rows = tmp_path / "rows.json"
    done = subprocess.run([sys.executable, str(script), str(run), "--rates", str(rates), "--bootstrap", "20",
                           "--json", str(rows)], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    (row,) = json.loads(rows.read_text())
    faces = 2 * ckpt.read_json(run / "config.json")["num_train"]  # 2 epochs (of whole epochs' faces)
    assert row["faces_trained"] == faces and row["idle_minutes"] == round(faces / 0.02 / 60, 1)


def test_init_continues_from_a_trained_detector(antispoof, tmp_path):
    """--init starts from a trained detector's weights, keeps its architecture and input side, takes the training
    fields from the command line: with a vanishing learning rate the continued run scores every val face as the
    run it started from did."""
    first = tmp_path / "first"
    common = ["--data", str(antispoof), "--crop-size", "64", *FAST]
    assert main(["finetune", "--out", str(first), "--img-size", "64", "--blr", "0.01", *common]) == 0
    second = tmp_path / "second"
    args = ["finetune", "--out", str(second), "--init", str(first), "--model", "resnet18", "--img-size", "96",
            "--drop-path", "0", "--blr", "1e-12", *common]  # fmt: skip
    assert main(args) == 0
    config = ckpt.read_json(second / "config.json")
    assert config["init"] == str(first)
    assert (config["detector"]["encoder"], config["detector"]["img_size"]) == ("vit_tiny_patch16", 64)
    assert config["detector"]["drop_path"] == 0.0
    before = {Path(r.path).name: r.score for r in read_scores_csv(first / VAL_SCORES)}
    after = {Path(r.path).name: r.score for r in read_scores_csv(second / VAL_SCORES)}
    assert before.keys() == after.keys() and len(set(before.values())) > 1
    assert all(abs(after[k] - before[k]) < 1e-4 for k in before)
    # a pretraining run and a trained detector are two different starts
    both = ["finetune", "--out", str(tmp_path / "x"), "--init", str(first), "--pretrained", str(first), *common]
    assert main(both) == 2


def test_teacher_loss_is_zero_at_the_teacher_and_pulls_toward_it():
    from realface.train.finetune import teacher_loss

    teacher = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.5, 0.5]])
    assert teacher_loss(teacher.log(), teacher).item() == pytest.approx(0.0, abs=1e-6)
    logits = torch.zeros(3, 2, requires_grad=True)
    before = teacher_loss(logits, teacher)
    before.backward()
    with torch.no_grad():
        after = teacher_loss(logits - 1.0 * logits.grad, teacher)
    assert before.item() > 0 and after.item() < before.item()
    assert (logits.grad[:, 1] > 0).tolist() == [True, False, False]  # p(fake) pushed down where the teacher says real


def test_a_student_learns_from_teachers_that_take_its_faces(antispoof, tmp_path):
    """--teacher: the run records its teachers and logs the teachers' loss each step; a teacher that takes other
    faces (another input side) is refused in one line before training."""
    common = ["--data", str(antispoof), "--model", "resnet18", "--crop-size", "64", *FAST]
    teacher = tmp_path / "teacher"
    assert main(["finetune", "--out", str(teacher), "--img-size", "64", *common]) == 0
    student = tmp_path / "student"
    assert main(["finetune", "--out", str(student), "--img-size", "64", "--teacher", str(teacher), str(teacher),
                 "--teacher-weight", "0.5", *common]) == 0  # fmt: skip
    config = ckpt.read_json(student / "config.json")
    assert config["teachers"] == [str(teacher)] * 2 and config["teacher_weight"] == 0.5
    with (student / "log.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 and all(float(r["teacher"]) > 0 for r in rows)
    rates = tmp_path / "rates.json"
    rates.write_text(json.dumps({"finetune": {"resnet18@64:channels_last": 10.0}}))
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "ablation_runs.py"
    table = subprocess.run([sys.executable, str(script), str(teacher), str(student), "--rates", str(rates), "--bootstrap", "10"],
                           check=True, capture_output=True, text=True).stdout.splitlines()  # fmt: skip
    assert "| 74 | 0.1 |" in table[2] and "teachers" not in table[2]  # 74 faces x 1 epoch at 10 faces/s: priced
    assert "teachers teacher + teacher" in table[3] and "| - |" in table[3]  # the student: not priced
    assert main(["finetune", "--out", str(tmp_path / "other"), "--img-size", "96", "--teacher", str(teacher), *common]) == 2
    assert main(["finetune", "--out", str(tmp_path / "neg"), "--img-size", "64", "--teacher", str(teacher),
                 "--teacher-weight", "-1", *common]) == 2  # fmt: skip


def test_only_taught_faces_get_the_teachers_loss():
    """FinetuneTask: the teachers score the rows of a batch with "taught" 1 and no other; a batch without any adds
    nothing to the labels' loss."""
    from realface.models.detectors import ClassifierOptions, DetectorConfig, build_detector
    from realface.train.finetune import FinetuneTask, teacher_loss

    torch.manual_seed(0)
    config = DetectorConfig(name="classifier", encoder="resnet18", img_size=64, options=ClassifierOptions(mask_weight=0.0))
    student, teacher = build_detector(config).eval(), build_detector(config).eval()
    batch = {"image": torch.randn(4, 3, 64, 64), "label": torch.tensor([0, 1, 0, 1])}
    plain, _ = FinetuneTask(None, 4, 0).loss(student, batch)
    task = FinetuneTask(None, 4, 0, [teacher], teacher_weight=2.0)
    loss, parts = task.loss(student, {**batch, "taught": torch.zeros(4)})
    assert loss.item() == pytest.approx(plain.item()) and parts["teacher"].item() == 0.0
    loss, parts = task.loss(student, {**batch, "taught": torch.tensor([1.0, 0.0, 0.0, 1.0])})
    with torch.no_grad():
        rows = batch["image"][[0, 3]]
        want = teacher_loss(student(rows).logits, teacher(rows).logits.softmax(dim=1))
    assert parts["teacher"].item() == pytest.approx(want.item(), rel=1e-5) and want.item() > 0
    assert loss.item() == pytest.approx(plain.item() + 2.0 * want.item(), rel=1e-5)


def test_teacher_data_marks_the_faces_of_its_manifests_and_their_sbi_fakes(antispoof, tmp_path):
    """--teacher-data: the faces of the named manifests, and the SBI fakes made from them, are taught; the others
    are not; --no-teacher-sbi: not the SBI fakes; --sbi-data: SBI fakes of those manifests' reals only; the run records
    them. A manifest with no training face, or --teacher-data or --no-teacher-sbi without --teacher, or --sbi-data
    without SBI: one-line error."""
    from realface.labels import label_to_int
    from realface.train.finetune import _in_manifests, _taught_items
    from realface.train.pretrain import load_face_records

    with antispoof.open() as f:
        rows = list(csv.DictReader(f))
    parts = {}
    for name, keep in {"a": lambda i, r: r["split"] == "train" and i % 2 == 0, "b": lambda i, r: i % 2 == 1,
                       "val": lambda i, r: r["split"] == "val"}.items():  # fmt: skip
        parts[name] = antispoof.parent / f"part-{name}.csv"
        with parts[name].open("w", newline="") as f:
            writer = csv.DictWriter(f, list(rows[0]))
            writer.writeheader()
            writer.writerows(r for i, r in enumerate(rows) if keep(i, r))
    records = [r for r in load_face_records([parts["a"], parts["b"]]) if r.extra.get("split") != "val"]
    items = _taught_items(build_items(records, sbi_ratio=1.0), [parts["a"]])
    in_a = {r.path for r in load_face_records([parts["a"]])}
    assert {it.kind for it in items if it.taught} == {"face", "sbi"} and any(not it.taught for it in items)
    assert all(it.taught == (it.record.path in in_a) for it in items)
    # --no-teacher-sbi: the faces themselves only, with or without --teacher-data
    faces_only = _taught_items(build_items(records, sbi_ratio=1.0), [parts["a"]], sbi=False)
    assert all(it.taught == (it.kind == "face" and it.record.path in in_a) for it in faces_only)
    every_face = _taught_items(build_items(records, sbi_ratio=1.0), None, sbi=False)
    assert {it.kind for it in every_face if it.taught} == {"face"} and any(it.kind == "sbi" for it in every_face)
    # --sbi-data: blends of the reals of those manifests only, --sbi-ratio per real of them
    blends = [it for it in build_items(records, sbi_ratio=1.0, sbi_from=_in_manifests([parts["a"]])) if it.kind == "sbi"]
    reals = [r for r in records if label_to_int(r.label) == 0]
    assert 0 < len(blends) == len([r for r in reals if r.path in in_a]) < len(reals)
    assert all(it.record.path in in_a for it in blends)

    common = ["--model", "resnet18", "--img-size", "64", "--crop-size", "64", *FAST]
    teacher = tmp_path / "teacher"
    assert main(["finetune", "--data", str(antispoof), "--out", str(teacher), *common]) == 0
    student = tmp_path / "student"
    assert main(["finetune", "--data", str(parts["a"]), str(parts["b"]), "--out", str(student), "--init", str(teacher),
                 "--teacher", str(teacher), "--teacher-data", str(parts["a"]), "--no-teacher-sbi", "--pseudo-fakes", "sbi",
                 "--sbi-ratio", "1", "--sbi-data", str(parts["a"]), *common]) == 0  # fmt: skip
    config = ckpt.read_json(student / "config.json")
    assert config["teacher_data"] == [str(parts["a"])] == config["sbi_data"] and config["teacher_sbi"] is False
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "ablation_runs.py"
    row = subprocess.run([sys.executable, str(script), str(student), "--bootstrap", "10"], check=True, capture_output=True,
                         text=True).stdout.splitlines()[2]  # fmt: skip
    assert "teachers teacher on " in row and "part-a.csv only (not on SBI fakes)" in row
    assert main(["finetune", "--data", str(parts["a"]), str(parts["b"]), "--out", str(tmp_path / "none"), "--teacher",
                 str(teacher), "--teacher-data", str(parts["val"]), *common]) == 2  # fmt: skip
    assert main(["finetune", "--data", str(antispoof), "--out", str(tmp_path / "alone"), "--teacher-data",
                 str(antispoof), *common]) == 2  # fmt: skip
    assert main(["finetune", "--data", str(antispoof), "--out", str(tmp_path / "alone"), "--no-teacher-sbi", *common]) == 2
    assert main(["finetune", "--data", str(antispoof), "--out", str(tmp_path / "alone"), "--sbi-data", str(antispoof),
                 *common]) == 2  # no --pseudo-fakes sbi  # fmt: skip
    assert main(["finetune", "--data", str(parts["a"]), str(parts["b"]), "--out", str(tmp_path / "alone"), "--pseudo-fakes",
                 "sbi", "--sbi-data", str(parts["val"]), *common]) == 2  # fmt: skip


def test_ensemble_runs_averages_the_runs_logits(tmp_path):
    """benchmarks/ensemble_runs.py: two runs that each rank one fake below a real; their mean logit ranks all
    fakes first (AUC 1), which neither run does alone (AUC 0.75 each)."""
    header = "dataset,path,source,frame,face,video,group,label,score,confidence,verdict\n"
    cases = {"a": [0.1, 0.6, 0.5, 0.9], "b": [0.1, 0.6, 0.9, 0.5]}  # faces: real, real, fake, fake
    for run, scores in cases.items():
        (tmp_path / run).mkdir()
        rows = [f"val,f{i}.png,,-1,0,,g{i},{int(i >= 2)},{s},," for i, s in enumerate(scores)]
        (tmp_path / run / "val_scores.csv").write_text(header + "\n".join(rows) + "\n")
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "ensemble_runs.py"
    out = subprocess.run([sys.executable, str(script), str(tmp_path / "a"), str(tmp_path / "b"), "--bootstrap", "20"],
                         check=True, capture_output=True, text=True).stdout  # fmt: skip
    assert "| a | 0.750" in out and "| b | 0.750" in out and "| ensemble (mean logit) | 1.000" in out
