"""The README's code runs as written, and its commands are the ones CI runs."""

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).parents[1]
README = (ROOT / "README.md").read_text()


def blocks(language):
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


def test_python_example_runs(capsys):
    pytest.importorskip("pyro")
    (code,) = blocks("python")
    exec(compile(code, "README.md", "exec"), {"__name__": "readme"})
    out = capsys.readouterr().out
    accuracy = float(re.search(r"compressed network: ([0-9.]+)", out).group(1))
    assert accuracy > 0.9  # 20 epochs of sparse VD on digits; the full run reaches 0.958


def test_ci_runs_the_readme_test_command():
    test_command = next(b for b in blocks("bash") if "# the tests" in b).splitlines()[-1]
    assert test_command in (ROOT / ".ci" / "run").read_text()
