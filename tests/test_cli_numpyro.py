"""``vdppl train --backend numpyro``: the real commands on tiny settings.

``train`` and ``evaluate`` run in subprocesses, as for Pyro (:mod:`tests.test_cli`).
Imports and JAX compilation dominate these runs, so the other commands (report, resume,
MAP, regression, gradreg) call ``vdppl.cli.main`` in this process, which imports
everything once. Every JAX program, here and in the subprocesses, is compiled with most
XLA optimisations off, as in ``tests/numpyro/conftest.py``: the programs compute the same
operations, and no assertion depends on their speed.
"""

import csv
import dataclasses
import json
import sys

import numpy as np
import pytest

from vdppl import cli, runs

from .test_cli import TINY, vdppl

NUMPYRO = ["--backend", "numpyro", "--hidden", "16", *TINY]
TIMING = {"train_seconds", "examples_per_second", "loo_warning"}


@pytest.fixture(scope="module", autouse=True)
def fast_compiles():
    """Most XLA optimisations off, in this process and in the subprocesses it starts. JAX
    is imported before the variable is set, so it never reaches this process's JAX
    (whose flag is restored after the module)."""
    jax = pytest.importorskip("jax")
    before = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
        yield
    jax.config.update("jax_disable_most_optimizations", before)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "digits"
    result = vdppl("train", "--epochs", 2, "--warmup", 2, "--out", out, *NUMPYRO)
    assert f"report: {out / 'report.html'}" in result.stdout
    return out


def rows(run):
    return [
        {k: v for k, v in r.items() if k != "seconds"}
        for r in csv.DictReader((run / "history.csv").open())
    ]


def metrics(run):
    return {k: v for k, v in json.loads((run / "metrics.json").read_text()).items()
            if k not in TIMING}  # fmt: skip


def test_train_evaluate_report(run_dir):
    m = metrics(run_dir)
    for key in ("test_error", "nll", "brier", "ece", "compression", "elpd_loo", "layers"):
        assert key in m, key
    assert 0 <= m["test_error"] <= 1 and m["total_weights"] == 64 * 16 + 16 * 10
    assert [layer["name"] for layer in m["layers"]] == ["Dense_0.kernel", "Dense_1.kernel"]
    config = json.loads((run_dir / "config.json").read_text())
    assert config["backend"] == "numpyro" and "jax_version" in config["versions"]
    assert [int(float(r["epoch"])) for r in rows(run_dir)] == [1, 2]
    result = vdppl("evaluate", run_dir)
    evaluation = json.loads((run_dir / "evaluation.json").read_text())
    assert "nll:" in result.stdout and evaluation["epochs"] == 2
    (run_dir / "report.html").unlink()
    assert cli.main(["report", str(run_dir)]) == 0  # backend-free: no subprocess needed
    page = (run_dir / "report.html").read_text()
    assert page.count("<img") >= 5 and "(numpyro)" in page


def train(*args):
    """``vdppl train ...`` in this process; its exit code."""
    return cli.main(["train", *map(str, args)])


def test_resume_in_another_process_equals_uninterrupted(run_dir, tmp_path):
    """The settings of ``run_dir`` (trained in a subprocess), stopped after one epoch and
    resumed from the checkpoint by a new Trainer, both in this process: the same history
    and metrics, to the last digit."""
    part = tmp_path / "part"
    assert train("--epochs", 1, "--warmup", 2, "--out", part, *NUMPYRO) == 0
    assert rows(part) == rows(run_dir)[:1]
    assert train("--resume", part, "--epochs", 2, "--quiet") == 0
    assert rows(part) == rows(run_dir)
    assert metrics(part) == metrics(run_dir)


