"""Threshold policies on synthetic score distributions; three-way decisions; coverage vs accuracy."""

from __future__ import annotations

import json

import numpy as np
import pytest

from realface.errors import RealfaceError
from realface.eval import metrics as m
from realface.eval.thresholds import (
    THRESHOLD_POLICIES,
    Threshold,
    band_json,
    band_sides,
    band_text,
    coverage_accuracy_curve,
    decide,
    distance_confidence,
    fit_confidence_band,
    fit_threshold,
    fit_two_sided_band,
)


def _two_gaussians(mean_real: float, mean_fake: float, sd: float, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    scores = np.r_[rng.normal(mean_real, sd, n), rng.normal(mean_fake, sd, n)]
    labels = np.r_[np.zeros(n, int), np.ones(n, int)]
    return labels, np.clip(scores, 0.0, 1.0)


# ---------------------------------------------------------------------------------------------
# policies


@pytest.mark.parametrize("seed", range(3))
def test_eer_threshold_is_near_the_crossing_of_equal_gaussians(seed: int) -> None:
    y, s = _two_gaussians(0.4, 0.6, 0.08, 4000, seed)  # equal spread and priors: densities cross at 0.5
    th = fit_threshold(y, s, "eer")
    assert th.value == pytest.approx(0.5, abs=0.01)
    # FPR and FNR at that threshold agree within sampling noise
    assert m.bpcer(y, s, th) == pytest.approx(m.apcer(y, s, th), abs=0.01)


@pytest.mark.parametrize("target", [0.0, 0.01, 0.05, 0.1, 0.3])
def test_target_fpr_meets_the_target_with_the_best_tpr(target: float) -> None:
    y, s = _two_gaussians(0.4, 0.6, 0.1, 1000, seed=1)
    th = fit_threshold(y, s, "target_fpr", fpr=target)
    assert th.params == {"fpr": target}
    fpr = np.mean(s[y == 0] >= th.value)
    assert fpr <= target
    assert np.mean(s[y == 1] >= th.value) == pytest.approx(m.tpr_at_fpr(y, s, target))
    # the next lower distinct score would break the target
    lower = s[s < th.value]
    if lower.size:
        assert np.mean(s[y == 0] >= lower.max()) > target


def test_target_fpr_can_call_nothing_fake() -> None:
    y = [0, 1, 1, 0]
    s = [0.95, 0.9, 0.8, 0.1]  # the top score is real: only "nothing fake" has FPR 0
    th = fit_threshold(y, s, "target_fpr", fpr=0.0)
    assert 0.95 < th.value < 0.95 + 1e-9
    assert m.confusion_counts(y, s, th)["fp"] == 0


@pytest.mark.parametrize("seed", range(3))
def test_max_balanced_accuracy_beats_one_half_on_shifted_classes(seed: int) -> None:
    y, s = _two_gaussians(0.2, 0.35, 0.05, 300, seed)  # both classes below 0.5
    th = fit_threshold(y, s, "max_balanced_accuracy")
    fitted = m.balanced_accuracy(y, s, th)
    assert m.balanced_accuracy(y, s, 0.5) < 0.6 < 0.8 < fitted
    assert 0.2 < th.value < 0.35
    best = max(m.balanced_accuracy(y, s, t) for t in np.unique(s))  # brute force over all cut points
    assert fitted == pytest.approx(best)


def test_policies_by_hand() -> None:
    y = [0, 0, 1, 0, 1, 1]
    s = [0.1, 0.2, 0.3, 0.6, 0.7, 0.9]
    # balanced accuracy of `score >= t`: t=.9: (1/3 + 1)/2 = 2/3 ; .7: (2/3 + 1)/2 = 5/6 ; .6: (2/3 + 2/3)/2 ;
    # .3: (1 + 2/3)/2 = 5/6 ; .2: (1 + 1/3)/2. Tie at .7 and .3: the higher wins, and the midpoint
    # between .7 and the next lower score .6 is returned
    th = fit_threshold(y, s, "max_balanced_accuracy")
    assert th.value == pytest.approx(0.65)
    # FPR <= 0 keeps thresholds .9 and .7; the lower (.7) has the higher TPR
    assert fit_threshold(y, s, "target_fpr", fpr=0.0).value == pytest.approx(0.7)
    # FPR <= 1/3 also allows .6 and .3 (fpr 1/3, tpr 2/3 and 1): .3 has the highest TPR
    assert fit_threshold(y, s, "target_fpr", fpr=1 / 3).value == pytest.approx(0.3)


def test_threshold_is_json_and_usable_as_a_number() -> None:
    y, s = _two_gaussians(0.4, 0.6, 0.1, 200, seed=0)
    for policy, params in [("eer", {}), ("max_balanced_accuracy", {}), ("target_fpr", {"fpr": 0.05})]:
        th = fit_threshold(y, s, policy, **params)
        back = Threshold.from_dict(json.loads(json.dumps(th.to_dict())))
        assert back == th and back.policy == policy
        assert m.accuracy(y, s, back) == m.accuracy(y, s, th.value)
    assert set(THRESHOLD_POLICIES) == {"eer", "max_balanced_accuracy", "target_fpr"}


def test_threshold_errors() -> None:
    y, s = [0, 1, 0, 1], [0.1, 0.8, 0.3, 0.7]
    with pytest.raises(RealfaceError, match="unknown threshold policy 'youden'"):
        fit_threshold(y, s, "youden")
    with pytest.raises(RealfaceError, match="takes parameters \\['fpr'\\]"):
        fit_threshold(y, s, "target_fpr")
    with pytest.raises(RealfaceError, match="takes parameters none"):
        fit_threshold(y, s, "eer", fpr=0.1)
    with pytest.raises(RealfaceError, match="fraction"):
        fit_threshold(y, s, "target_fpr", fpr=5)
    with pytest.raises(RealfaceError, match="both real and fake"):
        fit_threshold([1, 1], [0.2, 0.3], "eer")
    with pytest.raises(RealfaceError, match="not a threshold record"):
        Threshold.from_dict({"policy": "eer"})
    with pytest.raises(RealfaceError, match="finite"):
        Threshold(float("nan"), "eer")
    assert type(Threshold(np.float32(0.25), "eer").value) is float


# ---------------------------------------------------------------------------------------------
# confidence and three-way decisions


def test_distance_confidence_by_hand() -> None:
    # t = .5: |p - .5| / .5 ; t = .2: below (.2 - p) / .2, above (p - .2) / .8
    np.testing.assert_allclose(distance_confidence([0.9, 0.55, 0.5, 0.45, 0.1], 0.5), [0.8, 0.1, 0.0, 0.1, 0.8])
    np.testing.assert_allclose(distance_confidence([0.0, 0.1, 0.2, 0.6, 1.0], 0.2), [1.0, 0.5, 0.0, 0.5, 1.0])
    np.testing.assert_allclose(distance_confidence([1.0, 0.5], 1.0), [0.0, 0.5])  # p = t = 1: 0, no NaN


def test_decide_by_hand() -> None:
    p = [0.875, 0.625, 0.5, 0.375, 0.125]  # confidences .75 .25 0 .25 .75 at t = .5 (exact in binary)
    assert decide(p, 0.5).tolist() == ["fake", "fake", "fake", "real", "real"]
    assert decide(p, 0.5, band=0.5).tolist() == ["fake", "uncertain", "uncertain", "uncertain", "real"]
    assert decide(p, 0.5, band=0.25).tolist() == ["fake", "fake", "uncertain", "real", "real"]
    # the caller's confidence (e.g. evidential 1 - u) replaces the distance
    one_minus_u = [0.3, 0.9, 0.9, 0.9, 0.3]
    assert decide(p, 0.5, one_minus_u, band=0.5).tolist() == ["uncertain", "fake", "fake", "real", "uncertain"]
    th = Threshold(0.6, "eer")
    assert decide(p, th).tolist() == ["fake", "fake", "real", "real", "real"]


def test_decide_errors() -> None:
    with pytest.raises(RealfaceError, match="\\[0, 1\\]"):
        decide([0.5, 1.5], 0.5)
    with pytest.raises(RealfaceError, match="band"):
        decide([0.5], 0.5, band=2)
    with pytest.raises(RealfaceError, match="one value per score"):
        decide([0.5, 0.6], 0.5, [0.9])
    with pytest.raises(RealfaceError, match="NaN"):
        decide([0.5, float("nan")], 0.5)


def test_coverage_accuracy_curve_against_brute_force() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 60)
    p = np.round(np.clip(0.5 + 0.3 * (y - 0.5) + rng.normal(0, 0.2, 60), 0, 1), 2)  # with ties
    conf = distance_confidence(p, 0.5)
    coverage, accuracy, bands = coverage_accuracy_curve(y, p, None, 0.5)
    assert np.all(np.diff(bands) > 0) and np.all(np.diff(coverage) < 0) and coverage[0] == 1.0
    assert accuracy[0] == pytest.approx(m.accuracy(y, p, 0.5))
    for c, a, b in zip(coverage, accuracy, bands):
        kept = conf >= b
        assert c == pytest.approx(kept.mean())
        assert a == pytest.approx(np.mean((p[kept] >= 0.5) == y[kept]))
        assert np.mean(decide(p, 0.5, band=b) != "uncertain") == pytest.approx(c)


