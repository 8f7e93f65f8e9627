"""The recipe in its tiny configuration end to end, and `realface evaluate` on what it made."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from realface.cli import main
from realface.train import checkpoint as ckpt


@pytest.fixture(scope="module")
def tiny_recipe(shared_data: Path, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("recipe")
    weights = root / "weights"
    args = ["recipe", "--scale", "tiny", "--shared", str(shared_data), "--work", str(root / "work"), "--export", str(weights),
            "--no-progress"]  # fmt: skip
    assert main(args) == 0
    return weights


def test_recipe_exports_weights_with_a_model_card(tiny_recipe):
    config = ckpt.read_json(tiny_recipe / "config.json")
    assert config["kind"] == "detector-export"
    card = config["card"]
    assert card["recipe"]["preset"] == "tiny" and set(card["wall_time_s"]) >= {"pretrain", "finetune", "polish"}
    # the decision rule stored with the weights is the one fitted on the exported (fp16) weights and measured
    assert config["decision"]["val"] == card["dfdc_val"] and config["decision"]["threshold"]["value"] == card["dfdc_val"]["threshold"]
    # the polish stage continued the fine-tuned detector with UTKFace's reals added
    polish = ckpt.read_json(tiny_recipe.parent / "work" / "polish" / "config.json")
    assert polish["init"] == str(tiny_recipe.parent / "work" / "finetune")
    # on every 3rd face of the UTKFace shard, read from a manifest of its own whose paths resolve
    from realface.faces.manifest import read_face_manifest

    faces = tiny_recipe.parent / "work" / "faces"
    assert polish["data"] == [str(faces / "dfdc" / "manifest.csv"), str(faces / "utkface-every3.csv")]
    shard, third = read_face_manifest(faces / "utkface"), read_face_manifest(faces / "utkface-every3.csv")
    assert [r.path.resolve() for r in third] == [r.path.resolve() for r in shard[::3]] and len(third) == 8  # 24 faces
    assert all(r.path.is_file() and r.extra["race"] for r in third)
    assert card["polish"]["epochs_done"] == 1 and len(card["val_auc_per_epoch"]) == 1
    assert "then continued for 1 epoch(s) with UTKFace reals" in (tiny_recipe / "MODEL_CARD.md").read_text()
    assert len(card["ffpp_videos"]) == 7 and 0.0 <= card["dfdc_val"]["auc"] <= 1.0
    weights = ckpt.load_weights(tiny_recipe / "model.safetensors", dtype=None)
    assert {t.dtype for t in weights.values() if t.is_floating_point()} == {torch.float16}  # shipped as fp16
    assert "FF++ sample videos" in (tiny_recipe / "MODEL_CARD.md").read_text()


def test_recipe_ships_its_operating_point_for_few_false_alarms(tiny_recipe):
    """threshold_fpr: the shipped threshold is the lowest at which at most that share of the DFDC val reals score at
    or above it (target_fpr), fitted on the exported weights' val scores; the card says so. None = the EER point."""
    from dataclasses import replace

    from realface.errors import RealfaceError
    from realface.recipe import PRESETS, threshold_rule

    config = ckpt.read_json(tiny_recipe / "config.json")
    val = config["card"]["dfdc_val"]
    assert config["decision"]["threshold"]["policy"] == "target_fpr"
    assert config["decision"]["threshold"]["params"] == {"fpr": PRESETS["tiny"].threshold_fpr} == {"fpr": 0.05}
    assert val["n_real"] > 0 and val["fp"] <= 0.05 * val["n_real"]
    assert "at most 5% of the val reals score at or above it" in (tiny_recipe / "MODEL_CARD.md").read_text()
    assert threshold_rule(replace(PRESETS["tiny"], threshold_fpr=None)) == ("eer", {})
    for bad in (0.0, 1.0, -0.1):
        with pytest.raises(RealfaceError, match="threshold_fpr is a share of the val reals"):
            replace(PRESETS["tiny"], threshold_fpr=bad)
    # the SBI blends of the chain: the preset's mask shapes reach the runs that make them
    work = tiny_recipe.parent / "work"
    assert ckpt.read_json(work / "polish" / "config.json")["sbi_hulls"] == list(PRESETS["tiny"].sbi_hulls)
    assert ckpt.read_json(work / "polish" / "recipe_stage.json")["sbi_hulls"] == ["face", "landmarks", "inner"]
    with pytest.raises(RealfaceError, match="sbi_hulls"):
        replace(PRESETS["tiny"], sbi_hulls=("ears",))


