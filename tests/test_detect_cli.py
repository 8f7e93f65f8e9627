"""`realface detect` end to end on real images and videos, with a small exported model."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from skimage import data as skdata

from realface.cli import main

VERDICTS = {"real", "fake", "uncertain"}


@pytest.fixture(scope="module")
def astronaut(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("img") / "astronaut.jpg"
    cv2.imwrite(str(path), cv2.cvtColor(skdata.astronaut(), cv2.COLOR_RGB2BGR))
    return path


def run_json(capsys, args: list[str]) -> tuple[int, dict]:
    code = main(["detect", *args, "--json", "--no-progress"])
    return code, json.loads(capsys.readouterr().out)


def test_image_and_video_json_with_heatmaps(tiny_model, astronaut, shared_data, tmp_path, capsys):
    video = shared_data / "ffpp-videos" / "original" / "519.mp4"
    heat = tmp_path / "heat"
    code, out = run_json(
        capsys, [str(astronaut), str(video), "--model", str(tiny_model), "--frames", "3", "--heatmap", str(heat)]
    )
    assert code == 0
    assert out["model"]["decision"]["threshold"]["value"] == 0.5
    image, vid = out["results"]
    assert image["kind"] == "image" and image["status"] == "ok" and image["verdict"] in VERDICTS
    assert 0.0 <= image["p_fake"] <= 1.0 and image["p_fake"] == max(f["p_fake"] for f in image["faces"])
    # Faces are listed left to right (HOG also takes a patch of the suit, lower left, for a face).
    assert [f["face"] for f in image["faces"]] == list(range(len(image["faces"])))
    assert [f["bbox"][0] for f in image["faces"]] == sorted(f["bbox"][0] for f in image["faces"])
    face = next(f for f in image["faces"] if f["bbox"][1] < 200)
    x0, y0, x1, y1 = face["bbox"]
    assert 150 < x0 < x1 < 300 and 50 < y0 < y1 < 200  # the astronaut's face in the 512x512 picture
    assert face["heatmap"].endswith(".png")  # lossless, at the crop's resolution
    crop_overlay = cv2.imread(face["heatmap"])
    assert crop_overlay.shape == (64, 64, 3)
    assert vid["kind"] == "video" and vid["frames_sampled"] == 3 and len(vid["faces"]) == 3
    assert vid["verdict"] in VERDICTS and all(f["frame"] >= 0 for f in vid["faces"])
    assert set(vid["top_frames"]) <= {f["frame"] for f in vid["faces"]}
    sheet = cv2.imread(vid["contact_sheet"])
    assert sheet is not None and sheet.shape[1] == 8 * 64
    # the overlay is not the plain crop: heat colours were blended in
    from realface.detect import Scanner
    from realface.eval.thresholds import band_sides
    from realface.model import load_model

    plain = Scanner(load_model(tiny_model)).pipeline.faces_in_image(skdata.astronaut())[0].crop
    assert np.abs(crop_overlay[..., ::-1].astype(int) - plain.astype(int)).mean() > 5


def test_csv_and_table_outputs(tiny_model, astronaut, capsys):
    assert main(["detect", str(astronaut), "--model", str(tiny_model), "--csv", "--no-progress"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert rows and rows[0]["path"] == str(astronaut) and rows[0]["verdict"] in VERDICTS
    assert main(["detect", str(astronaut), "--model", str(tiny_model), "--no-progress"]) == 0
    table = capsys.readouterr().out
    assert "astronaut.jpg" in table and any(v.upper() in table for v in VERDICTS) and "heatmap" not in table


def test_heatmap_files_are_listed_in_csv_and_table(tiny_model, astronaut, tmp_path, capsys):
    heat = tmp_path / "heat"
    args = [str(astronaut), "--model", str(tiny_model), "--heatmap", str(heat), "--no-progress"]
    assert main(["detect", *args, "--csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert rows and all(r["heatmap"].endswith(".png") and Path(r["heatmap"]).is_file() for r in rows)
    assert main(["detect", *args]) == 0
    table = capsys.readouterr().out
    assert table.splitlines()[0].split()[-1] == "heatmap" and all(r["heatmap"] in table for r in rows)


def test_folder_no_face_and_bad_files(tiny_model, astronaut, tmp_path, capsys):
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "face.jpg").write_bytes(astronaut.read_bytes())
    sky = np.tile(np.linspace(0, 255, 320, dtype=np.uint8)[None, :, None], (240, 1, 3))
    cv2.imwrite(str(folder / "sky.png"), sky)
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "broken.jpg").write_bytes(astronaut.read_bytes()[:300])
    (folder / "notes.mp4").write_bytes(b"this is not a video")
    code, out = run_json(capsys, [str(folder), "--model", str(tiny_model)])
    assert code == 1  # some inputs could not be read
    by_name = {Path(r["path"]).name: r for r in out["results"]}
    assert by_name["face.jpg"]["status"] == "ok"
    assert by_name["sky.png"]["status"] == "no_face" and by_name["sky.png"]["verdict"] is None
    for bad in ("empty.jpg", "broken.jpg", "notes.mp4"):
        assert by_name[bad]["status"] == "error"
        message = by_name[bad]["message"]
        assert message and "\n" not in message and "Traceback" not in message


def test_stdin_and_user_errors(tiny_model, astronaut, tmp_path):
    cmd = [sys.executable, "-m", "realface", "detect", "-", "--model", str(tiny_model), "--json", "--no-progress"]
    result = subprocess.run(cmd, input=astronaut.read_bytes(), capture_output=True, timeout=300)
    assert result.returncode == 0, result.stderr.decode()[-500:]
    assert json.loads(result.stdout)["results"][0]["path"] == "-"
    missing = subprocess.run(
        [sys.executable, "-m", "realface", "detect", str(tmp_path / "nope.jpg"), "--model", str(tiny_model)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert missing.returncode == 1  # an input that cannot be read: its error line, then exit 1
    assert "error: input not found" in missing.stdout and "Traceback" not in missing.stderr
    no_model = subprocess.run(
        [sys.executable, "-m", "realface", "detect", str(astronaut), "--model", str(tmp_path)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert no_model.returncode == 2 and "is not a model" in no_model.stderr and "Traceback" not in no_model.stderr


def test_shipped_default_weights_load_and_say_what_they_are(astronaut, capsys):
    """No --model: the weights inside the package, with their model card and the decision fitted on DFDC val."""
    code, out = run_json(capsys, [str(astronaut)])
    assert code == 0
    model = out["model"]
    assert model["card"]["recipe"]["preset"] in {"cpu", "gpu"} and "dfdc_val" in model["card"]
    # the operating point the recipe's preset names (few false alarms: at most that share of the DFDC val reals at or
    # above the threshold), refitted on what ships
    fpr = model["card"]["recipe"]["threshold_fpr"]
    assert model["decision"]["threshold"]["policy"] == "target_fpr" and model["decision"]["threshold"]["params"] == {"fpr": fpr}
    val = model["card"]["dfdc_val"]
    assert val["fp"] <= fpr * val["n_real"] and val["threshold"] == model["decision"]["threshold"]["value"]
    assert out["results"][0]["status"] == "ok" and out["results"][0]["verdict"] in VERDICTS


def test_shipped_weights_score_a_real_face_crop_deterministically(shared_data):
    """The packaged default: its config, crop settings and decision rule load, and a real DFDC val crop gets the
    same p(fake) twice, a probability, through the same crop settings the card records."""
    import numpy as np

    from realface.detect import Scanner
    from realface.eval.thresholds import band_sides
    from realface.model import load_model

    model = load_model()
    assert model.engine.name == "onnx"  # the shipped folder carries its graph
    assert model.pre.crop.size == model.card["recipe"]["crop_size"] and model.pre.img_size == model.card["recipe"]["img_size"]
    assert all(0 <= side < 1 for side in band_sides(model.decision.band)) and 0 < model.decision.threshold < 1
    crop = sorted((shared_data / "dfdc").rglob("*.jpg"))[0]
    scanner = Scanner(model, frames=2)
    first, second = scanner.scan(crop), scanner.scan(crop)
    assert first.status == "ok" and first.p_fake is not None and 0.0 <= first.p_fake <= 1.0
    assert np.isclose(first.p_fake, second.p_fake, atol=1e-6)


def test_project_model_card_is_the_shipped_card_plus_its_fairness_section():
    """MODEL_CARD.md at the top of the project describes the weights that ship: it opens with the card the recipe
    wrote into the package (numbers included) and adds what it can and cannot do (its known failure modes, the
    ablation it came from) and the fairness section measured on them."""
    repo = Path(__file__).resolve().parents[1]
    shipped = (repo / "src" / "realface" / "weights" / "default" / "MODEL_CARD.md").read_text()
    project = (repo / "MODEL_CARD.md").read_text()
    assert project.startswith(shipped.rstrip("\n"))
    added = project[len(shipped.rstrip()) :]
    assert "**Known failure modes.**" in added and "ablation" in added and "## Fairness" in added
    # and it is what benchmarks/project_card.py assembles from the package card and README.md, not a stale copy
    check = subprocess.run([sys.executable, str(repo / "benchmarks" / "project_card.py"), "--check"], timeout=60)
    assert check.returncode == 0


def test_video_faces_scored_while_decoding_equal_scoring_them_afterwards(tiny_model, shared_data):
    """A video's faces are scored in small batches as frames come in; the result is the same as finding all
    faces first and scoring the main ones in one batch, heatmaps included."""
    from realface.detect import Scanner, overlay
    from realface.model import load_model

    video = shared_data / "ffpp-videos" / "FaceSwap" / "634_660.mp4"
    scanner = Scanner(load_model(tiny_model), frames=12, heatmaps=True)
    result = scanner.scan(video)
    faces = [f.face for f in scanner.pipeline.faces_in_video(video) if f.face is not None]
    probs, conf, heats = scanner.score([f.crop for f in faces])
    assert result.status == "ok" and len(result.faces) == len(faces) == 12
    assert np.allclose([r.p_fake for r in result.faces], probs, atol=1e-6)
    assert np.allclose([r.confidence for r in result.faces], conf, atol=1e-6)
    assert all(np.abs(r.overlay.astype(int) - overlay(f.crop, h)).max() <= 1 for r, f, h in zip(result.faces, faces, heats))
    assert [r.bbox for r in result.faces] == [[round(float(v), 1) for v in f.bbox] for f in faces]