def test_confident_decisions_are_more_accurate() -> None:
    y, p = _two_gaussians(0.4, 0.6, 0.12, 2000, seed=2)
    coverage, accuracy, _ = coverage_accuracy_curve(y, p, None, 0.5)
    at = lambda cov: accuracy[np.flatnonzero(coverage >= cov)[-1]]  # noqa: E731
    assert at(1.0) < at(0.75) < at(0.5) < at(0.25)


def test_fit_confidence_band_reaches_the_target() -> None:
    y, p = _two_gaussians(0.4, 0.6, 0.12, 2000, seed=3)
    coverage, accuracy, bands = coverage_accuracy_curve(y, p, None, 0.5)
    assert accuracy[0] < 0.95  # the classes overlap: not every decision can be trusted
    band = fit_confidence_band(y, p, None, 0.5)  # default target accuracy 0.95
    k = int(np.searchsorted(bands, band))
    assert accuracy[k] >= 0.95 and np.all(accuracy[:k] < 0.95)  # smallest band that reaches it
    decided = decide(p, 0.5, band=band)
    sure = decided != "uncertain"
    assert np.mean((decided[sure] == "fake") == (y[sure] == 1)) >= 0.95
    band80 = fit_confidence_band(y, p, None, 0.5, target_coverage=0.8)
    assert np.mean(decide(p, 0.5, band=band80) != "uncertain") >= 0.8
    assert np.mean(distance_confidence(p, 0.5) > band80) < 0.8  # the next band would keep less


