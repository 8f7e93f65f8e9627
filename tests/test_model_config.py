"""A model's config.json checked field by field before anything is built: each malformed config is one line
naming the field and exit status 2 from `realface detect --model`, with no traceback and no warning; bad
options are refused the same way before any input is read."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import cv2
import pytest
from skimage import data as skdata

from realface.bundle import load_bundle, validate_config
from realface.cli import main
from realface.errors import RealfaceError


@pytest.fixture(scope="module")
def astronaut(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("img") / "astronaut.jpg"
    cv2.imwrite(str(path), cv2.cvtColor(skdata.astronaut(), cv2.COLOR_RGB2BGR))
    return path


def broken_model(tiny_model: Path, out: Path, edit) -> Path:
    """A copy of the tiny model whose config.json is `edit(config)` (the edit may return a new value)."""
    shutil.copytree(tiny_model, out)
    config = json.loads((out / "config.json").read_text())
    edited = edit(config)
    (out / "config.json").write_text(json.dumps(config if edited is None else edited))
    return out


def _set(path: str, value):
    def edit(config):
        *parents, last = path.split(".")
        node = config
        for key in parents:
            node = node[key]
        node[last] = value

    return edit


CASES = [  # (edit, words the message must hold)
    (_set("decision.threshold.value", "abc"), "decision.threshold.value must be a number in [0, 1], got 'abc'"),
    (_set("decision.threshold", 1.5), "decision.threshold must be a number in [0, 1], got 1.5"),
    (_set("decision", [0.5, 0.1]), "decision must be a JSON object when present, got [0.5, 0.1]"),
    (_set("decision.temperature", 0), "decision.temperature must be a number > 0, got 0"),
    (_set("decision.confidence", "vibes"), "decision.confidence must be 'distance' or 'evidential'"),
    (_set("decision.band", {"real": 0.1}), 'decision.band must be one number in [0, 1] or {"real": r, "fake": f}'),
    (_set("decision.band", 1.2), "decision.band must be one number in [0, 1]"),
    (_set("detector", None), "detector must be a JSON object, got None"),
    (_set("detector.img_size", "abc"), "detector.img_size must be an integer, got 'abc'"),
    (_set("detector.freeze", 1), "detector.freeze must be true or false, got 1"),
    (_set("detector.name", "nope"), "detector: unknown detector 'nope'"),
    (lambda c: c.pop("preprocessing") and None, "preprocessing must be a JSON object, got None"),
    (lambda c: c.pop("kind") and None, "kind must be 'detector' (a finetune run) or 'detector-export', got None"),
    (_set("preprocessing.std", [0.2, 0.0, 0.2]), "preprocessing.std (G) must be a number > 0, got 0.0"),
    (_set("preprocessing.mean", [0.5]), "preprocessing.mean must be a list of 3 numbers (R, G, B), got [0.5]"),
    (_set("preprocessing.size", 64), "unknown preprocessing field(s): size"),
    (_set("card", "hello"), "card must be a JSON object when present, got 'hello'"),
    (lambda c: [c], "must hold a JSON object, got a JSON list"),
    (_set("kind", "pretrain"), "holds a 'pretrain' run, not a detector"),
]


@pytest.mark.parametrize("edit, words", CASES, ids=[words.split(" must")[0][:40] for _, words in CASES])
def test_malformed_config_is_one_line_exit_2(tiny_model: Path, astronaut: Path, tmp_path: Path, capsys, edit,
                                             words: str) -> None:  # fmt: skip
    model = broken_model(tiny_model, tmp_path / "model", edit)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # std = 0 used to print RuntimeWarnings before failing
        code = main(["detect", str(astronaut), "--model", str(model), "--no-progress"])
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""
    assert captured.err.count("\n") == 1 and words in captured.err, captured.err
    assert str(model / "config.json") in captured.err


def test_valid_configs_pass(tiny_model: Path) -> None:
    from realface.bundle import default_weights_dir

    for folder in (tiny_model, default_weights_dir()):
        validate_config(json.loads((folder / "config.json").read_text()), "config.json")
    with pytest.raises(RealfaceError, match="decision.json"):  # a run folder's decision.json is checked too
        validate_config({"kind": "detector", "detector": {}, "preprocessing": {}}, "run/config.json", decision=[1])
    assert load_bundle(tiny_model).pre.std == (0.229, 0.224, 0.225)


def test_a_band_per_side_round_trips_through_the_config() -> None:
    from realface.model import Decision

    pair = Decision.from_json({"threshold": {"value": 0.54, "policy": "eer"}, "band": {"real": 0.31, "fake": 0.59}})
    assert pair.band == (0.31, 0.59) and pair.to_json()["band"] == {"real": 0.31, "fake": 0.59}
    one = Decision.from_json({"band": {"real": 0.2, "fake": 0.2}})
    assert one.band == 0.2 and Decision.from_json(one.to_json()).band == 0.2
    validate_config({"kind": "detector", "detector": {}, "preprocessing": {}}, "run/config.json", decision=pair.to_json())


def test_real_command_prints_no_traceback(tiny_model: Path, astronaut: Path, tmp_path: Path) -> None:
    model = broken_model(tiny_model, tmp_path / "model", _set("preprocessing.std", [0, 0, 0]))
    result = subprocess.run(
        [sys.executable, "-m", "realface", "detect", str(astronaut), "--model", str(model)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 2 and "Traceback" not in result.stderr and "Warning" not in result.stderr
    assert result.stderr.strip().count("\n") == 0 and "preprocessing.std (R) must be a number > 0" in result.stderr


@pytest.mark.parametrize("kind", ["file", "under a file"])
def test_bad_heatmap_folder_is_refused_before_the_scan(tiny_model: Path, astronaut: Path, tmp_path: Path, capsys,
                                                       monkeypatch: pytest.MonkeyPatch, kind: str) -> None:  # fmt: skip
    from realface.detect import Scanner

    monkeypatch.setattr(Scanner, "scan", lambda *a, **k: pytest.fail("scanned before checking --heatmap"))
    existing = tmp_path / "heat.txt"
    existing.write_text("a file")
    target = existing if kind == "file" else existing / "sub" / "heat"
    assert main(["detect", str(astronaut), "--model", str(tiny_model), "--heatmap", str(target)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and (
        "is a file, not a folder" in err if kind == "file" else f"cannot be created: {existing} is a file" in err
    )
    assert existing.read_text() == "a file" and not (tmp_path / "heat.txt" / "sub").exists()


def test_torch_free_detector_schema_matches_the_registries() -> None:
    """The ONNX path checks a config's detector section without torch, from a table kept beside the loader; it
    must say what DetectorConfig and the detector registry say."""
    from realface.model import DETECTOR_FIELDS, DETECTOR_NAMES, field_types
    from realface.models.detectors import ALIASES, DETECTORS, DetectorConfig

    assert DETECTOR_FIELDS == {k: v for k, v in field_types(DetectorConfig).items() if k != "options"}
    assert set(DETECTOR_NAMES) == set(DETECTORS) | set(ALIASES)
