"""Headless plotting, closed figures and a shared ``assert_close`` for the diagnostics tests."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pytest


@pytest.fixture(autouse=True)
def close_figures():
    """Each test starts and ends without open pyplot figures."""
    plt.close("all")
    yield
    plt.close("all")


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def assert_close(actual, expected, atol=1e-12, rtol=1e-12, msg=""):
    """Default tolerances: float64 rounding of a few dozen operations, nothing more."""
    np.testing.assert_allclose(actual, expected, atol=atol, rtol=rtol, err_msg=msg)
