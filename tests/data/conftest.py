"""The dataset tests never touch the network."""

import urllib.error

import pytest

from vdppl.data import download


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Every download fails as on an offline machine; tests that need one fake it."""

    def offline(url, dest, timeout=None):
        raise urllib.error.URLError("network disabled in tests")

    monkeypatch.setattr(download, "fetch", offline)
