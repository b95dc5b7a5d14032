"""Shared helpers for the NumPyro backend's tests.

These tests compile many small programs, most of them once, so XLA's optimisation passes
cost more time than they save: JAX's documented switch ``jax_disable_most_optimizations``
turns most of them off while the tests of this package run (the compiled programs
compute the same operations; no tolerance here depends on it). It is set by a
package-scoped fixture and restored when the package's last test ends, so tests outside
``tests/numpyro`` compile as users do. The speed benchmark turns it back on
(``optimized_xla`` below), and subprocesses get it through the environment.
"""

import os

import jax
import numpy as np
import pytest

_FLAG = "jax_disable_most_optimizations"
#: environment for subprocesses that should compile the same way
SUBPROCESS_ENV = {**os.environ, "JAX_DISABLE_MOST_OPTIMIZATIONS": "1"}


def _set_flag(value: bool):
    """Set the flag; return its previous value."""
    previous = jax.config.read(_FLAG)
    jax.config.update(_FLAG, value)
    return previous


@pytest.fixture(scope="package", autouse=True)
def fast_compilation():
    """Most XLA optimisations off for the tests of this package only."""
    previous = _set_flag(True)
    yield
    _set_flag(previous)


@pytest.fixture
def optimized_xla():
    """Fully optimised XLA compilation, as users get it (for timings)."""
    previous = _set_flag(False)
    yield
    _set_flag(previous)


def assert_close(actual, expected, atol=1e-6, rtol=1e-5, msg=""):
    """Default tolerances: float32 rounding of a few dozen operations."""
    np.testing.assert_allclose(
        np.asarray(actual, dtype=np.float64),
        np.asarray(expected, dtype=np.float64),
        atol=atol,
        rtol=rtol,
        err_msg=msg,
    )
