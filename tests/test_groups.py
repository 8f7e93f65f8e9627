"""Error rates per group of people: hand-computed cases, age bins, protocol entries, the report, the CLI."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest

from realface.cli import main
from realface.errors import RealfaceError
from realface.eval.groups import CODE_TABLES, Grouping, age_bin, age_bin_names, check_age_bins, group_table
from realface.eval.protocol import Protocol, load_protocol, read_dataset, with_groups
from realface.eval.report import FaceScore, read_scores_csv, write_report
from realface.eval.thresholds import Threshold

# UTKFace's documented codes, written out here so that a change to the shared table is caught
UTK_RACE = {"0": "White", "1": "Black", "2": "Asian", "3": "Indian", "4": "Others"}
UTK_GENDER = {"0": "male", "1": "female"}


def _no_nan(text: str) -> float:
    raise AssertionError(f"non-finite number {text} in JSON")


# ---------------------------------------------------------------------------------------------
# rates per group against hand-computed values

# group a: reals 0.9 0.1 0.2 0.7, fakes 0.8 0.3; group b: reals only 0.6 0.6 0.1; threshold 0.5
LABELS = [0, 0, 0, 0, 1, 1, 0, 0, 0]
SCORES = [0.9, 0.1, 0.2, 0.7, 0.8, 0.3, 0.6, 0.6, 0.1]
UNCERTAIN = [0, 1, 0, 0, 0, 0, 1, 1, 0]
GROUPS = ["a"] * 6 + ["b"] * 3


def test_group_rates_equal_hand_computed_values() -> None:
    t = group_table(LABELS, SCORES, UNCERTAIN, GROUPS, 0.5, bootstrap=200)
    a, b = t["groups"]["a"], t["groups"]["b"]
    assert (a["n"], a["n_real"], a["n_fake"]) == (6, 4, 2)
    assert a["fpr"] == 2 / 4  # 0.9 and 0.7 of 4 reals are >= 0.5
    assert a["told_fake"] == 2 / 4  # ... and both confident
    assert a["fnr"] == 1 / 2  # 0.3 of 2 fakes is < 0.5
    assert a["uncertain"] == pytest.approx(1 / 6)
    assert a["auc"] == 5 / 8  # 0.8 beats 3 reals, 0.3 beats 2, of 4 x 2 pairs
    # a group with one class: the rates it cannot have are None, with a note; no NaN anywhere
    assert (b["n"], b["n_real"], b["n_fake"]) == (3, 3, 0)
    assert b["fpr"] == pytest.approx(2 / 3) and b["uncertain"] == pytest.approx(2 / 3)
    assert b["told_fake"] == 0.0  # both reals at 0.6 are above the threshold but "uncertain": told nothing
    assert b["fnr"] is None and b["auc"] is None and b["ci"]["fnr"] is None and b["ci"]["auc"] is None
    assert t["notes"] == ["only real faces in b: FNR and AUC are n/a there"]
    gap = t["gaps"]["fpr"]
    assert gap["value"] == pytest.approx(2 / 3 - 1 / 2) and (gap["highest"], gap["lowest"]) == ("b", "a")
    assert t["gaps"]["uncertain"]["value"] == pytest.approx(2 / 3 - 1 / 6)
    assert t["gaps"]["told_fake"]["value"] == 2 / 4 and t["gaps"]["told_fake"]["highest"] == "a"
    assert t["gaps"]["fnr"] is None and t["gaps"]["auc"] is None  # only one group has fakes
    json.loads(json.dumps(t, allow_nan=False), parse_constant=_no_nan)
    for record in t["groups"].values():
        for rate, ci in record["ci"].items():
            if ci is not None:
                assert 0.0 <= ci[0] <= record[rate] <= ci[1] <= 1.0, rate


def test_group_intervals_resample_whole_clusters() -> None:
    # each group is one cluster: every resample draws that cluster whole, so every interval is a point
    clusters = ["v1"] * 6 + ["v2"] * 3
    t = group_table(LABELS, SCORES, UNCERTAIN, GROUPS, 0.5, clusters, bootstrap=50)
    for record in t["groups"].values():
        for rate, ci in record["ci"].items():
            assert ci is None or ci == pytest.approx([record[rate]] * 2), rate
    assert t["gaps"]["fpr"]["ci"] == pytest.approx([1 / 6, 1 / 6])
    # faces drawn one by one: the intervals open up, and the gap's interval is that of the gap itself
    t = group_table(LABELS, SCORES, UNCERTAIN, GROUPS, 0.5, bootstrap=300, seed=1)
    low, high = t["gaps"]["fpr"]["ci"]
    assert low == 0.0 and 0.5 < high <= 1.0
    assert t["groups"]["a"]["ci"]["fpr"][1] - t["groups"]["a"]["ci"]["fpr"][0] > 0.3


def test_unknown_group_is_shown_but_not_in_gaps_and_order_is_natural() -> None:
    groups = ["60+", "unknown", "0-12", "13-19", "60+", "13-19"]
    t = group_table([0] * 6, [0.9, 0.9, 0.1, 0.1, 0.1, 0.6], [0] * 6, groups, 0.5, bootstrap=20)
    assert list(t["groups"]) == ["0-12", "13-19", "60+", "unknown"]
    assert t["groups"]["unknown"]["fpr"] == 1.0
    assert t["gaps"]["fpr"]["value"] == 0.5 and t["gaps"]["fpr"]["highest"] in ("13-19", "60+")
    assert any("not counted in the gaps" in n for n in t["notes"])


# ---------------------------------------------------------------------------------------------
# age bins and codes


@pytest.mark.parametrize(
    ("age", "group"),
    [("0", "0-12"), ("12", "0-12"), ("12.9", "0-12"), ("13", "13-19"), ("19", "13-19"), ("20", "20-39"),
     ("39", "20-39"), ("40", "40-59"), ("59", "40-59"), ("60", "60+"), ("116", "60+"), (" 45 ", "40-59"),
     ("", "unknown"), ("n/a", "unknown"), ("-1", "unknown"), ("nan", "unknown")],
)  # fmt: skip
def test_default_age_bins_edges(age: str, group: str) -> None:
    assert Grouping(columns=("age",)).groups_of({"age": age}) == {"age": group}


def test_custom_age_bins_and_bad_ones() -> None:
    assert age_bin_names((18, 30, 65)) == ("18-29", "30-64", "65+")
    assert [age_bin(a, (18, 30, 65)) for a in ("17", "18", "29", "30", "64", "65")] == [
        "unknown", "18-29", "18-29", "30-64", "30-64", "65+"]  # fmt: skip
    assert check_age_bins(["0", "13", "20"]) == (0, 13, 20)
    for bad in ([], [0, 13, 13], [20, 13], [-5, 10], ["a"], [0, 12.5]):
        with pytest.raises(RealfaceError, match="age bins must be increasing whole years"):
            check_age_bins(bad)
    with pytest.raises(SystemExit) as exit_info:  # argparse's usage error
        main(["evaluate", "--data", "x.csv", "--out", "r", "--age-bins", "0,20,13"])
    assert exit_info.value.code == 2


def test_codes_read_as_words_from_the_one_table() -> None:
    g = Grouping(columns=("race", "gender", "split"), codes="utkface")
    assert CODE_TABLES["utkface"] == {"race": UTK_RACE, "gender": UTK_GENDER}
    assert g.groups_of({"race": "3", "gender": "1", "split": "val"}) == {
        "race": "Indian", "gender": "female", "split": "val"}  # fmt: skip
    assert g.groups_of({"race": "7", "gender": ""}) == {"race": "7", "gender": "unknown", "split": "unknown"}
    inline = Grouping(columns=("gender",), codes={"gender": {0: "m", 1: "f"}})  # YAML gives int keys
    assert inline.group_of("gender", "1") == "f"
    with pytest.raises(RealfaceError, match="unknown code table 'utk'"):
        Grouping(codes="utk")
    with pytest.raises(RealfaceError, match="group columns repeat"):
        Grouping(columns=("race", "race"))


# ---------------------------------------------------------------------------------------------
# protocol files


def test_protocol_names_groups_codes_and_bins(shared_data: Path, tmp_path: Path) -> None:
    utk = shared_data / "utkface" / "manifest.csv"
    proto = tmp_path / "p.yaml"
    proto.write_text(
        "datasets:\n"
        f"  faces: {{data: {utk}, filter: {{age: ['12', '13']}}, groups: [race, age], codes: utkface,"
        " age_bins: [0, 13, 65]}\n"
        f"  utkface: {{data: {utk}, filter: {{age: '60'}}}}\n"
    )
    p = load_protocol(proto)
    faces, named = p.datasets
    assert faces.grouping.columns == ("race", "age") and faces.grouping.age_bins == (0, 13, 65)
    assert named.grouping.columns == () and named.grouping.codes == CODE_TABLES["utkface"]  # default by name
    items = read_dataset(faces)
    with utk.open(newline="") as fh:
        expected = [r for r in csv.DictReader(fh) if r["age"] in ("12", "13")]
    got = [faces.grouping.groups_of(i.fields) for i in items]
    assert got == [{"race": UTK_RACE[r["race"]], "age": "0-12" if r["age"] == "12" else "13-64"} for r in expected]

    # --groups / --age-bins apply to every dataset, and a column a manifest lacks is a clear error
    both = with_groups(p, ["gender"], (0, 18))
    assert [d.grouping.columns for d in both.datasets] == [("gender",), ("gender",)]
    assert [d.grouping.age_bins for d in both.datasets] == [(0, 18), (0, 18)]
    assert both.datasets[0].grouping.codes == CODE_TABLES["utkface"]  # codes kept
    with pytest.raises(RealfaceError, match=r"groups 'skin' names column 'skin', not in"):
        with_groups(Protocol.from_manifests([utk]), ["skin"], None)


@pytest.mark.parametrize(
    ("entry", "message"),
    [("groups: race", "groups must be a list"), ("groups: [tone]", "column 'tone', not in"),
     ("codes: celeba", "unknown code table"), ("codes: {race: White}", "codes must map"),
     ("age_bins: [0, 20, 10]", "age bins must be increasing")],
)  # fmt: skip
def test_protocol_group_entries_errors(shared_data: Path, tmp_path: Path, entry: str, message: str) -> None:
    proto = tmp_path / "p.yaml"
    proto.write_text(f"datasets:\n  u:\n    data: {shared_data / 'utkface' / 'manifest.csv'}\n    {entry}\n")
    with pytest.raises(RealfaceError, match=re.escape(message)):
        load_protocol(proto)


# ---------------------------------------------------------------------------------------------
# the report


def test_report_shows_groups_in_every_output(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    rows = []
    for i in range(120):
        label = int(i // 2 % 4 == 0)  # two faces per video, one label per video
        race = ("White", "Black", "Asian")[i // 2 % 3]
        score = float(np.clip(rng.normal(0.35 + 0.3 * label + 0.1 * (race == "Black"), 0.2), 0.0, 1.0))
        attributes = {"race": race} if i else {}  # one face without a value: the unknown group
        rows.append(FaceScore(dataset="set", path=f"/nonexistent/{i}.jpg", video=f"v{i // 2}", label=label,
                              score=score, attributes=attributes))
    rows.append(FaceScore(dataset="no groups", path="/nonexistent/x.jpg", label=0, score=0.2))
    out = tmp_path / "report"
    report = write_report(rows, out, threshold=Threshold(0.5, "eer"), band=0.2, model_info={}, bootstrap=100)
    json.loads((out / "metrics.json").read_text(), parse_constant=_no_nan)
    assert report["datasets"]["no groups"]["groups"] is None

    groups = report["datasets"]["set"]["groups"]
    assert list(groups["columns"]) == ["race"]
    table = groups["columns"]["race"]
    assert list(table["groups"]) == ["Asian", "Black", "White", "unknown"]
    scored = read_scores_csv(out / "scores.csv")  # verdicts filled in, groups kept (as by:race)
    assert [r.attributes for r in scored[:3]] == [{}, {"race": "White"}, {"race": "Black"}]
    by_hand = {}
    for name in ("Asian", "Black", "White"):
        members = [r for r in scored if r.attributes.get("race") == name]
        reals = [r for r in members if r.label == 0]
        fakes = [r for r in members if r.label == 1]
        by_hand[name] = np.mean([r.score >= 0.5 for r in reals])
        record = table["groups"][name]
        assert record["n"] == len(members) and record["n_fake"] == len(fakes)
        assert record["fpr"] == pytest.approx(by_hand[name])
        assert record["fnr"] == pytest.approx(np.mean([r.score < 0.5 for r in fakes]))
        assert record["uncertain"] == pytest.approx(np.mean([r.verdict == "uncertain" for r in members]))
        assert record["told_fake"] == pytest.approx(np.mean([r.verdict == "fake" for r in reals]))
        assert record["ci"]["fpr"][0] <= record["fpr"] <= record["ci"]["fpr"][1]
    assert table["gaps"]["fpr"]["value"] == pytest.approx(max(by_hand.values()) - min(by_hand.values()))
    set_rows = [r for r in scored if r.dataset == "set"]
    assert groups["overall"]["fpr"] == pytest.approx(np.mean([r.score >= 0.5 for r in set_rows if r.label == 0]))

    gap = table["gaps"]["fpr"]
    gap_cell = f"{gap['value']:.3f} [{gap['ci'][0]:.3f}, {gap['ci'][1]:.3f}] ({gap['highest']} - {gap['lowest']})"
    md = (out / "report.md").read_text()
    assert "### set: groups of people" in md and gap_cell in md and "| Asian | 40 (" in md
    assert "not counted in the gaps" in md
    page = (out / "index.html").read_text()
    assert gap_cell in page and page.count("<table") == 1 + 1 + 2 + 1  # model, summary, datasets, race
    plot = report["files"]["datasets"]["set"]["groups race"]
    assert f'src="{plot}"' in page and (out / plot).read_bytes()[:4] == b"\x89PNG"


# ---------------------------------------------------------------------------------------------
# the command line on real UTKFace faces


@pytest.fixture(scope="module")
def utk_sample(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """28 real UTKFace faces covering every race, both genders and the ages at the bin edges; a manifest
    with UTKFace's columns in a folder named utkface (so its code table applies by name)."""
    with (shared_data / "utkface" / "manifest.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    picked = {}
    for race in UTK_RACE:
        for gender in UTK_GENDER:
            picked.update({r["path"]: r for r in [r for r in rows if (r["race"], r["gender"]) == (race, gender)][:2]})
    for age in ("12", "13", "19", "20", "59", "60"):
        picked.update({r["path"]: r for r in [r for r in rows if r["age"] == age][:1]})
    folder = tmp_path_factory.mktemp("sample") / "utkface"
    folder.mkdir()
    with (folder / "manifest.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, ["path", "label", "age", "gender", "race"])
        writer.writeheader()
        for r in picked.values():
            writer.writerow({**r, "path": str(shared_data / "utkface" / r["path"])})
    return folder / "manifest.csv"


def test_evaluate_cli_groups_on_real_utkface_faces(tiny_model: Path, utk_sample: Path, tmp_path: Path, capsys):
    out = tmp_path / "report"
    args = ["evaluate", "--model", str(tiny_model), "--data", str(utk_sample), "--out", str(out), "--groups", "race",
            "gender", "age", "--bootstrap", "100", "--no-progress"]  # fmt: skip
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "utkface: FPR gap across race" in printed and "utkface: FPR gap across age" in printed

    report = json.loads((out / "metrics.json").read_text(), parse_constant=_no_nan)
    groups = report["datasets"]["utkface"]["groups"]
    with utk_sample.open(newline="") as fh:
        manifest = {r["path"]: r for r in csv.DictReader(fh)}
    scored = read_scores_csv(out / "scores.csv")
    assert len(scored) == len(manifest)  # one face per crop
    edges = (0, 13, 20, 40, 60)
    names = dict(zip(edges, ("0-12", "13-19", "20-39", "40-59", "60+")))
    for r in scored:
        row = manifest[r.path]
        age = names[max(e for e in edges if e <= int(row["age"]))]
        assert r.attributes == {"race": UTK_RACE[row["race"]], "gender": UTK_GENDER[row["gender"]], "age": age}
    for column in ("race", "gender", "age"):
        table = groups["columns"][column]
        expected = sorted({r.attributes[column] for r in scored})
        assert sorted(table["groups"]) == expected
        for name, record in table["groups"].items():
            members = [r for r in scored if r.attributes[column] == name]
            assert record["n"] == record["n_real"] == len(members)
            assert record["fpr"] == pytest.approx(np.mean([r.score >= 0.5 for r in members]))  # tiny model: t = 0.5
            assert record["fnr"] is None and record["auc"] is None  # all real
        fprs = [rec["fpr"] for rec in table["groups"].values()]
        assert table["gaps"]["fpr"]["value"] == pytest.approx(max(fprs) - min(fprs))
        assert table["gaps"]["fnr"] is None
        assert table["notes"][0] == "only real faces in every group: FNR and AUC are n/a there"
    assert set(groups["columns"]["age"]["groups"]) == {"0-12", "13-19", "20-39", "40-59", "60+"}
    md = (out / "report.md").read_text()
    assert "| Indian |" in md and "| female |" in md and "| 60+ |" in md
    page = (out / "index.html").read_text()
    for column in ("race", "gender", "age"):
        assert (out / report["files"]["datasets"]["utkface"][f"groups {column}"]).is_file()


def test_fairness_benchmark_draws_from_the_shard_preprocess_takes(tiny_model: Path, shared_data: Path, tmp_path: Path):
    import subprocess
    import sys

    from realface.faces.media import expand_inputs

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "fairness.py"
    args = [sys.executable, str(script), "--model", str(tiny_model), "--count", "20", "--bootstrap", "50",
            "--work", str(tmp_path)]  # fmt: skip
    done = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    folder = tmp_path / "utkface-shard1of3-n20-seed0"
    with (folder / "sample.csv").open(newline="") as fh:
        sample = list(csv.DictReader(fh))
    shards = [{str(it.path) for it in expand_inputs([shared_data / "utkface" / "manifest.csv"])[i::3]} for i in (0, 1)]
    assert len(sample) == 20 and {r["path"] for r in sample} <= shards[1] and not {r["path"] for r in sample} & shards[0]
    text = (folder / "report" / "fairness.md").read_text()
    report = json.loads((folder / "report" / "metrics.json").read_text())
    groups = report["datasets"]["utkface-shard1of3-n20-seed0"]["groups"]
    assert list(groups["columns"]) == ["race", "gender", "age"]  # named by the protocol file the script wrote
    overall = groups["overall"]
    assert f"| all faces | 20 | {overall['fpr']:.3f} [" in text and "- overall FPR <= 0.1: **" in text
    assert f"] | {overall['told_fake']:.3f} [" in text.split("| all faces |")[1].splitlines()[0]  # the told-fake column
    assert text.count("interval included: **") == 3 and text in done.stdout


def test_fairness_power_simulates_groups_served_alike() -> None:
    """benchmarks/fairness_power.py: data sets where every group has the same false-positive rate. With no false
    alarms there is no gap and no interval above 0; with some, the highest-minus-lowest gap is positive by chance
    alone, its interval's upper end above it, and both shrink as the groups grow."""
    from conftest import load_benchmark

    power = load_benchmark("fairness_power")
    none = power.simulate({"a": 50, "b": 80}, 0.0, 3, 50, 0)
    assert none.shape == (3, 2) and not none.any()
    small = power.simulate({"a": 100, "b": 100, "c": 100}, 0.05, 20, 100, 0)
    large = power.simulate({"a": 4000, "b": 4000, "c": 4000}, 0.05, 20, 100, 0)
    assert (small[:, 0] >= 0).all() and (small[:, 1] >= small[:, 0]).all() and np.median(small[:, 0]) > 0
    assert np.median(large[:, 1]) < np.median(small[:, 1]) / 3  # 40x the faces: about a sixth of the width


def test_operating_points_benchmark_cuts_both_score_files_at_each_threshold(tmp_path: Path) -> None:
    """benchmarks/operating_points.py: each row's threshold keeps DFDC val's FPR within its target, and its photo FPR
    and race gap are the counts of the photos at or above that threshold, computed here by hand."""
    import subprocess
    import sys

    val = tmp_path / "val_scores.csv"
    reals, fakes = np.linspace(0.0, 0.8, 100), np.linspace(0.3, 1.0, 100)  # 100 reals and 100 fakes
    with val.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["label", "score"])
        w.writerows([[0, f"{p:.6f}"] for p in reals] + [[1, f"{p:.6f}"] for p in fakes])
    photos = tmp_path / "scores.csv"
    rows = [(0.75, "Black")] * 3 + [(0.1, "Black")] * 97 + [(0.75, "White")] * 1 + [(0.2, "White")] * 99
    with photos.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["label", "score", "by:race", "by:gender", "by:age"])
        w.writerows([[0, p, race, "male", "20-39"] for p, race in rows])
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "operating_points.py"
    done = subprocess.run([sys.executable, str(script), str(val), str(photos), "--fpr", "0.1", "0.02", "--bootstrap", "50"],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    table = [line.split(" | ") for line in done.stdout.splitlines() if line.startswith("| ") and "---" not in line][1:]
    by_policy = {cells[0].strip("| "): cells for cells in table}
    assert list(by_policy) == ["eer", "FPR <= 0.1", "FPR <= 0.02"]
    for name, target in (("FPR <= 0.1", 0.1), ("FPR <= 0.02", 0.02)):
        cells = by_policy[name]
        t = float(cells[1])
        assert float(cells[3]) <= target and np.isclose(float(cells[3]), (reals >= t).mean(), atol=1e-3)
        called = np.array([p >= t for p, _ in rows])
        black = np.array([race == "Black" for _, race in rows])
        assert cells[7].startswith(f"{called.mean():.3f} [")  # photo FPR
        assert cells[9].startswith(f"{called[black].mean() - called[~black].mean():.3f} [")  # race gap
    # 0.75 lies between the two thresholds: the stricter one calls no photo fake
    assert by_policy["FPR <= 0.02"][7].startswith("0.000 [") and by_policy["FPR <= 0.1"][7].startswith("0.020 [")
