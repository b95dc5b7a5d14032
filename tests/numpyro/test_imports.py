"""Each backend imports only its own framework; a missing one says what to install."""

import subprocess
import sys

import pytest


def run(code):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)


def test_numpyro_backend_does_not_import_torch_or_flax():
    out = run("import sys, vdppl.numpyro; print('torch' in sys.modules, 'flax' in sys.modules)")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "False"]  # flax loads with bayesianize only


def test_pyro_backend_does_not_import_jax():
    out = run("import sys, vdppl.pyro; print('jax' in sys.modules, 'numpyro' in sys.modules)")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "False"]


@pytest.mark.parametrize("blocked", ["jax", "numpyro"])
def test_missing_numpyro_backend_says_what_to_install(blocked):
    out = run(f"import sys; sys.modules[{blocked!r}] = None; import vdppl.numpyro")
    assert out.returncode != 0
    assert "pip install 'vdppl[numpyro]'" in out.stderr
