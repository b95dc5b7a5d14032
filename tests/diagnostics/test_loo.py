"""PSIS-LOO (``elpd_loo``) and LOO-PIT (``metrics.loo_pit``) against known answers."""

import math
import warnings

import arviz as az
import numpy as np
import pytest
from scipy import stats

from vdppl.diagnostics import metrics
from vdppl.diagnostics.loo import UnreliableLOOWarning, elpd_loo

from .conftest import assert_close


def idata_of(log_lik):
    """InferenceData with one chain of ``log_lik`` draws ``(draws, n)`` (and a posterior)."""
    log_lik = np.asarray(log_lik)
    return az.from_dict(
        log_likelihood={"y": log_lik[None]}, posterior={"a": np.zeros((1, len(log_lik)))}
    )


@pytest.fixture(scope="module")
def conjugate():
    """``y_i ~ N(mu, 1)``, flat prior: exact draws of ``mu | y ~ N(mean(y), 1/n)``.

    Without example ``i`` the posterior is ``N(m_i, 1/(n-1))``, ``m_i`` the mean of the
    other ``n - 1`` targets, so ``y_i``'s leave-one-out predictive is
    ``N(m_i, 1 + 1/(n-1))``: exact ELPD-LOO and LOO-PIT in closed form.
    """
    n, draws = 20, 4000
    rng = np.random.default_rng(0)
    y = rng.normal(0.5, 1.0, n)
    mu = rng.normal(y.mean(), 1 / math.sqrt(n), draws)
    log_lik = stats.norm.logpdf(y[None], mu[:, None], 1.0)
    y_rep = rng.normal(mu[:, None], 1.0, (draws, n))
    loo_mean, loo_scale = (y.sum() - y) / (n - 1), math.sqrt(1 + 1 / (n - 1))
    return {
        "y": y,
        "log_lik": log_lik,
        "y_rep": y_rep,
        "elpd": stats.norm.logpdf(y, loo_mean, loo_scale).sum(),
        "pit": stats.norm.cdf((y - loo_mean) / loo_scale),
    }


def test_identical_draws_give_the_log_likelihood_sum_and_warn():
    # A point estimate repeated: every importance weight is equal, so each point's LOO
    # predictive is its likelihood, p_loo = 0, and k = inf (no tail to fit) warns.
    ll = np.tile([-1.0, -2.0, -0.5], (50, 1))
    with pytest.warns(UnreliableLOOWarning, match=r"3 of 3 observations \(100.0%\)"):
        result = elpd_loo(idata_of(ll))
    assert_close(result["elpd_loo"], -3.5)
    assert_close(result["p_loo"], 0.0, atol=1e-12)
    assert result["pareto_k_share_above_0.7"] == 1.0 and result["n"] == 3


def test_elpd_loo_matches_exact_leave_one_out(conjugate):
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnreliableLOOWarning)  # k ~ 0.2 here: no warning
        result = elpd_loo(idata_of(conjugate["log_lik"]))
    # Over seeds 0-5 the estimate is off the exact value by at most 0.009 (Monte Carlo
    # error of 4000 draws); 0.05 is about 5 such errors, and far below the optimism of
    # the in-sample lppd (0.75 here), which an estimate that left nothing out would show.
    assert_close(result["elpd_loo"], conjugate["elpd"], atol=0.05, rtol=0)
    lppd = np.log(np.mean(np.exp(conjugate["log_lik"]), axis=0)).sum()
    assert lppd - conjugate["elpd"] > 0.5
    assert_close(result["p_loo"], lppd - result["elpd_loo"])


def test_loo_pit_matches_exact_leave_one_out(conjugate):
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnreliableLOOWarning)
        values = metrics.loo_pit(conjugate["y_rep"], conjugate["y"], conjugate["log_lik"])
    # Each value is a weighted share of 4000 draws, sd ~ sqrt(p (1 - p) / 4000) <= 0.008;
    # the largest of 20 errors was <= 0.017 over seeds 0-5, so 0.04 is ~5 sd.
    assert values.shape == (20,)
    assert_close(values, conjugate["pit"], atol=0.04, rtol=0)
    # in-sample PIT is pulled towards 0.5 (the posterior saw each target); LOO-PIT is not
    in_sample = metrics.pit(conjugate["y_rep"], conjugate["y"])
    assert np.abs(values - 0.5).sum() > np.abs(in_sample - 0.5).sum()


def test_loo_pit_with_equal_weights_is_the_share_of_draws_at_or_below():
    # Equal log likelihoods: uniform weights, so LOO-PIT is mean(draws <= y); the tie at
    # y = 2 counts fully (pit would count it one half).
    draws = np.array([[1.0, 0.0], [2.0, 0.0], [3.0, 1.0], [4.0, 1.0]])
    with pytest.warns(UnreliableLOOWarning, match="loo_pit is not trustworthy"):
        values = metrics.loo_pit(draws, [2.0, 0.5], np.zeros((4, 2)))
    assert_close(values, [0.5, 0.5])


def test_loo_pit_bad_inputs():
    draws = np.zeros((4, 3))
    with pytest.raises(ValueError, match=r"draws has shape \(4, 3\), log_lik has shape \(4, 2\)"):
        metrics.loo_pit(draws, np.zeros(3), np.zeros((4, 2)))
    log_lik = np.zeros((4, 3))
    log_lik[2, 1] = np.nan
    with pytest.raises(ValueError, match=r"log_lik contains 1 NaN or inf value\(s\)"):
        metrics.loo_pit(draws, np.zeros(3), log_lik)
