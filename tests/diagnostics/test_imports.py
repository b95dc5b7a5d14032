"""The diagnostics are backend-free: no torch, no JAX, and no matplotlib until a plot is drawn."""

import subprocess
import sys


def test_diagnostics_import_no_backend_and_no_matplotlib():
    code = (
        "import sys, vdppl.diagnostics, vdppl.diagnostics.metrics, vdppl.diagnostics.plots; "
        "print(*(name in sys.modules for name in ('torch', 'jax', 'matplotlib')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "False", "False"]