def test_recipe_threshold_fpr_option_refits_only_the_exported_rule(tiny_recipe, shared_data, capsys):
    """`recipe --threshold-fpr eer` reuses the finished stages and exports the same weights with the EER point."""
    work, other = tiny_recipe.parent / "work", tiny_recipe.parent / "eer"
    stamp = (work / "polish" / "last" / "meta.json").stat().st_mtime_ns
    args = ["recipe", "--scale", "tiny", "--shared", str(shared_data), "--work", str(work), "--export", str(other),
            "--no-progress", "--threshold-fpr", "eer"]  # fmt: skip
    assert main(args) == 0
    assert (work / "polish" / "last" / "meta.json").stat().st_mtime_ns == stamp  # nothing retrained
    config = ckpt.read_json(other / "config.json")
    assert config["decision"]["threshold"]["policy"] == "eer" and config["card"]["recipe"]["threshold_fpr"] is None
    assert (other / "model.safetensors").read_bytes() == (tiny_recipe / "model.safetensors").read_bytes()
    assert "the EER point." in (other / "MODEL_CARD.md").read_text()
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(["recipe", "--scale", "tiny", "--threshold-fpr", "1.5"])
    assert exit_info.value.code == 2 and "share of the val reals in (0, 1)" in capsys.readouterr().err


def test_recipe_refuses_to_reuse_a_stage_made_with_other_settings(tiny_recipe, shared_data):
    from dataclasses import replace

    from realface.errors import RealfaceError
    from realface.recipe import PRESETS, run_recipe

    work = tiny_recipe.parent / "work"
    changed = replace(PRESETS["tiny"], layer_decay=0.9)  # pretraining unchanged (reused), fine-tuning not
    with pytest.raises(RealfaceError, match=r"finetune was made with other recipe settings \(layer_decay differ"):
        run_recipe(shared_data, work, changed, export_to=tiny_recipe.parent / "other", progress=False)
    assert not (tiny_recipe.parent / "other").exists()

    # A run recorded before a setting existed was made with that setting's old value (mask_weight: none).
    record = work / "finetune" / "recipe_stage.json"
    settings = json.loads(record.read_text())
    assert settings["mask_weight"] == PRESETS["tiny"].mask_weight > 0
    del settings["mask_weight"]
    record.write_text(json.dumps(settings))
    with pytest.raises(RealfaceError, match=r"\(mask_weight differ"):
        run_recipe(shared_data, work, PRESETS["tiny"], export_to=tiny_recipe.parent / "other", progress=False)


def test_recipe_fine_tunes_on_utkface_reals_balanced_by_group(tiny_recipe, shared_data, tmp_path):
    """utk_reals adds the UTKFace shard's real photos to fine-tuning; balance_groups draws its epochs balanced over
    their race, gender and age; a finished stage made so is reused, not refused (its settings read back equal)."""
    from dataclasses import replace

    from realface.errors import RealfaceError
    from realface.recipe import PRESETS, finetune_stage

    faces = tiny_recipe.parent / "work" / "faces"
    cfg = replace(PRESETS["tiny"], utk_reals=True, balance_groups=("race", "gender", "age"), affine_prob=0.5)
    data = [faces / "dfdc" / "manifest.csv", faces / "utkface"]
    finetune_stage(cfg, data, tmp_path / "ft", None, progress=False)
    config = ckpt.read_json(tmp_path / "ft" / "config.json")
    assert config["data"] == [str(d) for d in data] and config["augment"]["affine_prob"] == 0.5
    record = config["balance_groups"]
    assert record["columns"] == ["race", "gender", "age"]
    assert "ungrouped" in record["shares"] and len(record["shares"]) >= 3  # DFDC keeps its share; UTKFace's groups
    before = (tmp_path / "ft" / "last" / "meta.json").read_text()
    finetune_stage(cfg, data, tmp_path / "ft", None, progress=False)  # done: reused as it is
    assert (tmp_path / "ft" / "last" / "meta.json").read_text() == before
    with pytest.raises(RealfaceError, match="needs utk_reals or polish_epochs"):
        replace(PRESETS["tiny"], polish_epochs=0, balance_groups=("race",))
    with pytest.raises(RealfaceError, match="affine_prob is a probability"):
        replace(PRESETS["tiny"], affine_prob=2.0)


