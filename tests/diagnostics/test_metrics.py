"""Each metric against a case with a known answer: by hand, closed form or brute force."""

import math

import numpy as np
import pytest
from scipy import stats

from vdppl.diagnostics import metrics

from .conftest import assert_close

# Three examples, three classes: predictions 0, 1, 2 against labels 0, 2, 2.
PROBS3 = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4]])
Y3 = np.array([0, 2, 2])


def calibrated_sample(rng, n, k):
    """Probabilities from a flat Dirichlet and labels drawn from them: calibrated by design."""
    probs = rng.dirichlet(np.ones(k), size=n)
    u = rng.random(n)[:, None]
    y = np.minimum((u > probs.cumsum(axis=1)).sum(axis=1), k - 1)
    return probs, y


# ---------------------------------------------------------------------- classification
def test_accuracy_nll_brier_by_hand():
    assert metrics.accuracy(PROBS3, Y3) == pytest.approx(2 / 3, rel=1e-15)
    assert_close(metrics.nll(PROBS3, Y3), -(math.log(0.7) + math.log(0.1) + math.log(0.4)) / 3)
    # sum_k (p_k - 1[y=k])^2 per row: 0.09+0.04+0.01, 0.01+0.64+0.81, 0.09+0.09+0.36
    assert_close(metrics.brier(PROBS3, Y3), (0.14 + 1.46 + 0.54) / 3)


def test_nll_floors_a_zero_probability_at_eps():
    assert_close(metrics.nll([[1.0, 0.0]], [1]), -math.log(metrics.EPS))


@pytest.mark.parametrize("k", [2, 3, 10], ids=str)
def test_brier_of_the_uniform_predictor_is_one_minus_one_over_k(k, rng):
    y = rng.integers(0, k, size=50)
    assert_close(metrics.brier(np.full((50, k), 1 / k), y), 1 - 1 / k)


def test_reliability_bins_by_hand():
    # n_bins=4: edges 0, .25, .5, .75, 1 (exact in binary); bins [0, .25], (.25, .5], ...
    probs = [
        [0.25, 0.25, 0.25, 0.25],  # conf .25 -> bin 0 (right edge), predicts 0: right
        [0.5, 0.5, 0.0, 0.0],  # conf .5 -> bin 1 (right edge), tie -> class 0, label 1: wrong
        [0.4, 0.3, 0.3, 0.0],  # conf .4 -> bin 1, right
        [0.75, 0.25, 0.0, 0.0],  # conf .75 -> bin 2 (right edge), right
        [0.2, 0.8, 0.0, 0.0],  # conf .8 -> bin 3, right
        [1.0, 0.0, 0.0, 0.0],  # conf 1 -> bin 3 (last edge), right
    ]
    y = [0, 1, 0, 0, 1, 0]
    bins = metrics.reliability_bins(probs, y, n_bins=4)
    assert bins.count.tolist() == [1, 2, 1, 2]
    assert_close(bins.edges, [0, 0.25, 0.5, 0.75, 1])
    assert_close(bins.confidence, [0.25, 0.45, 0.75, 0.9])
    assert_close(bins.accuracy, [1.0, 0.5, 1.0, 1.0])


def test_empty_bins_are_nan_and_do_not_count():
    bins = metrics.reliability_bins([[0.9, 0.1]], [0], n_bins=2)
    assert bins.count.tolist() == [0, 1]
    assert np.isnan(bins.confidence[0]) and np.isnan(bins.accuracy[0])
    assert_close(metrics.calibration_errors([[0.9, 0.1]], [0], n_bins=2), [0.1, 0.1])


def test_ece_and_mce_by_hand():
    probs = [
        [0.4, 0.3, 0.2, 0.1],  # conf .4 -> bin 0, predicts 0, label 1: wrong
        [0.9, 0.05, 0.03, 0.02],  # conf .9 -> bin 1, right
        [0.1, 0.7, 0.1, 0.1],  # conf .7 -> bin 1, predicts 1, label 0: wrong
        [0.05, 0.05, 0.1, 0.8],  # conf .8 -> bin 1, right
    ]
    y = [1, 0, 0, 3]
    # bin 0: |0 - 0.4| = 0.4; bin 1: |2/3 - 0.8| = 2/15; ECE = 1/4 * 0.4 + 3/4 * 2/15 = 0.2
    ece, mce = metrics.calibration_errors(probs, y, n_bins=2)
    assert_close(ece, 0.2)
    assert_close(mce, 0.4)


