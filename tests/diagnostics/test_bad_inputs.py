"""Every input check's message, raised through the public metrics that use it."""

import numpy as np
import pytest

from vdppl.diagnostics import metrics

PROBS = np.array([[0.7, 0.3], [0.2, 0.8]])
Y = np.array([0, 1])


@pytest.mark.parametrize(
    "fn", [metrics.accuracy, metrics.nll, metrics.brier, metrics.calibration_errors], ids=str
)
def test_classification_metrics_name_both_shapes_when_they_differ(fn):
    with pytest.raises(ValueError, match=r"probs has shape \(2, 2\).*y has shape \(3,\); expected"):
        fn(PROBS, [0, 1, 1])


def test_probabilities_that_do_not_sum_to_one_name_the_row():
    probs = np.array([[0.7, 0.3], [0.2, 0.7], [0.5, 0.5]])
    with pytest.raises(ValueError, match=r"within 0.0001, but row 1 sums to 0.9; normalise"):
        metrics.nll(probs, [0, 1, 0])


def test_probability_rows_within_the_tolerance_are_accepted():
    # float32 softmax outputs are off by ~1e-7; 5e-5 is inside the documented 1e-4.
    metrics.nll([[0.7, 0.30005]], [0])


def test_prob_draws_name_the_draw_and_example_of_a_bad_row():
    draws = np.full((2, 3, 2), 0.5)
    draws[1, 2] = [0.5, 0.6]
    with pytest.raises(ValueError, match=r"prob_draws must sum to 1.*row \(1, 2\) sums to 1.1"):
        metrics.entropy_decomposition(draws)


def test_negative_probabilities_suggest_a_softmax():
    with pytest.raises(ValueError, match=r"probs has negative entries.*apply a softmax"):
        metrics.brier([[1.5, -0.5]], [0])


@pytest.mark.parametrize("bad", [np.nan, np.inf], ids=str)
def test_nan_and_inf_are_located(bad):
    probs = PROBS.copy()
    probs[1, 0] = bad
    with pytest.raises(
        ValueError, match=r"probs contains 1 NaN or inf value\(s\), the first at index \(1, 0\)"
    ):
        metrics.accuracy(probs, Y)
    with pytest.raises(ValueError, match=r"y contains 1 NaN or inf .* index 2; drop or impute"):
        metrics.rmse([1.0, 2.0, 3.0], [1.0, 2.0, bad])


def test_empty_test_set():
    with pytest.raises(ValueError, match=r"probs is empty \(shape \(0, 3\)\); pass at least one"):
        metrics.accuracy(np.zeros((0, 3)), [])
    with pytest.raises(ValueError, match=r"scores_out is empty"):
        metrics.auroc([0.1, 0.2], [])


def test_wrong_number_of_axes():
    with pytest.raises(ValueError, match=r"prob_draws must have shape \(draws, n, K\) \(3 axes\)"):
        metrics.classification_metrics(PROBS, Y)
    with pytest.raises(
        ValueError, match=r"y must have shape \(n,\) \(1 axes\), got shape \(2, 1\)"
    ):
        metrics.accuracy(PROBS, Y[:, None])


def test_non_numeric_input():
    with pytest.raises(TypeError, match=r"draws must be a numeric array of shape \(draws, n\)"):
        metrics.pit("abc", [1.0])


@pytest.mark.parametrize("label", [2, -1], ids=str)
def test_labels_out_of_range(label):
    with pytest.raises(ValueError, match=rf"labels in \[0, 1\] .* 2 classes .* y\[1\] = {label}"):
        metrics.nll(PROBS, [0, label])


def test_non_integer_labels():
    with pytest.raises(ValueError, match=r"integer class labels, but y\[0\] = 0.5"):
        metrics.accuracy(PROBS, [0.5, 1.0])
    assert metrics.accuracy(PROBS, [0.0, 1.0]) == 1.0  # integral floats are labels


def test_regression_shapes_are_named():
    with pytest.raises(ValueError, match=r"mean has shape \(2,\), std has shape \(3,\), y has"):
        metrics.gaussian_nll([0.0, 1.0], [1.0, 1.0, 1.0], [0.0, 1.0])
    with pytest.raises(ValueError, match=r"draws has shape \(5, 2\) \(2 examples on axis 1\)"):
        metrics.interval_coverage(np.zeros((5, 2)), [0.0, 1.0, 2.0])


def test_non_positive_std():
    with pytest.raises(ValueError, match=r"std must be > 0 everywhere, but std\[1\] = 0"):
        metrics.gaussian_nll([0.0, 0.0], [1.0, 0.0], [0.0, 0.0])


@pytest.mark.parametrize("level", [0.0, 1.0, 90.0], ids=str)
def test_levels_outside_the_unit_interval(level):
    with pytest.raises(ValueError, match=r"levels must lie strictly between 0 and 1"):
        metrics.interval_coverage(np.zeros((3, 1)), [0.0], levels=(0.5, level))


def test_empty_levels():
    with pytest.raises(ValueError, match=r"levels is empty"):
        metrics.regression_metrics(np.zeros((3, 1)), [0.0], levels=())


@pytest.mark.parametrize("n_bins", [0, 2.5, True], ids=str)
def test_n_bins_must_be_a_positive_integer(n_bins):
    with pytest.raises(ValueError, match=r"n_bins must be a positive integer"):
        metrics.reliability_bins(PROBS, Y, n_bins=n_bins)
