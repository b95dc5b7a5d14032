"""Helpers of the Pyro tests (``fresh_pyro``, autouse, lives in ``tests/conftest.py``)."""

import torch


def assert_close(actual, expected, atol=1e-6, rtol=1e-5, msg=""):
    torch.testing.assert_close(
        torch.as_tensor(actual),
        torch.as_tensor(expected).to(torch.as_tensor(actual).dtype),
        atol=atol,
        rtol=rtol,
        msg=msg or None,
    )
