"""Metrics against scikit-learn and hand-computed cases; bootstrap; frame-to-video aggregation."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm

from realface.errors import RealfaceError
from realface.eval import metrics as m
from realface.eval.aggregate import AGGREGATIONS, aggregate_labels, aggregate_scores


def _random_case(seed: int, n: int, ties: bool) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    if ties:  # only 5 distinct values, mildly informative
        s = np.clip(rng.integers(0, 5, n) + y * rng.integers(0, 2, n), 0, 4) / 4.0
    else:
        s = rng.random(n) + 0.3 * y
    return y, s


CASES = [(seed, n, ties) for seed in range(4) for n in (7, 60, 500) for ties in (False, True)]


# ---------------------------------------------------------------------------------------------
# against scikit-learn


@pytest.mark.parametrize("seed,n,ties", CASES)
def test_ranking_metrics_match_sklearn(seed: int, n: int, ties: bool) -> None:
    y, s = _random_case(seed, n, ties)
    if y.min() == y.max():
        y[0] = 1 - y[0]
    fpr, tpr, thr = m.roc_curve(y, s)
    sk_fpr, sk_tpr, sk_thr = skm.roc_curve(y, s, drop_intermediate=False)
    np.testing.assert_allclose(fpr, sk_fpr)
    np.testing.assert_allclose(tpr, sk_tpr)
    np.testing.assert_array_equal(thr, sk_thr)
    auc = m.roc_auc(y, s)
    assert auc == pytest.approx(skm.roc_auc_score(y, s), abs=1e-12)
    assert auc == pytest.approx(np.trapezoid(tpr, fpr), abs=1e-12)
    assert m.average_precision(y, s) == pytest.approx(skm.average_precision_score(y, s), abs=1e-12)
    for target in (0.0, 0.01, 0.1, 0.5):
        assert m.tpr_at_fpr(y, s, target) == pytest.approx(sk_tpr[sk_fpr <= target].max())


@pytest.mark.parametrize("seed,n,ties", CASES)
def test_threshold_metrics_match_sklearn(seed: int, n: int, ties: bool) -> None:
    y, s = _random_case(seed, n, ties)
    if y.min() == y.max():
        y[0] = 1 - y[0]
    for t in (0.25, 0.5, float(np.median(s))):  # 0.25, 0.5 hit tied scores exactly: >= counts them fake
        pred = (s >= t).astype(int)
        assert m.accuracy(y, s, t) == pytest.approx(skm.accuracy_score(y, pred))
        assert m.balanced_accuracy(y, s, t) == pytest.approx(skm.balanced_accuracy_score(y, pred))
        tn, fp, fn, tp = skm.confusion_matrix(y, pred, labels=[0, 1]).ravel()
        assert m.confusion_counts(y, s, t) == {"tp": tp, "fp": fp, "tn": tn, "fn": fn}


@pytest.mark.parametrize("seed", range(5))
def test_eer_lies_where_fpr_meets_fnr(seed: int) -> None:
    y, s = _random_case(seed, 300, ties=False)
    value, threshold = m.eer(y, s)
    fpr, tpr, thr = m.roc_curve(y, s)
    fnr = 1 - tpr
    # EER lies between FPR and FNR at both ROC points adjacent to the crossing
    j = int(np.argmax(fpr >= fnr))
    assert min(fpr[j - 1], fnr[j - 1]) <= value <= max(fpr[j - 1], fnr[j - 1])
    assert min(fpr[j], fnr[j]) <= value <= max(fpr[j], fnr[j])
    assert thr[j] <= threshold <= thr[j - 1]


# ---------------------------------------------------------------------------------------------
# hand-computed cases


def test_hand_case_without_ties() -> None:
    y = [0, 0, 1, 1]
    s = [0.1, 0.4, 0.35, 0.8]
    # fake/real pairs: 0.35>0.1 yes, 0.35>0.4 no, 0.8>0.1 yes, 0.8>0.4 yes -> AUC 3/4
    assert m.roc_auc(y, s) == pytest.approx(0.75)
    # thresholds inf, .8, .4, .35, .1 -> fpr 0, 0, .5, .5, 1 ; tpr 0, .5, .5, 1, 1
    fpr, tpr, thr = m.roc_curve(y, s)
    np.testing.assert_allclose(fpr, [0, 0, 0.5, 0.5, 1])
    np.testing.assert_allclose(tpr, [0, 0.5, 0.5, 1, 1])
    np.testing.assert_allclose(thr, [np.inf, 0.8, 0.4, 0.35, 0.1])
    # precision/recall at .8: 1, .5 ; .4: 1/2, .5 ; .35: 2/3, 1 ; .1: 1/2, 1 -> AP = .5*1 + .5*2/3 = 5/6
    assert m.average_precision(y, s) == pytest.approx(5 / 6)
    # fnr 1, .5, .5, 0, 0 ; fpr - fnr = -1, -.5, 0, .5, 1 -> exact crossing at threshold .4 with EER .5
    assert m.eer(y, s) == pytest.approx((0.5, 0.4))
    # fpr <= .1 only at thresholds inf and .8 -> best tpr .5
    assert m.tpr_at_fpr(y, s, 0.1) == pytest.approx(0.5)


def test_hand_case_with_ties() -> None:
    y = [0, 1, 0, 1]
    s = [0.5, 0.5, 0.2, 0.9]
    # pairs: .5 vs .5 tie = 1/2, .5>.2, .9>.5, .9>.2 -> (0.5 + 3) / 4 = 0.875
    assert m.roc_auc(y, s) == pytest.approx(0.875)
    # thresholds inf, .9, .5, .2 -> fpr 0, 0, .5, 1 ; tpr 0, .5, 1, 1 (the tie moves both at once)
    fpr, tpr, _ = m.roc_curve(y, s)
    np.testing.assert_allclose(fpr, [0, 0, 0.5, 1])
    np.testing.assert_allclose(tpr, [0, 0.5, 1, 1])
    # P/R at .9: 1, .5 ; .5: 2/3, 1 ; .2: 1/2, 1 -> AP = .5 + .5 * 2/3 = 5/6
    assert m.average_precision(y, s) == pytest.approx(5 / 6)
    # fpr - fnr = -1, -.5, .5, 1: crossing halfway between points .9 (0, .5) and .5 (.5, 0):
    # EER = .25, threshold = .9 + .5 * (.5 - .9) = .7
    value, threshold = m.eer(y, s)
    assert value == pytest.approx(0.25)
    assert threshold == pytest.approx(0.7)


def test_hand_case_at_threshold_and_anti_spoofing() -> None:
    y = [1, 1, 1, 0, 0, 0, 0, 0]
    s = [0.9, 0.6, 0.3, 0.7, 0.2, 0.1, 0.5, 0.05]
    # at 0.5 (>= is fake): fakes .9 .6 caught, .3 missed -> tp 2, fn 1 ;
    # reals .7 and .5 (equal to the threshold) called fake -> fp 2, tn 3
    assert m.confusion_counts(y, s, 0.5) == {"tp": 2, "fp": 2, "tn": 3, "fn": 1}
    assert m.accuracy(y, s, 0.5) == pytest.approx(5 / 8)
    assert m.balanced_accuracy(y, s, 0.5) == pytest.approx((2 / 3 + 3 / 5) / 2)
    # APCER = attacks accepted as bona fide = 1/3 ; BPCER = bona fide rejected = 2/5
    assert m.apcer(y, s, 0.5) == pytest.approx(1 / 3)
    assert m.bpcer(y, s, 0.5) == pytest.approx(2 / 5)
    assert m.acer(y, s, 0.5) == pytest.approx((1 / 3 + 2 / 5) / 2)
    assert m.hter(y, s, 0.5) == pytest.approx((1 / 3 + 2 / 5) / 2)
    # at 0.65: fakes .6 and .3 accepted -> APCER 2/3 ; real .7 rejected -> BPCER 1/5
    assert m.apcer(y, s, 0.65) == pytest.approx(2 / 3)
    assert m.bpcer(y, s, 0.65) == pytest.approx(1 / 5)
    assert m.hter(y, s, 0.65) == pytest.approx((2 / 3 + 1 / 5) / 2)


def test_binary_report_holds_every_metric_as_plain_numbers() -> None:
    import json

    y, s = _random_case(0, 200, ties=True)
    r = m.binary_report(y, s, 0.5)
    assert r["auc"] == pytest.approx(skm.roc_auc_score(y, s))
    assert r["ap"] == pytest.approx(skm.average_precision_score(y, s))
    assert r["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, s >= 0.5))
    assert r["apcer"] == pytest.approx(r["fn"] / r["n_fake"])
    assert r["bpcer"] == pytest.approx(r["fp"] / r["n_real"])
    assert r["tpr_at_fpr_0.01"] <= r["tpr_at_fpr_0.1"]
    assert r["n"] == r["tp"] + r["fp"] + r["tn"] + r["fn"] == 200
    assert json.loads(json.dumps(r)) == r
    assert all(type(v) in (int, float) and np.isfinite(v) for v in r.values())


# ---------------------------------------------------------------------------------------------
# errors, never NaN


ONE_CLASS = ([1, 1, 1], [0.2, 0.5, 0.9])


@pytest.mark.parametrize(
    "fn", [m.roc_curve, m.roc_auc, m.eer, m.average_precision, lambda y, s: m.tpr_at_fpr(y, s, 0.1)]
)
def test_ranking_metrics_refuse_a_single_class(fn) -> None:
    with pytest.raises(RealfaceError, match="only 3 fake"):
        fn(*ONE_CLASS)
    with pytest.raises(RealfaceError, match="only 2 real"):
        fn([0, 0], [0.1, 0.2])


@pytest.mark.parametrize(
    "labels,scores,match",
    [
        ([], [], "empty"),
        ([0, 1], [0.5], "differ in length"),
        ([0, 1], [0.5, float("nan")], "NaN"),
        ([0, 1], [0.5, float("inf")], "NaN or infinite"),
        ([0, 2], [0.5, 0.6], "0 \\(real\\) or 1 \\(fake\\)"),
        ([[0, 1]], [[0.5, 0.6]], "1-D"),
        (["a", "b"], [0.5, 0.6], "0 \\(real\\) or 1 \\(fake\\)"),
    ],
)
def test_bad_inputs_raise(labels, scores, match) -> None:
    with pytest.raises(RealfaceError, match=match):
        m.roc_auc(labels, scores)
    with pytest.raises(RealfaceError, match=match):
        m.binary_report(labels, scores, 0.5)


def test_threshold_metrics_with_one_class() -> None:
    assert m.accuracy(*ONE_CLASS, 0.4) == pytest.approx(2 / 3)  # defined: the recall of that class
    assert m.apcer(*ONE_CLASS, 0.4) == pytest.approx(1 / 3)
    with pytest.raises(RealfaceError, match="need both"):
        m.balanced_accuracy(*ONE_CLASS, 0.4)
    with pytest.raises(RealfaceError, match="bona fide"):
        m.bpcer(*ONE_CLASS, 0.4)
    with pytest.raises(RealfaceError, match="bona fide"):
        m.acer(*ONE_CLASS, 0.4)
    with pytest.raises(RealfaceError, match="attack"):
        m.apcer([0, 0], [0.1, 0.2], 0.4)
    with pytest.raises(RealfaceError, match="threshold"):
        m.accuracy(*ONE_CLASS, float("nan"))


# ---------------------------------------------------------------------------------------------
# bootstrap


def _groups_of_identical_frames(n_groups: int, frames: int, seed: int):
    rng = np.random.default_rng(seed)
    g_labels = rng.integers(0, 2, n_groups)
    g_labels[:2] = [0, 1]
    g_scores = rng.random(n_groups) + 0.4 * g_labels
    groups = np.repeat(np.arange(n_groups), frames)
    perm = rng.permutation(groups.size)  # frames arrive in any order
    return g_labels, g_scores, groups[perm], g_labels[groups][perm], g_scores[groups][perm]


def test_cluster_bootstrap_of_identical_frames_equals_group_level_bootstrap() -> None:
    g_labels, g_scores, groups, y, s = _groups_of_identical_frames(40, 5, seed=0)
    # AUC is unchanged when every sample is repeated 5 times, so resampling groups of 5 identical
    # frames must give exactly the bootstrap of the 40 group-level samples (same seed, same draws)
    group_ci = m.bootstrap_ci(m.roc_auc, g_labels, g_scores, n=300, seed=3)
    cluster_ci = m.bootstrap_ci(m.roc_auc, y, s, groups=groups, n=300, seed=3)
    assert cluster_ci == pytest.approx(group_ci, abs=1e-12)
    # treating the 200 frames as independent understates the uncertainty
    frame_ci = m.bootstrap_ci(m.roc_auc, y, s, n=300, seed=3)
    assert frame_ci[1] - frame_ci[0] < 0.75 * (cluster_ci[1] - cluster_ci[0])
    point = m.roc_auc(g_labels, g_scores)
    assert cluster_ci[0] < point < cluster_ci[1]


def test_cluster_bootstrap_draws_whole_groups() -> None:
    rng = np.random.default_rng(1)
    sizes = rng.integers(1, 6, 25)  # groups of 1..5 frames
    groups = np.repeat(np.arange(25), sizes)
    y = (groups % 2).astype(int)
    s = groups.astype(float)  # the score names the group, so the metric can see what was drawn
    seen = []

    def record(labels: np.ndarray, scores: np.ndarray) -> float:
        ids, counts = np.unique(scores.astype(int), return_counts=True)
        draws = counts / sizes[ids]
        assert np.all(draws == np.round(draws))  # only whole groups
        seen.append(int(draws.sum()))
        return float(labels.mean())

    m.bootstrap_ci(record, y, s, groups=groups, n=50)
    assert len(seen) == 50 and set(seen) == {25}  # 25 groups drawn each time, frame counts vary


def test_bootstrap_skips_one_class_resamples_and_is_seeded() -> None:
    y = np.zeros(30, int)
    y[0] = 1  # one fake: a third of the resamples miss it and roc_auc would raise on them
    s = np.linspace(0, 1, 30)
    a = m.bootstrap_ci(m.roc_auc, y, s, n=200, seed=7)
    assert a == m.bootstrap_ci(m.roc_auc, y, s, n=200, seed=7)
    assert 0.0 <= a[0] <= a[1] <= 1.0
    with pytest.raises(RealfaceError, match="groups must be 1-D"):
        m.bootstrap_ci(m.roc_auc, y, s, groups=[0, 1])
    with pytest.raises(RealfaceError, match="alpha"):
        m.bootstrap_ci(m.roc_auc, y, s, alpha=1.5)
    with pytest.raises(RealfaceError, match="only 30 real"):
        m.bootstrap_ci(m.roc_auc, np.zeros(30, int), s)


# ---------------------------------------------------------------------------------------------
# frame-to-video aggregation


VIDEOS = np.array(["b", "a", "a", "b", "b"])
FRAME_SCORES = np.array([0.9, 0.2, 0.4, 0.3, 0.6])


def test_mean_aggregation_by_hand() -> None:
    ids, scores = aggregate_scores(FRAME_SCORES, VIDEOS)
    # a: (0.2 + 0.4) / 2 = 0.3 ; b: (0.9 + 0.3 + 0.6) / 3 = 0.6 ; ids sorted
    assert ids.tolist() == ["a", "b"]
    np.testing.assert_allclose(scores, [0.3, 0.6])


def test_confidence_weighted_aggregation_by_hand() -> None:
    conf = [1.0, 0.5, 0.0, 0.5, 0.25]
    _, scores = aggregate_scores(FRAME_SCORES, VIDEOS, "confidence_weighted", confidences=conf)
    # a: (0.5*0.2 + 0*0.4) / 0.5 = 0.2 ; b: (1*0.9 + 0.5*0.3 + 0.25*0.6) / 1.75 = 1.2 / 1.75
    np.testing.assert_allclose(scores, [0.2, 1.2 / 1.75])
    # a video whose frames all have confidence 0 gets its plain mean
    _, scores = aggregate_scores(FRAME_SCORES, VIDEOS, "confidence_weighted", confidences=[1, 0, 0, 1, 1])
    np.testing.assert_allclose(scores, [0.3, 0.6])


def test_max_face_then_mean_by_hand() -> None:
    videos = ["v", "v", "v", "v", "v", "v", "w"]
    frames = [0, 0, 1, 2, 2, 2, 0]  # frame 0 of w is another frame than frame 0 of v
    scores = [0.2, 0.8, 0.4, 0.1, 0.3, 0.5, 0.9]
    ids, out = aggregate_scores(scores, videos, "max_face_then_mean", frame_ids=frames)
    # v: frame maxima 0.8, 0.4, 0.5 -> 1.7 / 3 ; w: 0.9
    assert ids.tolist() == ["v", "w"]
    np.testing.assert_allclose(out, [1.7 / 3, 0.9])
    _, plain = aggregate_scores(scores, videos)
    assert plain[0] == pytest.approx(2.3 / 6)


def test_every_aggregation_gives_one_score_per_video_in_range() -> None:
    rng = np.random.default_rng(0)
    videos = rng.integers(0, 12, 300)
    scores = rng.random(300)
    for name in AGGREGATIONS:
        frames = rng.integers(0, 8, 300)
        ids, out = aggregate_scores(scores, videos, name, confidences=rng.random(300), frame_ids=frames)
        assert ids.tolist() == sorted(set(videos.tolist()))
        assert out.shape == ids.shape and np.all((out >= 0) & (out <= 1))


def test_video_labels_and_video_level_metrics() -> None:
    labels = [1, 0, 0, 1, 1]
    ids, video_labels = aggregate_labels(labels, VIDEOS)
    assert ids.tolist() == ["a", "b"] and video_labels.tolist() == [0, 1]
    _, video_scores = aggregate_scores(FRAME_SCORES, VIDEOS)
    assert m.roc_auc(video_labels, video_scores) == 1.0  # a: 0.3 real, b: 0.6 fake
    with pytest.raises(RealfaceError, match="video 'b' has frames labelled both"):
        aggregate_labels([1, 0, 0, 0, 1], VIDEOS)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"method": "median"}, "unknown aggregation"),
        ({"method": "confidence_weighted"}, "needs confidences"),
        ({"method": "confidence_weighted", "confidences": [1, 1, -1, 1, 1]}, ">= 0"),
        ({"method": "confidence_weighted", "confidences": [1, 1]}, "one value per frame"),
        ({"method": "max_face_then_mean"}, "needs frame_ids"),
    ],
)
def test_aggregation_errors(kwargs, match) -> None:
    with pytest.raises(RealfaceError, match=match):
        aggregate_scores(FRAME_SCORES, VIDEOS, **kwargs)


def test_aggregation_input_errors() -> None:
    with pytest.raises(RealfaceError, match="empty"):
        aggregate_scores([], [])
    with pytest.raises(RealfaceError, match="video_ids"):
        aggregate_scores([0.1, 0.2], ["a"])
    with pytest.raises(RealfaceError, match="NaN"):
        aggregate_scores([0.1, float("nan")], ["a", "a"])