def test_calibrated_predictor_has_ece_within_binomial_noise(rng):
    probs, y = calibrated_sample(rng, n=20_000, k=3)
    bins = metrics.reliability_bins(probs, y)
    ece = metrics.calibration_errors(probs, y).ece
    # A calibrated predictor's ECE is the binomial noise of each bin's accuracy: of order
    # sum_b (n_b / n) sqrt(conf_b (1 - conf_b) / n_b) (about 0.01 here). Allow 3 times that.
    filled = bins.count > 0
    conf = bins.confidence[filled]
    noise = np.sum(bins.count[filled] / len(y) * np.sqrt(conf * (1 - conf) / bins.count[filled]))
    assert ece < 3 * noise
    # ... and the check has power: the same predictions sharpened (overconfident) fail it.
    sharp = probs**3 / np.sum(probs**3, axis=1, keepdims=True)
    assert metrics.calibration_errors(sharp, y).ece > 10 * noise


def test_entropy_decomposition_of_identical_draws_has_no_epistemic_part():
    p = np.array([[0.2, 0.3, 0.5], [1 / 3, 1 / 3, 1 / 3]])
    parts = metrics.entropy_decomposition(np.stack([p, p, p]))
    expected = [-(0.2 * math.log(0.2) + 0.3 * math.log(0.3) + 0.5 * math.log(0.5)), math.log(3)]
    assert_close(parts["total"], expected)
    assert_close(parts["aleatoric"], expected)
    assert np.all(parts["epistemic"] >= 0)  # rounding below 0 is clipped
    assert_close(parts["epistemic"], [0.0, 0.0], atol=1e-15)


def test_two_confident_disagreeing_draws_have_mutual_information_log_2():
    parts = metrics.entropy_decomposition([[[1.0, 0.0, 0.0]], [[0.0, 1.0, 0.0]]])
    assert_close(parts["total"], [math.log(2)])
    assert_close(parts["aleatoric"], [0.0])
    assert_close(parts["epistemic"], [math.log(2)])


def test_auroc_of_separated_and_identical_scores():
    assert metrics.auroc([0.1, 0.2, 0.3], [0.5, 0.6]) == 1.0
    assert metrics.auroc([0.5, 0.6], [0.1, 0.2, 0.3]) == 0.0
    same = np.array([0.1, 0.4, 0.4, 0.9])
    assert metrics.auroc(same, same) == 0.5  # every cross pair ties or cancels by symmetry


def test_auroc_of_one_distribution_is_near_one_half(rng):
    score_in, score_out = rng.normal(size=2000), rng.normal(size=2000)
    # Under H0 the AUROC has standard deviation sqrt((n1 + n2 + 1) / (12 n1 n2)) ~= 0.0091:
    # a fixed seed within 4 of them.
    assert metrics.auroc(score_in, score_out) == pytest.approx(0.5, abs=4 * 0.0091)


@pytest.mark.parametrize("n_in,n_out", [(1, 1), (30, 17), (200, 300)], ids=str)
def test_auroc_matches_a_brute_force_pairwise_count(n_in, n_out, rng):
    # Integer scores, so that ties are common and their 1/2 weight is exercised.
    score_in = rng.integers(0, 10, size=n_in).astype(float)
    score_out = rng.integers(3, 13, size=n_out).astype(float)
    diff = score_out[:, None] - score_in[None, :]
    brute = (np.sum(diff > 0) + 0.5 * np.sum(diff == 0)) / (n_in * n_out)
    assert_close(metrics.auroc(score_in, score_out), brute)


def test_classification_metrics_combines_the_single_metrics(rng):
    prob_draws = rng.dirichlet(np.ones(4), size=(5, 40))
    y = rng.integers(0, 4, size=40)
    result = metrics.classification_metrics(prob_draws, y, n_bins=5)
    probs = prob_draws.mean(axis=0)
    ece, mce = metrics.calibration_errors(probs, y, n_bins=5)
    parts = metrics.entropy_decomposition(prob_draws)
    expected = {
        "accuracy": metrics.accuracy(probs, y),
        "nll": metrics.nll(probs, y),
        "brier": metrics.brier(probs, y),
        "ece": ece,
        "mce": mce,
        **{f"entropy_{key}": float(value.mean()) for key, value in parts.items()},
    }
    assert result.keys() == expected.keys()
    for key, value in expected.items():
        assert isinstance(result[key], float)
        assert_close(result[key], value, msg=key)


