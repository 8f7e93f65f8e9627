"""Group-balanced training order (`--balance-groups`): hand-computed weights, the epoch it draws, and the
option end to end on real UTKFace crops."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from realface.data.balance import GroupBalancedSampler, balanced_weights, group_keys
from realface.errors import RealfaceError
from realface.eval.groups import Grouping


def test_weights_share_the_grouped_total_equally_and_leave_the_rest():
    keys = ["a"] * 90 + ["b"] * 10 + [None] * 50
    w = balanced_weights(keys)
    assert np.allclose(w[:90], 50 / 90) and np.allclose(w[90:100], 5.0) and np.allclose(w[100:], 1.0)
    assert np.isclose(w[:100].sum(), 100)  # the grouped faces keep their share of the epoch


def test_weights_cap_a_tiny_group_and_give_the_rest_to_the_others():
    keys = ["a"] * 60 + ["b"] * 38 + ["c"] * 2
    w = balanced_weights(keys, max_weight=5.0)
    # c: 100 / 3 / 2 = 16.7 capped at 5 (total 10); a and b share the other 90: 45 each
    assert np.allclose(w[98:], 5.0) and np.allclose(w[:60], 45 / 60) and np.allclose(w[60:98], 45 / 38)
    assert np.isclose(w.sum(), 100)
    with pytest.raises(RealfaceError, match="at least 1"):
        balanced_weights(keys, max_weight=0.5)


def test_group_keys_bin_ages_and_skip_records_without_the_columns():
    grouping = Grouping(columns=("gender", "age"), age_bins=(0, 13, 60))
    extras = [{"gender": "0", "age": "5"}, {"gender": "1", "age": "61"}, {"gender": "1"}, {"group": "dfdc"}]
    assert group_keys(extras, grouping) == [("0", "0-12"), ("1", "60+"), ("1", "unknown"), None]
    with pytest.raises(RealfaceError, match="no training face has the group columns"):
        group_keys([{"group": "x"}], grouping)


def test_sampler_draws_balanced_epochs_deterministically_and_split_over_processes():
    keys = ["a"] * 900 + ["b"] * 100 + [None] * 500
    sampler = GroupBalancedSampler(keys, seed=3)
    sampler.set_epoch(1)
    drawn = list(sampler)
    assert len(drawn) == len(sampler) == 1500
    counts = Counter(keys[i] for i in drawn)
    for group in ("a", "b", None):  # a third each, within sampling noise (sd about 18)
        assert abs(counts[group] - 500) < 75
    assert drawn == list(sampler)  # the same epoch again
    sampler.set_epoch(2)
    assert drawn != list(sampler)
    ranks = [GroupBalancedSampler(keys, seed=3, num_replicas=2, rank=r) for r in (0, 1)]
    for r in ranks:
        r.set_epoch(1)
    both = [list(r) for r in ranks]
    assert len(both[0]) == len(both[1]) == 750
    whole = GroupBalancedSampler(keys, seed=3, num_replicas=1)
    whole.set_epoch(1)
    assert sorted(both[0] + both[1]) == sorted(list(whole)[:1500])  # one draw, dealt round-robin
    shares = sampler.shares()
    assert np.isclose(shares["a"], 1 / 3) and np.isclose(shares["b"], 1 / 3) and np.isclose(shares[None], 1 / 3)


@pytest.fixture(scope="module")
def utk_grouped(shared_data, tmp_path_factory):
    """12 White and 4 Black UTKFace faces through preprocess, their age, gender and race carried along."""
    import csv

    from realface.faces.pipeline import PipelineConfig
    from realface.faces.preprocess import preprocess

    with (shared_data / "utkface" / "manifest.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    picked = [r for r in rows if r["race"] == "0"][:12] + [r for r in rows if r["race"] == "1"][:4]
    manifest = tmp_path_factory.mktemp("utk_grouped") / "manifest.csv"
    with manifest.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, ["path", "label", "age", "gender", "race"])
        writer.writeheader()
        writer.writerows({**r, "path": str(shared_data / "utkface" / r["path"])} for r in picked)
    out = tmp_path_factory.mktemp("utk_grouped_crops")
    assert preprocess([manifest], out, config=PipelineConfig(crop_size=64, assume_cropped=True), progress=False).ok
    return out


def test_finetune_and_pretrain_balance_groups_end_to_end(utk_grouped, tmp_path, capsys):
    from realface.cli import main
    from realface.train import checkpoint as ckpt

    fast = ["--img-size", "64", "--epochs", "1", "--batch-size", "8", "--workers", "0", "--no-progress",
            "--max-steps-per-epoch", "2"]  # fmt: skip
    args = ["finetune", "--data", str(utk_grouped), "--out", str(tmp_path / "ft"), "--pseudo-fakes", "sbi",
            "--no-labelled-fakes", "--balance-groups", "race", *fast]  # fmt: skip
    assert main(args) == 0
    balance = ckpt.read_json(tmp_path / "ft" / "config.json")["balance_groups"]
    # 12 + 12 SBI of race 0, 4 + 4 of race 1: each race half of every epoch (the 1s weigh 3, within the cap)
    assert balance["columns"] == ["race"] and balance["shares"] == {"0": 0.5, "1": 0.5}
    args = ["pretrain", "--data", str(utk_grouped), "--out", str(tmp_path / "pt"), "--decoder-dim", "32",
            "--decoder-depth", "1", "--decoder-heads", "2", "--balance-groups", "race", "age",
            "--balance-age-bins", "0,40", *fast]  # fmt: skip
    assert main(args) == 0
    shares = ckpt.read_json(tmp_path / "pt" / "config.json")["balance_groups"]["shares"]
    assert len(shares) >= 3 and all(" / " in k for k in shares) and abs(sum(shares.values()) - 1) < 1e-3
    capsys.readouterr()
    paired = ["finetune", "--data", str(utk_grouped), "--out", str(tmp_path / "x"), "--paired", "--balance-groups", "race", *fast]
    assert main(paired) == 2 and "choose one" in capsys.readouterr().err
    assert main(["finetune", "--data", str(utk_grouped), "--out", str(tmp_path / "y"), "--pseudo-fakes", "sbi",
                 "--no-labelled-fakes", "--balance-groups", "skin", *fast]) == 2  # fmt: skip
    assert "no training face has the group columns skin" in capsys.readouterr().err
