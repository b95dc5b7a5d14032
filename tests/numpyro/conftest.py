"""Shared helpers for the NumPyro backend's tests (no global state to reset in JAX).

These tests compile many small programs, most of them once, so XLA's optimisation passes
cost more time than they save: JAX's documented switch ``jax_disable_most_optimizations``
turns most of them off for this directory (the compiled programs compute the same
operations; no tolerance here depends on it). The speed benchmark turns it back on
(``optimized_xla`` below), and subprocesses get it through the environment.
"""

import os

import jax
import numpy as np
import pytest

jax.config.update("jax_disable_most_optimizations", True)
#: environment for subprocesses that should compile the same way
SUBPROCESS_ENV = {**os.environ, "JAX_DISABLE_MOST_OPTIMIZATIONS": "1"}


@pytest.fixture
def optimized_xla():
    """Fully optimised XLA compilation, as users get it (for timings)."""
    jax.config.update("jax_disable_most_optimizations", False)
    yield
    jax.config.update("jax_disable_most_optimizations", True)


def assert_close(actual, expected, atol=1e-6, rtol=1e-5, msg=""):
    """Default tolerances: float32 rounding of a few dozen operations."""
    np.testing.assert_allclose(
        np.asarray(actual, dtype=np.float64),
        np.asarray(expected, dtype=np.float64),
        atol=atol,
        rtol=rtol,
        err_msg=msg,
    )
