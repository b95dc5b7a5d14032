import pyro
import pytest
import torch


@pytest.fixture(autouse=True)
def fresh_pyro():
    """Each test starts with an empty param store, validation on and a fixed seed."""
    pyro.clear_param_store()
    pyro.enable_validation(True)
    pyro.set_rng_seed(0)
    yield
    pyro.clear_param_store()


def assert_close(actual, expected, atol=1e-6, rtol=1e-5, msg=""):
    torch.testing.assert_close(
        torch.as_tensor(actual),
        torch.as_tensor(expected).to(torch.as_tensor(actual).dtype),
        atol=atol,
        rtol=rtol,
        msg=msg or None,
    )