# -------------------------------------------------------------------------- regression
def test_rmse_by_hand():
    assert_close(metrics.rmse([1.0, 2.0, 3.0], [1.0, 2.0, 5.0]), math.sqrt(4 / 3))


def test_gaussian_nll_matches_scipy(rng):
    mean, std, y = rng.normal(size=50), rng.uniform(0.1, 3.0, size=50), rng.normal(size=50)
    expected = -np.mean(stats.norm.logpdf(y, loc=mean, scale=std))
    assert_close(metrics.gaussian_nll(mean, std, y), expected)


def test_interval_coverage_by_hand():
    # 101 draws 0, 1, ..., 100 per example: the 50% interval is [25, 75] and the 90% one
    # [5, 95], ends included.
    draws = np.repeat(np.arange(101.0)[:, None], 5, axis=1)
    coverage = metrics.interval_coverage(draws, [25.0, 75.0, 80.0, 10.0, 96.0], levels=(0.5, 0.9))
    assert coverage == {0.5: 2 / 5, 0.9: 4 / 5}


def test_pit_by_hand_with_mid_rank_ties():
    draws = np.array([[1.0], [2.0], [3.0], [4.0]]).repeat(4, axis=1)
    assert_close(metrics.pit(draws, [2.5, 2.0, 0.0, 5.0]), [0.5, 0.375, 0.0, 1.0])


def gaussian_data(rng, n):
    """Means mu_i ~ N(0, 1) and targets y_i ~ N(mu_i, 1)."""
    mu = rng.normal(size=n)
    return mu, mu + rng.normal(size=n)


def gaussian_draws(rng, mu, draws, scale=1.0, shift=0.0):
    """Predictive draws from N(mu_i + shift, scale): calibrated for scale=1, shift=0."""
    return mu + shift + scale * rng.normal(size=(draws, len(mu)))


def test_coverage_of_a_calibrated_gaussian_is_nominal(rng):
    mu, y = gaussian_data(rng, n=2000)
    coverage = metrics.interval_coverage(gaussian_draws(rng, mu, draws=1000), y)
    # Binomial noise of a share over 2000 examples: sd <= sqrt(0.25 / 2000) ~= 0.011; the
    # quantiles estimated from 1000 draws add a little. Allow 4 sd.
    for level, share in coverage.items():
        assert share == pytest.approx(level, abs=0.045), level
    # ... and the check has power: half the scale covers 2 Phi(1.645 / 2) - 1 ~= 0.59 at 90%.
    narrow = gaussian_draws(rng, mu, draws=1000, scale=0.5)
    assert metrics.interval_coverage(narrow, y, levels=(0.9,))[0.9] < 0.7


def test_pit_of_calibrated_draws_is_uniform(rng):
    mu, y = gaussian_data(rng, n=1000)
    values = metrics.pit(gaussian_draws(rng, mu, draws=500), y)
    # Under uniformity the KS p-value is itself uniform: a fixed seed fails p > 0.01 with
    # probability 1% a priori. The PIT steps of 1/500 are far below the KS critical
    # distance at n = 1000 (~0.05), so the discreteness does not matter.
    assert stats.kstest(values, "uniform").pvalue > 0.01
    # ... and the test has power: a predictive shifted by one sd is far from uniform.
    shifted = metrics.pit(gaussian_draws(rng, mu, draws=500, shift=1.0), y)
    assert stats.kstest(shifted, "uniform").pvalue < 1e-6


def test_regression_metrics_combines_the_single_metrics(rng):
    mu, y = gaussian_data(rng, n=30)
    draws = gaussian_draws(rng, mu, draws=20)
    result = metrics.regression_metrics(draws, y, levels=(0.5, 0.9))
    assert result.keys() == {"rmse", "gaussian_nll", "coverage_0.5", "coverage_0.9"}
    assert_close(result["rmse"], metrics.rmse(draws.mean(0), y))
    assert_close(
        result["gaussian_nll"], metrics.gaussian_nll(draws.mean(0), draws.std(0, ddof=1), y)
    )
    coverage = metrics.interval_coverage(draws, y, levels=(0.5, 0.9))
    assert result["coverage_0.5"] == coverage[0.5] and result["coverage_0.9"] == coverage[0.9]


def test_regression_metrics_of_a_point_prediction_has_no_gaussian_nll():
    result = metrics.regression_metrics([[1.0, 2.0]], [1.0, 3.0])
    assert math.isnan(result["gaussian_nll"])
    assert_close(result["rmse"], math.sqrt(0.5))
