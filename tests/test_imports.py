"""Optional backends are imported lazily and missing ones say what to install."""

import subprocess
import sys

import pytest


def run(code):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)


def test_vdppl_imports_no_backend():
    out = run(
        "import sys, vdppl, vdppl.kl, vdppl.sparsity; "
        "print('torch' in sys.modules, 'jax' in sys.modules)"
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "False"]


def test_pyro_backend_does_not_import_jax():
    out = run("import sys, vdppl.pyro; print('jax' in sys.modules)")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("blocked", ["torch", "pyro"])
def test_missing_pyro_backend_says_what_to_install(blocked):
    out = run(f"import sys; sys.modules[{blocked!r}] = None; import vdppl.pyro")
    assert out.returncode != 0
    assert "pip install 'vdppl[pyro]'" in out.stderr