def test_fit_confidence_band_with_evidential_confidence_and_errors() -> None:
    y = np.array([1, 0, 1, 0, 1, 0])
    p = np.array([0.9, 0.8, 0.7, 0.3, 0.6, 0.4])  # 0.8 is wrong
    one_minus_u = np.array([0.9, 0.2, 0.8, 0.7, 0.5, 0.6])  # ... and the model knew it
    # bands .2 (all, 5/6) .5 (5/5 = 1) -> smallest band with accuracy 1 is .5
    assert fit_confidence_band(y, p, one_minus_u, 0.5, target_accuracy=1.0) == pytest.approx(0.5)
    sure_wrong = np.array([0.9, 1.0, 0.8, 0.7, 0.5, 0.6])  # the wrong one is the most confident
    with pytest.raises(RealfaceError, match="no confidence band reaches accuracy 1.000"):
        fit_confidence_band(y, p, sure_wrong, 0.5, target_accuracy=1.0)
    with pytest.raises(RealfaceError, match="not both"):
        fit_confidence_band(y, p, None, 0.5, target_accuracy=0.9, target_coverage=0.5)
    with pytest.raises(RealfaceError, match="target_coverage"):
        fit_confidence_band(y, p, None, 0.5, target_coverage=0.0)


# ---------------------------------------------------------------------------------------------
# a band per side: (real, fake)


