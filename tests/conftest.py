"""Shared test options and fixtures.

``--run-slow`` enables tests marked ``slow``. Every test that runs with Pyro imported
starts with an empty param store, Pyro validation on and seed 0 (``fresh_pyro``).
"""

import sys

import pytest


def pytest_addoption(parser):
    parser.addoption(
        "--run-slow",
        action="store_true",
        default=False,
        help="run long tests (full benchmarks, long training) marked @pytest.mark.slow",
    )


def pytest_collection_modifyitems(config, items):
    if config.getoption("--run-slow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --run-slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def fresh_pyro():
    """An empty param store, validation on (restored after) and a fixed seed.

    Applies to every test once Pyro is imported (test modules import it at collection),
    without importing it here: the NumPyro-only and import tests must run without Pyro.
    """
    pyro = sys.modules.get("pyro")
    if pyro is None:
        yield
        return
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    with pyro.validation_enabled(True):
        yield
    pyro.clear_param_store()