def test_detect_uses_the_recipe_weights(tiny_recipe, shared_data, capsys):
    video = shared_data / "ffpp-videos" / "FaceSwap" / "634_660.mp4"
    assert main(["detect", str(video), "--model", str(tiny_recipe), "--frames", "2", "--json", "--no-progress"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["model"]["card"]["recipe"]["preset"] == "tiny"
    assert out["results"][0]["status"] == "ok" and out["results"][0]["verdict"] in {"real", "fake", "uncertain"}


def test_evaluate_writes_the_report(tiny_recipe, shared_data, tmp_path, capsys):
    report = tmp_path / "report"
    ffpp = shared_data / "ffpp-videos" / "manifest.csv"
    args = ["evaluate", "--model", str(tiny_recipe), "--data", str(ffpp), "--out", str(report), "--frames", "2",
            "--bootstrap", "50", "--no-progress"]  # fmt: skip
    assert main(args) == 0
    assert "ffpp-videos" in capsys.readouterr().out
    metrics = json.loads((report / "metrics.json").read_text())
    ds = metrics["datasets"]["ffpp-videos"]
    assert ds["frame"]["n"] == 14 and ds["video"] is not None  # 7 videos x 2 frames
    assert (report / "index.html").is_file() and (report / "scores.csv").is_file()
    assert list((report / "plots").glob("*.png"))
    # a protocol that names a missing file is a one-line error
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ndatasets:\n  a: {data: nowhere.csv}\n")
    assert main(["evaluate", "--model", str(tiny_recipe), "--protocol", str(bad), "--out", str(tmp_path / "r")]) == 2


def test_every_recipe_preset_can_be_named_on_the_command_line():
    from realface.cli import RECIPE_PRESETS
    from realface.recipe import PRESETS

    assert set(RECIPE_PRESETS) == set(PRESETS)
    cpu, fair, dfdc = PRESETS["cpu"], PRESETS["cpu-fair"], PRESETS["cpu-dfdc"]
    assert cpu.polish_epochs == fair.polish_epochs > 0 == dfdc.polish_epochs  # the default polishes with UTKFace photos
    assert cpu.utk_every == fair.utk_every == 1  # on all of them, the default as its own teacher on DFDC
    assert cpu.polish_teacher > 0 == fair.polish_teacher  # cpu-fair learns the photos without it: fewest false alarms
    assert cpu.paired and not PRESETS["cpu-vit"].paired  # paired batches since 2026-12-04; the old chain as it was
    gpu = PRESETS["gpu"]  # the shipped chain: two teachers, then all of the photos with the model as its own teacher
    assert (gpu.teachers, gpu.utk_every) == (2, 1) and gpu.polish_teacher > 0


def test_recipe_polish_can_keep_the_detectors_own_scores_on_dfdc(shared_data, tmp_path):
    """polish_teacher: the polish is taught by the fine-tuned detector it continues, at that weight, on the DFDC faces
    only (the photos it learns are real are not taught); the card says so. With two UTKFace shards (utk_shards) the
    polish reads every third photo of each. polish_sbi_ratio sets the polish's SBI pseudo-fakes apart from the
    fine-tuning's (here none); teacher_sbi=False keeps the teacher off them (recorded, and said on the card); the
    mask shapes of the blends are a setting of the polish, not of a fine-tuning without blends."""
    from dataclasses import replace

    from realface.errors import RealfaceError
    from realface.faces.manifest import read_face_manifest
    from realface.recipe import PRESETS, run_recipe

    cfg = replace(PRESETS["tiny"], pretrain_epochs=0, polish_teacher=2.0, utk_shards=((0, 2), (1, 2)), sbi_ratio=0.0,
                  polish_sbi_ratio=1.0, teacher_sbi=False, sbi_photos=False)
    work = tmp_path / "work"
    run_recipe(shared_data, work, cfg, export_to=tmp_path / "weights", preset="tiny", progress=False)
    polish = ckpt.read_json(work / "polish" / "config.json")
    assert polish["init"] == polish["teachers"][0] == str(work / "finetune") and len(polish["teachers"]) == 1
    assert polish["teacher_data"] == [polish["data"][0]] and "dfdc" in polish["data"][0] and len(polish["data"]) == 3
    finetune = ckpt.read_json(work / "finetune" / "config.json")
    assert polish["teacher_weight"] == 2.0 and polish["teacher_sbi"] is False and "teachers" not in finetune
    assert (finetune["sbi_ratio"], polish["sbi_ratio"]) == (cfg.sbi_ratio, 1.0) == (0.0, 1.0)
    # how blends are made is a setting of the stage that makes them only: the fine-tuning is reused without them
    assert not {"sbi_hulls", "teacher_sbi"} & set(ckpt.read_json(work / "finetune" / "recipe_stage.json"))
    assert ckpt.read_json(work / "polish" / "recipe_stage.json")["teacher_sbi"] is False
    assert polish["sbi_data"] == polish["data"][:1]  # blends of the DFDC reals only (sbi_photos=False)
    with pytest.raises(RealfaceError, match=r"polish was made with other recipe settings \(sbi_hulls differ"):
        run_recipe(shared_data, work, replace(cfg, sbi_hulls=("lower",)), export_to=tmp_path / "other", progress=False)
    card = (tmp_path / "weights" / "MODEL_CARD.md").read_text()
    assert "while keeping its own p(fake) on the DFDC faces" in card and "UTKFace shards 0/2 and 1/2" in card
    assert "not on the SBI fakes made from them" in card and "SBI pseudo-fakes x1.0 made from its DFDC reals" in card
    faces = work / "faces"
    for i, subset in enumerate(polish["data"][1:]):
        assert subset == str(faces / f"utkface-manifest.shard{i}of2-every3.csv")
        shard = read_face_manifest(faces / "utkface" / f"manifest.shard{i}of2.csv")
        assert [r.path.resolve() for r in read_face_manifest(Path(subset))] == [r.path.resolve() for r in shard[::3]]
    with pytest.raises(RealfaceError, match=r"finetune was made with other recipe settings \(utk_shards differ"):
        run_recipe(shared_data, work, replace(cfg, utk_shards=((0, 2),)), export_to=tmp_path / "other", progress=False)
    with pytest.raises(RealfaceError, match="pseudo-fakes per real face: 0 or more"):
        replace(cfg, polish_sbi_ratio=-0.5)


def test_recipe_distils_teachers_it_trains_first(shared_data, tmp_path):
    """teachers=1: the recipe fine-tunes a teacher (seed 1) before the detector, which learns from it
    (`finetune --teacher`); the card says so. A teacher remade with other settings is not reused silently."""
    from dataclasses import replace

    from realface.errors import RealfaceError
    from realface.recipe import PRESETS, run_recipe

    cfg = replace(PRESETS["tiny"], pretrain_epochs=0, polish_epochs=0, teachers=1, teacher_weight=0.5)
    work = tmp_path / "work"
    card = run_recipe(shared_data, work, cfg, export_to=tmp_path / "weights", preset="tiny", progress=False)
    teacher, student = (ckpt.read_json(work / name / "config.json") for name in ("teacher1", "finetune"))
    assert teacher["train"]["seed"] == 1 and "teachers" not in teacher
    assert student["train"]["seed"] == 0 and student["teachers"] == [str(work / "teacher1")]
    assert student["teacher_weight"] == 0.5 and set(card["wall_time_s"]) >= {"teacher 1", "finetune"}
    assert "mean p(fake) of 1 teacher detectors" in (tmp_path / "weights" / "MODEL_CARD.md").read_text()
    with pytest.raises(RealfaceError, match=r"teacher1 was made with other recipe settings \(layer_decay differ"):
        run_recipe(shared_data, work, replace(cfg, layer_decay=0.9), export_to=tmp_path / "other", progress=False)
    with pytest.raises(RealfaceError, match="teachers must be >= 0"):
        replace(cfg, teachers=-1)


def test_ffpp_runs_benchmark_reports_every_sample_video(tiny_recipe, shared_data):
    """benchmarks/ffpp_runs.py: one line per model with every FF++ sample video's p(fake) and verdict, and how many
    fakes score above every original, the numbers the recipe's card holds for the same model."""
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "ffpp_runs.py"
    done = subprocess.run([sys.executable, str(script), str(tiny_recipe), "--shared", str(shared_data), "--frames", "2"],
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    line = done.stdout.strip().splitlines()[-1]
    card = ckpt.read_json(tiny_recipe / "config.json")["card"]  # measured with 2 frames a video too (tiny preset)
    for video in card["ffpp_videos"]:
        assert f"{video['method']} {video['p_fake']:.3f} ({video['verdict']})" in line
    assert line.endswith(" of 4")


def test_ffpp_runs_frame_aucs_against_hand_counts(tmp_path):
    """benchmarks/ffpp_runs.py --frame-scores: each fake's frames against its own original's (same group) and against
    every original's, from `detect --csv` rows; faceless rows are skipped, a fake without its original gets None."""
    from conftest import load_benchmark

    ffpp_runs = load_benchmark("ffpp_runs")
    manifest = tmp_path / "ffpp" / "manifest.csv"
    manifest.parent.mkdir()
    manifest.write_text("path,label,method,group\nA/1_2.mp4,fake,A,1\nB/9_8.mp4,fake,B,9\no/1.mp4,real,original,1\n"
                        "o/3.mp4,real,original,3\n")
    scores = {"A/1_2.mp4": [0.5, 0.9], "B/9_8.mp4": [0.2], "o/1.mp4": [0.4, 0.6], "o/3.mp4": [0.1, 0.3]}
    lines = ["path,kind,status,frame,face,p_fake"] + [f"{manifest.parent / v},video,ok,{i},0,{p}"
                                                      for v, ps in scores.items() for i, p in enumerate(ps)]
    lines.append(f"{manifest.parent / 'o/3.mp4'},video,ok,9,,")  # a frame without a face
    (tmp_path / "f.csv").write_text("\n".join(lines) + "\n")
    rows = ffpp_runs.frame_aucs(tmp_path / "f.csv", manifest)
    # A: 0.5 beats 0.4, 0.9 beats 0.4 and 0.6: 3 of 4 pairs against its own; against all four original frames 7 of 8.
    # B (its original 9 is not in the set): 0.2 beats 0.1 only, 1 of 4
    assert rows == [("A/1_2.mp4", 0.75, 0.875), ("B/9_8.mp4", None, 0.25)]


def test_polish_variant_reads_recipe_fields():
    """benchmarks/polish_variant.py: FIELD=VALUE pairs become RecipeConfig fields (literals; hull names split on
    commas); a field the recipe does not have, or no value, stops it with a one-line message."""
    from conftest import load_benchmark

    parse = load_benchmark("polish_variant").parse_changes
    assert parse(["sbi_hulls=lower,inner", "polish_sbi_ratio=1.0", "teacher_sbi=False", "polish_epochs=3"]) == {
        "sbi_hulls": ("lower", "inner"), "polish_sbi_ratio": 1.0, "teacher_sbi": False, "polish_epochs": 3}
    for bad in (["ears=1"], ["polish_epochs"]):
        with pytest.raises(SystemExit, match="not a RecipeConfig field=value"):
            parse(bad)


def test_ffpp_diagnostics_measure_each_fakes_change_to_its_own_original(shared_data, capsys):
    """benchmarks/ffpp_diagnostics.py change: each FF++ fake with its original in the set, 16 aligned frames; every
    one changes its original's lower face more than the rest of the crop, and both more than a JPEG q90 re-save."""
    import re

    from conftest import load_benchmark

    load_benchmark("ffpp_diagnostics").lower_face_change(shared_data)
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(" ")[0] for line in lines] == ["Deepfakes/519_515.mp4", "FaceSwap/634_660.mp4", "NeuralTextures/004_982.mp4"]
    for line in lines:
        numbers = [float(x) for x in re.findall(r"(?:face|rest|q90) (\d+\.\d)", line)]
        assert len(numbers) == 6  # lower face, rest, JPEG at 224 px and at 96 px
        for lower, rest, jpeg in (numbers[:3], numbers[3:]):
            assert lower > rest > jpeg