def test_decide_with_a_band_per_side() -> None:
    p = [0.875, 0.625, 0.5, 0.375, 0.125]  # confidences .75 .25 0 .25 .75 at t = .5
    assert decide(p, 0.5, band=(0.25, 0.5)).tolist() == ["fake", "uncertain", "uncertain", "real", "real"]
    assert decide(p, 0.5, band=(0.5, 0.25)).tolist() == ["fake", "fake", "uncertain", "uncertain", "real"]
    assert decide(p, 0.5, band=(0.4, 0.4)).tolist() == decide(p, 0.5, band=0.4).tolist()
    assert band_sides({"real": 0.1, "fake": 0.3}) == band_sides([0.1, 0.3]) == (0.1, 0.3)
    assert band_json((0.2, 0.2)) == 0.2 and band_json((0.1, 0.3)) == {"real": 0.1, "fake": 0.3}
    assert band_text(0.25) == "0.250" and band_text((0.1, 0.3)) == "0.100 (real), 0.300 (fake)"
    for bad in (2, (0.1,), (0.1, 1.5), {"real": 0.1}, True, "0.1"):
        with pytest.raises(RealfaceError, match="band"):
            decide(p, 0.5, band=bad)


def _most_kept_by_brute_force(y: np.ndarray, p: np.ndarray, t: float, target: float, pooled: bool) -> int:
    """The most faces any (real, fake) pair of bands keeps with accuracy >= target: of the kept faces together
    (pooled), or of those told "real" and of those told "fake" each; over every pair."""
    conf = distance_confidence(p, t)
    candidates = np.r_[np.unique(conf), 1.0]
    best = 0
    for real in candidates:
        for fake in candidates:
            verdicts = decide(p, t, band=(real, fake))
            kept = verdicts != "uncertain"
            right = (verdicts == "fake") == (y == 1)
            groups = [kept] if pooled else [verdicts == "real", verdicts == "fake"]
            if kept.any() and all(right[g].mean() >= target for g in groups if g.any()):
                best = max(best, int(kept.sum()))
    return best


@pytest.mark.parametrize("pooled", [False, True])
def test_fit_two_sided_band_keeps_the_most_faces_at_the_target(pooled: bool) -> None:
    rng = np.random.default_rng(5)
    for _ in range(60):
        n = int(rng.integers(2, 25))
        y = rng.integers(0, 2, n)
        p = np.round(rng.random(n), 1)  # ties, and scores of exactly 0 and 1 (confidence 1)
        target = float(rng.choice([0.6, 0.75, 0.9]))
        best = _most_kept_by_brute_force(y, p, 0.5, target, pooled)
        if best == 0:
            with pytest.raises(RealfaceError, match="no confidence band"):
                fit_two_sided_band(y, p, None, 0.5, target, pooled=pooled)
            continue
        verdicts = decide(p, 0.5, band=fit_two_sided_band(y, p, None, 0.5, target, pooled=pooled))
        kept = verdicts != "uncertain"
        assert kept.sum() == best
        assert np.mean((p[kept] >= 0.5) == (y[kept] == 1)) >= target
        if not pooled:  # each verdict reaches the target on its own
            for told in ("real", "fake"):
                if (verdicts == told).any():
                    assert np.mean(y[verdicts == told] == (told == "fake")) >= target


def test_a_band_per_side_holds_each_verdict_to_the_target() -> None:
    # reals tight, fakes spread below the threshold too: one band for both reaches 90% on all kept faces only by
    # letting "real" verdicts fall to 88%; a band per side holds each verdict to 90%; pooled keeps the most faces
    rng = np.random.default_rng(6)
    y = np.r_[np.zeros(1000, int), np.ones(1000, int)]
    p = np.clip(np.r_[rng.normal(0.35, 0.08, 1000), rng.normal(0.6, 0.15, 1000)], 0, 1)
    t = fit_threshold(y, p).value

    def kept_and_right_by_verdict(band) -> tuple[float, list[float]]:
        verdicts = decide(p, t, band=band)
        return float(np.mean(verdicts != "uncertain")), [float(np.mean(y[verdicts == v] == (v == "fake"))) for v in ("real", "fake")]

    one_kept, one_right = kept_and_right_by_verdict(fit_confidence_band(y, p, None, t, target_accuracy=0.9))
    side_kept, side_right = kept_and_right_by_verdict(fit_two_sided_band(y, p, None, t, target_accuracy=0.9))
    pooled_kept, pooled_right = kept_and_right_by_verdict(fit_two_sided_band(y, p, None, t, 0.9, pooled=True))
    assert min(one_right) < 0.89 and min(side_right) >= 0.9  # 0.884 against 0.900 for "real" verdicts
    assert pooled_kept >= one_kept and pooled_kept > side_kept  # 0.946, 0.927, 0.907
    assert side_kept > 0.85
