"""Calibration: ECE, reliability diagram (data and PNG), temperature scaling."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import matplotlib.image
import numpy as np
import pytest

from realface.errors import RealfaceError
from realface.eval.calibration import (
    apply_temperature,
    expected_calibration_error,
    fit_temperature,
    plot_reliability_diagram,
    probabilities_to_logits,
    reliability_diagram,
)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _calibrated_logits(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Logits z and labels drawn as Bernoulli(sigmoid(z)): sigmoid(z) is calibrated by construction."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0.0, 2.0, n)
    return z, (rng.random(n) < _sigmoid(z)).astype(int)


def test_ece_and_diagram_by_hand() -> None:
    probs = [0.95, 0.85, 0.3, 0.65]
    labels = [1, 0, 0, 1]
    # confidences .95 .85 .7 .65 ; decisions fake fake real fake -> correct, wrong, correct, correct
    # 5 bins of width .2: .95 and .85 in [.8, 1): accuracy .5, confidence .9, gap .4
    #                     .7 and .65 in [.6, .8): accuracy 1, confidence .675, gap .325
    # ECE = 2/4 * .4 + 2/4 * .325 = .3625
    d = reliability_diagram(labels, probs, n_bins=5)
    np.testing.assert_allclose(d.bin_centers, [0.7, 0.9])
    np.testing.assert_allclose(d.accuracy, [1.0, 0.5])
    np.testing.assert_allclose(d.confidence, [0.675, 0.9])
    assert d.counts.tolist() == [2, 2]
    assert expected_calibration_error(labels, probs, n_bins=5) == pytest.approx(0.3625)


def test_ece_of_calibrated_data_is_small_and_of_overconfident_data_large() -> None:
    z, y = _calibrated_logits(20000, seed=0)
    assert expected_calibration_error(y, _sigmoid(z)) < 0.02
    assert expected_calibration_error(y, _sigmoid(4.0 * z)) > 0.1  # overconfident
    d = reliability_diagram(y, _sigmoid(z))
    assert d.counts.sum() == 20000 and np.all(d.counts > 0)
    assert np.all((d.bin_centers >= 0.5) & (d.bin_centers < 1.0))  # top-label confidence is >= .5
    assert len(d.bin_centers) == 8  # 15 bins over [0, 1]: confidences >= .5 fill bins 7..14 (centres .5 .. .967)


def test_plot_reliability_diagram_writes_a_png(tmp_path: Path) -> None:
    z, y = _calibrated_logits(2000, seed=1)
    backend = matplotlib.get_backend()
    out = plot_reliability_diagram(y, _sigmoid(3.0 * z), tmp_path / "sub" / "reliability.png", title="val")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = matplotlib.image.imread(out)
    assert image.shape[:2] == (550, 450) and image.std() > 0.05  # something was drawn
    assert matplotlib.get_backend() == backend  # no global backend switch


@pytest.mark.parametrize("scale", [0.5, 1.0, 3.0])
def test_temperature_scaling_recovers_a_known_temperature(scale: float) -> None:
    z, y = _calibrated_logits(20000, seed=2)
    t = fit_temperature(scale * z, y)
    assert t == pytest.approx(scale, rel=0.1)
    calibrated = apply_temperature(scale * z, t)
    assert expected_calibration_error(y, calibrated) < 0.02
    if scale != 1.0:
        assert expected_calibration_error(y, calibrated) < expected_calibration_error(y, _sigmoid(scale * z))


def test_fitted_temperature_minimizes_the_nll() -> None:
    z, y = _calibrated_logits(3000, seed=3)
    z = 2.5 * z + 0.3  # a little bias too, which a temperature cannot remove

    def nll(t: float) -> float:
        p = np.clip(apply_temperature(z, t), 1e-12, 1 - 1e-12)
        return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))

    t = fit_temperature(z, y)
    grid = np.exp(np.linspace(np.log(0.1), np.log(10), 400))
    assert nll(t) <= min(nll(g) for g in grid) + 1e-9


def test_probabilities_to_logits_round_trip() -> None:
    p = np.array([0.01, 0.3, 0.5, 0.99])
    np.testing.assert_allclose(apply_temperature(probabilities_to_logits(p), 1.0), p)
    assert np.all(np.isfinite(probabilities_to_logits([0.0, 1.0])))


def test_calibration_errors() -> None:
    with pytest.raises(RealfaceError, match="probabilities"):
        expected_calibration_error([0, 1], [0.2, 3.0])
    with pytest.raises(RealfaceError, match="NaN"):
        reliability_diagram([0, 1], [0.2, float("nan")])
    with pytest.raises(RealfaceError, match="empty"):
        expected_calibration_error([], [])
    with pytest.raises(RealfaceError, match="n_bins"):
        reliability_diagram([0, 1], [0.2, 0.7], n_bins=0)
    with pytest.raises(RealfaceError, match="both real and fake"):
        fit_temperature([1.0, 2.0], [1, 1])
    with pytest.raises(RealfaceError, match="NaN"):
        fit_temperature([1.0, float("nan")], [0, 1])
    with pytest.raises(RealfaceError, match="positive"):
        apply_temperature([1.0], 0.0)
