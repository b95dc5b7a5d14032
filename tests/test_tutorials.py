"""Every tutorial in ``tutorials/`` executes top to bottom in smoke mode.

The tutorials are Jupyter notebooks kept as jupytext percent-format ``.py`` files. Each is
converted to a notebook and run in a fresh Jupyter kernel with ``CI`` set (the notebooks
read ``smoke_test = "CI" in os.environ`` and shrink to tiny settings) and matplotlib's
Agg backend. A failing cell fails the test with that cell's source and traceback.
"""

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).parents[1]
TUTORIALS = sorted((ROOT / "tutorials").glob("[0-9][0-9]_*.py"))

# Smoke runs take 5-20 s each on 2 cores (kernel start and imports included); the
# timeout leaves room for a loaded machine without letting a hung cell block the suite.
CELL_TIMEOUT = 300
ANSI_COLOURS = re.compile(r"\x1b\[[0-9;]*m")


def test_tutorials_are_found():
    assert TUTORIALS, "no tutorials/NN_*.py notebooks found"


def run_in_smoke_mode(notebook, name, tmp_path, monkeypatch):
    """Execute ``notebook`` in a fresh kernel; a failing cell fails the test with its error."""
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    # The kernel inherits this process's environment.
    monkeypatch.setenv("CI", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("PYDEVD_DISABLE_FILE_VALIDATION", "1")  # quiet debugger warning
    # Smoke runs use tiny tensors, where extra OpenMP threads do not help; on a busy
    # machine (other tests, other jobs) they oversubscribe the cores and slowed a 8 s
    # notebook to 35 s in our measurements.
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    # The NumPyro notebooks compile each program once or twice on tiny inputs, so XLA's
    # optimisation passes cost more than they save (tests/numpyro/conftest.py); smoke
    # runs print timings but assert none.
    monkeypatch.setenv("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
    client = nbclient.NotebookClient(
        notebook,
        timeout=CELL_TIMEOUT,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},  # files a notebook writes go here
    )
    error = None
    try:
        client.execute()
    except nbclient.exceptions.CellExecutionError as err:
        error = ANSI_COLOURS.sub("", str(err))  # the cell's source and its traceback
    if error is not None:  # raised outside the except block: no chained duplicate
        pytest.fail(f"{name} failed in smoke mode:\n{error}", pytrace=False)


@pytest.mark.parametrize("path", TUTORIALS, ids=lambda p: p.stem)
def test_tutorial_runs_in_smoke_mode(path, tmp_path, monkeypatch):
    jupytext = pytest.importorskip("jupytext")
    pytest.importorskip("pyro")
    notebook = jupytext.read(path)
    first_code = next((c.source for c in notebook.cells if c.cell_type == "code"), "")
    assert 'smoke_test = "CI" in os.environ' in first_code, (
        f"{path.name}: the first code cell must set smoke_test from the CI variable"
    )
    run_in_smoke_mode(notebook, path.name, tmp_path, monkeypatch)


def test_a_failing_cell_fails_with_its_error(tmp_path, monkeypatch):
    jupytext = pytest.importorskip("jupytext")
    text = (
        "# %%\nimport os\n\nsmoke_test = 'CI' in os.environ\n\n"
        "# %%\nraise ValueError(f'tutorial cell broke, smoke_test={smoke_test}')\n"
    )
    notebook = jupytext.reads(text, fmt="py:percent")
    with pytest.raises(pytest.fail.Exception, match=r"ValueError.*smoke_test=True"):
        run_in_smoke_mode(notebook, "broken.py", tmp_path, monkeypatch)