def test_map_run_and_pretrained_means(tmp_path):
    from vdppl import data
    from vdppl.numpyro import load
    from vdppl.numpyro.train import Trainer

    out = tmp_path / "map"
    assert train("--method", "map", "--epochs", 1, "--out", out, *NUMPYRO) == 0
    m = metrics(out)  # a point estimate: no posterior draws (no LOO) and nothing pruned
    assert m["compression"] == 1.0 and not (out / "idata.nc").exists()
    assert m["elpd_loo"] is None and "posterior draws" in m["elpd_loo_reason"]
    assert m["test_lpd"] == pytest.approx(-90 * m["nll"])  # held out instead (90 test rows)
    fitted = load(out / "checkpoint")["params"]
    config = runs.Config(backend="numpyro", hidden=[16], pretrained=str(out)).validate()
    sparse = Trainer(config, cli._limited(data.load("digits"), 300, 90))
    theta = sparse.guide.median(sparse.params)
    for name in ("Dense_0.kernel", "Dense_1.kernel"):  # copied exactly, not refitted
        np.testing.assert_array_equal(theta[name], fitted[f"{name}_auto_loc"])
    np.testing.assert_array_equal(sparse.params["Dense_0.bias"], fitted["Dense_0.bias"])
    with pytest.raises(ValueError, match="differs in arch"):
        Trainer(dataclasses.replace(config, arch="lenet300"), data.load("digits"))


def test_gradreg_regression_with_learned_noise(tmp_path):
    """Two paths in one run (compilation dominates): the gradient-regularised ELBO with
    its own variance learning rate, and a regression head with learned noise."""
    out = tmp_path / "toy1d"
    args = ("--dataset", "toy1d", "--method", "gradreg", "--variance-lr", "0.03")
    assert train(*args, "--epochs", 1, "--out", out, *NUMPYRO) == 0
    m = metrics(out)
    assert m["rmse"] > 0 and "elpd_loo" in m and (out / "ppc.png").is_file()
    from vdppl.numpyro import load

    assert float(load(out / "checkpoint")["params"]["obs_noise"]) != 1.0  # fitted, from 1
    config = json.loads((out / "config.json").read_text())
    assert config["method"] == "gradreg" and config["variance_lr"] == 0.03


@pytest.mark.parametrize(
    "missing,usage", [("jax", True), ("flax.linen", True), ("vdppl.numpyro.nn", False)], ids=str
)
def test_only_a_missing_backend_package_asks_for_the_extra(monkeypatch, missing, usage):
    def fail(name):
        raise ModuleNotFoundError(f"No module named {missing!r}", name=missing)

    monkeypatch.setattr(cli.importlib, "import_module", fail)
    if usage:
        with pytest.raises(cli.UsageError, match=r"pip install 'vdppl\[numpyro\]'"):
            cli._trainer_class("numpyro")
    else:  # a bug inside vdppl is not a missing extra: it propagates
        with pytest.raises(ModuleNotFoundError, match="vdppl.numpyro.nn"):
            cli._trainer_class("numpyro")


def test_the_install_hint_of_require_counts_as_missing(monkeypatch):
    """``vdppl.numpyro`` re-raises a missing package with a hint; the cause names it."""
    from vdppl._optional import require

    monkeypatch.setitem(sys.modules, "numpyro", None)  # makes "import numpyro" fail
    with pytest.raises(ImportError, match="Install the backend") as info:
        require("numpyro", "numpyro")

    def fail(name):
        raise info.value

    monkeypatch.setattr(cli.importlib, "import_module", fail)
    with pytest.raises(cli.UsageError, match="needs its extra"):
        cli._trainer_class("numpyro")


def test_map_regression_metrics_use_the_fitted_noise():
    """A MAP regression run's Gaussian NLL uses the observation noise in the NumPyro
    parameters (1 at initialisation, so no training is needed to check where it is read)."""
    from vdppl import data
    from vdppl.numpyro.train import Trainer

    config = runs.Config(backend="numpyro", dataset="toy1d", method="map", hidden=[4])
    dataset = cli._limited(data.load("toy1d"), 40, 20)
    m = cli._regression_metrics(Trainer(config.validate(), dataset), config, dataset)
    assert m["obs_noise_std"] == pytest.approx(dataset.y_std)
    sigma, rmse = m["obs_noise_std"], m["rmse"]
    expected = 0.5 * np.log(2 * np.pi * sigma**2) + rmse**2 / (2 * sigma**2)
    assert m["gaussian_nll"] == pytest.approx(expected) and m["test_lpd"] == pytest.approx(
        -20 * expected
    )
