"""The README's code runs as written, and its commands are the ones CI runs."""

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).parents[1]
README = (ROOT / "README.md").read_text()


def blocks(language):
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


def example(backend):
    """The README's Python example that imports ``vdppl.<backend>``."""
    (code,) = [b for b in blocks("python") if f"import vdppl.{backend} as vd" in b]
    return code


def run_example(backend, capsys):
    pytest.importorskip(backend)
    exec(compile(example(backend), "README.md", "exec"), {"__name__": "readme"})
    out = capsys.readouterr().out
    return float(re.search(r"compressed network: ([0-9.]+)", out).group(1))


def test_pyro_example_runs(capsys):
    # 20 epochs of sparse VD on digits; the 60-epoch run of examples/pyro_digits.py
    # reaches 0.958, and 0.9 leaves room for the shorter run, not for a broken one (a
    # network that learnt nothing scores 0.1).
    assert run_example("pyro", capsys) > 0.9


def test_numpyro_example_runs(capsys):
    # The same recipe in NumPyro (one hidden layer of 100); measured 0.944 with seed 0.
    assert run_example("numpyro", capsys) > 0.9


def test_ci_runs_the_readme_test_command():
    test_command = next(b for b in blocks("bash") if "# the tests" in b).splitlines()[-1]
    assert test_command in (ROOT / ".ci" / "run").read_text()


def test_main_job_command_is_the_quick_start():
    main_job = next(b for b in blocks("bash") if "# the main job" in b).splitlines()[-1]
    assert main_job.startswith("pip install torch==2.13.0 && pip install -e ")
    assert main_job.endswith("&& vdppl train")
