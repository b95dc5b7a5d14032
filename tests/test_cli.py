"""The ``vdppl`` command on tiny settings: for real in subprocesses, and in this process
(``cli.main``) where imports would dominate a subprocess."""

import csv
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

FASHION = Path("/usr/share/datasets/fashion-mnist")
TINY = ["--limit-train", "300", "--limit-test", "90", "--eval-samples", "8", "--quiet"]


def vdppl(*args, cwd=None, check=True):
    out = subprocess.run(
        [sys.executable, "-m", "vdppl.cli", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, "MPLBACKEND": "Agg"},
    )
    if check and out.returncode != 0:
        raise AssertionError(f"exit {out.returncode}\n{out.stdout}\n{out.stderr}")
    return out


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "digits"
    result = vdppl("train", "--epochs", 3, "--out", out, *TINY)
    assert f"report: {out / 'report.html'}" in result.stdout
    return out


def test_train_writes_the_run_directory(run_dir):
    names = {p.name for p in run_dir.iterdir()}
    assert {
        "config.json",
        "checkpoint",
        "history.csv",
        "metrics.json",
        "idata.nc",
        "report.html",
        "training.png",
        "sparsity.png",
        "log_alpha.png",
        "reliability.png",
        "mask.png",
    } <= names
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for key in (
        "test_error",
        "nll",
        "brier",
        "ece",
        "compression",
        "kept_weights",
        "total_weights",
        "layers",
        "elpd_loo",
        "pareto_k_share_above_0.7",
        "train_seconds",
        "examples_per_second",
    ):
        assert key in metrics, key
    assert (
        0 <= metrics["test_error"] <= 1
        and metrics["total_weights"] == 64 * 100 + 100 * 100 + 100 * 10
    )
    config = json.loads((run_dir / "config.json").read_text())
    assert (
        config["seed"] == 0
        and config["method"] == "sparse-vd"
        and "torch_version" in config["versions"]
    )
    rows = list(csv.DictReader((run_dir / "history.csv").open()))
    assert [int(float(r["epoch"])) for r in rows] == [1, 2, 3]


def test_evaluate_and_report(run_dir):
    result = vdppl("evaluate", run_dir)
    assert "nll:" in result.stdout and (run_dir / "evaluation.json").is_file()
    for name in ("report.html", "training.png"):
        (run_dir / name).unlink()
    result = vdppl("report", run_dir)
    page = (run_dir / "report.html").read_text()
    assert "data:image/png;base64," in page and page.count("<img") >= 5
    assert (run_dir / "training.png").is_file()


def test_report_opens_in_a_headless_browser(run_dir, tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("no chromium on this machine")
    shot = tmp_path / "shot.png"
    subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={tmp_path / 'profile'}",
            f"--screenshot={shot}",
            "--window-size=1200,1600",
            (run_dir / "report.html").as_uri(),
        ],
        capture_output=True,
        timeout=120,
        check=True,
    )
    assert shot.stat().st_size > 10_000


def test_resume_equals_uninterrupted(tmp_path):
    whole, part = tmp_path / "whole", tmp_path / "part"
    vdppl("train", "--epochs", 4, "--warmup", 2, "--out", whole, *TINY)
    vdppl("train", "--epochs", 2, "--warmup", 2, "--out", part, *TINY)
    vdppl("train", "--resume", part, "--epochs", 4, "--quiet")

    def rows(run):
        return [
            {k: v for k, v in r.items() if k != "seconds"}
            for r in csv.DictReader((run / "history.csv").open())
        ]

    assert rows(part) == rows(whole)
    timing = {"train_seconds", "examples_per_second", "loo_warning"}
    m_whole, m_part = (
        {k: v for k, v in json.loads((r / "metrics.json").read_text()).items() if k not in timing}
        for r in (whole, part)
    )
    assert m_part == m_whole


@pytest.mark.parametrize(
    "args,code,message",
    [
        (["train", "--dataset", "imagenet"], 2, "unknown dataset 'imagenet'; choose one of"),
        (["train", "--arch", "resnet"], 2, "unknown architecture 'resnet'; choose one of"),
        (["train", "--method", "dropconnect"], 2, "invalid choice: 'dropconnect'"),
        (["train", "--epochs", "0"], 2, "--epochs must be >= 1"),
        (["train", "--threshold", "20"], 2, "outside"),
        (
            ["train", "--dataset", "fashion-mnist", "--data-root", "/nonexistent"],
            1,
            "apt-get install",
        ),
    ],
    ids=["dataset", "arch", "method", "epochs", "threshold", "missing-data"],
)
def test_bad_options(args, code, message, tmp_path):
    result = vdppl(*args, "--out", tmp_path / "run", "--quiet", check=False, cwd=tmp_path)
    assert result.returncode == code
    assert message in result.stderr


def test_existing_out_is_never_overwritten(run_dir):
    before = (run_dir / "metrics.json").read_bytes()
    result = vdppl("train", "--out", run_dir, "--epochs", 1, *TINY, check=False)
    assert result.returncode == 1 and "--force" in result.stderr
    assert (run_dir / "metrics.json").read_bytes() == before


def test_no_arguments_trains_digits_offline(tmp_path, monkeypatch):
    result = vdppl(cwd=tmp_path)
    report = tmp_path / "runs" / "digits-mlp-sparse-vd-pyro" / "report.html"
    assert f"report: {report.relative_to(tmp_path)}" in result.stdout and report.is_file()
    metrics = json.loads((report.parent / "metrics.json").read_text())
    assert metrics["test_error"] <= 0.05 and metrics["compression"] >= 10
    assert metrics["train_seconds"] < 60
    # a second run of the same dataset, arch and method gets its own directory (tiny
    # settings in this process: only the naming is under test)
    from vdppl import cli

    monkeypatch.chdir(tmp_path)
    assert cli.main(["train", *map(str, SMALL)]) == 0
    assert (tmp_path / "runs" / "digits-mlp-sparse-vd-pyro-2" / "report.html").is_file()


@pytest.mark.skipif(not FASHION.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
def test_ood_detection_mnist_subset_vs_fashion(tmp_path):
    out = tmp_path / "mnist"
    vdppl("train", "--dataset", "mnist5k", "--arch", "lenet300", "--epochs", 1, "--out", out, *TINY)
    result = vdppl("evaluate", out, "--dataset", "fashion-mnist")
    assert "ood_auroc_total" in result.stdout
    evaluation = json.loads((out / "evaluation-fashion-mnist.json").read_text())
    assert 0 <= evaluation["ood_auroc_total"] <= 1 and "ood_auroc_epistemic" in evaluation
    vdppl("report", out)
    assert (
        "entropy-fashion-mnist.png" in (out / "report.html").read_text()
        or (out / "entropy-fashion-mnist.png").is_file()
    )


# ------------------------------------------------ in-process: cli.main, tiny settings
SMALL = ["--hidden", 16, "--limit-train", 120, "--limit-test", 40, "--eval-samples", 4]
SMALL += ["--epochs", 1, "--quiet"]  # --epochs last: a later --epochs overrides it


def main(*args):
    """``vdppl ARGS`` in this process: its exit code (usage errors exit through argparse)."""
    from vdppl import cli

    try:
        return cli.main([*map(str, args)])
    except SystemExit as exit:
        return exit.code


def strict_json(path):
    def refuse(name):
        raise AssertionError(f"{path.name} holds {name}, which is not JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


def test_force_replaces_a_previous_run_with_only_the_new_runs_files(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    stale = [
        "idata.nc",
        "ood-fashion-mnist.npz",
        "evaluation.json",
        "evaluation-mnist.json",
        "log_alpha.png",
        "entropy-mnist.png",
        "ppc.png",
        "report.html",
        "checkpoint",
        "history.csv",
        "metrics.json",
        ".metrics.json.x1y2z3.tmp",
    ]
    for name in stale:
        (run / name).write_text("stale")
    (run / "config.json").write_text('{"dataset": "boston"}')
    # a bad new run is refused before anything is deleted
    assert main("train", "--out", run, "--force", "--arch", "lenet5", *SMALL) == 2
    assert (run / "idata.nc").read_text() == "stale"
    capsys.readouterr()
    # MAP writes no idata.nc, log_alpha.png, evaluation or OOD files: any left is stale
    assert main("train", "--out", run, "--force", "--method", "map", *SMALL) == 0
    new = {"config.json", "checkpoint", "history.csv", "metrics.json", "report.html"}
    assert {p.name for p in run.iterdir()} == new | {"training.png", "sparsity.png"}
    assert json.loads((run / "config.json").read_text())["method"] == "map"
    assert "Predictive entropy" not in (run / "report.html").read_text()


def test_force_refuses_a_directory_that_is_not_a_run(tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    assert main("train", "--out", mine, "--force", *SMALL) == 1
    assert "not a vdppl run directory" in capsys.readouterr().err
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]


@pytest.mark.parametrize(
    "args,message",
    [
        (
            ["--dataset", "diabetes", "--arch", "lenet5"],
            "Architectures for diabetes: mlp, lenet300",
        ),
        (
            ["--dataset", "digits", "--arch", "lenet5"],
            "datasets for lenet5: mnist5k, fashion-mnist",
        ),
        (["--dataset", "toy1d", "--arch", "vgg-like"], "needs image inputs"),
        (["--dataset", "digits", "--arch", "vgg-like"], "datasets for vgg-like: cifar10"),
        (["--dataset", "digits", "--obs-noise", "0.1"], "--obs-noise is for regression datasets"),
        (["--pretrained", "/nonexistent/run"], "--pretrained needs a run of the same"),
    ],
    ids=[
        "tabular-conv",
        "small-images-conv",
        "tabular-vgg",
        "small-images-vgg",
        "obs-noise",
        "pretrained",
    ],
)
def test_bad_combinations_exit_2_and_leave_no_directory(args, message, tmp_path, capsys):
    out = tmp_path / "run"
    assert main("train", *args, "--out", out, *SMALL) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_arch_check_agrees_with_the_networks():
    """The backend-free shape check accepts exactly the (arch, dataset) pairs that build."""
    from vdppl import cli, data, models
    from vdppl.pyro.models import build

    for name in ("digits", "toy1d", "diabetes"):  # the table matches the loaders
        ds = data.load(name)
        assert cli._DATASET_INFO[name] == (ds.task, ds.input_shape)
    for arch in models.ARCHITECTURES:
        for task, shape in cli._DATASET_INFO.values():
            problem = cli._arch_problem(arch, shape)
            try:
                build(models.architecture(arch, 10), shape)
                built = True
            except ValueError:
                built = False
            assert (problem is None) == built, (arch, shape, problem)


def test_every_method_fits_a_regression_dataset(tmp_path):
    """No method is classification-only: each trains and is evaluated on toy1d (the
    training loop and metrics of ``vdppl train``, without the slow report)."""
    from vdppl import cli, data, runs
    from vdppl.pyro.train import Trainer

    dataset = cli._limited(data.load("toy1d"), 40, 20)
    for method in runs.METHODS:
        config = runs.Config(dataset="toy1d", method=method, hidden=[4], epochs=1, eval_samples=3)
        trainer, history = Trainer(config.validate(), dataset), []
        cli._fit(trainer, config, dataset, tmp_path, history, 0, quiet=True)
        cli.evaluate_run(trainer, config, dataset, tmp_path, history)
        metrics = strict_json(tmp_path / "metrics.json")
        assert metrics["rmse"] > 0 and math.isfinite(metrics["gaussian_nll"]), method


def test_evaluate_a_regression_run(tmp_path, capsys):
    run = tmp_path / "toy1d"
    assert main("train", "--dataset", "toy1d", "--out", run, *SMALL) == 0
    assert main("evaluate", run) == 0
    evaluation = strict_json(run / "evaluation.json")
    trained = strict_json(run / "metrics.json")
    for key in ("rmse", "gaussian_nll", "coverage_0.5", "coverage_0.9", "coverage_0.95"):
        assert math.isfinite(evaluation[key]), key
        assert math.isfinite(trained[key]), key
    assert 0 <= evaluation["coverage_0.5"] <= evaluation["coverage_0.95"] <= 1
    assert evaluation["rmse"] == pytest.approx(trained["rmse"], rel=0.5)
    assert "rmse:" in capsys.readouterr().out
    assert main("evaluate", run, "--dataset", "digits") == 2
    assert "is a regression run" in capsys.readouterr().err
    assert not (run / "evaluation-digits.json").exists()
    # every file but the checkpoint (written by the backend) follows the umask
    mask = os.umask(0o022)
    os.umask(mask)
    for name in ("config.json", "metrics.json", "history.csv", "idata.nc", "report.html"):
        assert (run / name).stat().st_mode & 0o777 == 0o666 & ~mask, name


@pytest.mark.parametrize("dataset", ["digits", "toy1d"])
def test_map_metrics_are_strict_json_with_a_held_out_lpd(dataset, tmp_path):
    run = tmp_path / dataset
    assert main("train", "--dataset", dataset, "--method", "map", "--out", run, *SMALL) == 0
    metrics = strict_json(run / "metrics.json")
    assert metrics["elpd_loo"] is None and "posterior draws" in metrics["elpd_loo_reason"]
    n = 40
    if dataset == "digits":
        assert metrics["test_lpd"] == pytest.approx(-n * metrics["nll"])
        return
    # Normal(prediction, sigma) with the learned sigma: the NLL follows from RMSE and sigma
    import pyro
    import torch

    from vdppl import data

    store = torch.load(run / "checkpoint", weights_only=False)["param_store"]
    pyro.get_param_store().set_state(store)
    sigma = float(pyro.param("obs_noise").detach()) * data.load("toy1d").y_std
    assert sigma != pytest.approx(data.load("toy1d").y_std)  # fitted, not the initial 1
    assert metrics["obs_noise_std"] == pytest.approx(sigma)
    rmse, nll = metrics["rmse"], metrics["gaussian_nll"]
    assert nll == pytest.approx(0.5 * math.log(2 * math.pi * sigma**2) + rmse**2 / (2 * sigma**2))
    assert metrics["test_lpd"] == pytest.approx(-n * nll)
    assert 0 < metrics["coverage_0.95"] <= 1


def test_resume_of_a_finished_run(tmp_path, capsys):
    from vdppl import cli, data, runs
    from vdppl.pyro.train import Trainer

    run = tmp_path / "run"
    assert main("train", "--out", run, *SMALL, "--epochs", 2) == 0
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    capsys.readouterr()
    assert main("train", "--resume", run, "--quiet") == 0
    assert "is complete: 2 of 2 epochs" in capsys.readouterr().out
    assert main("train", "--resume", run, "--epochs", 1, "--quiet") == 2
    assert "--epochs 3 or more" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before  # nothing rewritten

    # the state a resumed run starts from is the saved one, not the fresh guide's
    config = runs.Config.from_dict(json.loads((run / "config.json").read_text()))
    dataset = cli._limited(data.load("digits"), 120, 40)
    import arviz as az

    saved = az.from_netcdf(run / "idata.nc").log_alpha
    trainer = Trainer(config, dataset)
    fresh = trainer.log_alpha()
    trainer.load(run / "checkpoint")
    loaded = trainer.log_alpha()
    for name in fresh:
        np.testing.assert_allclose(loaded[name], saved[name].values, rtol=1e-5, atol=1e-5)
        assert not np.allclose(fresh[name], loaded[name])
    assert trainer.sparsity().kept == json.loads(before["metrics.json"])["kept_weights"]

    assert main("train", "--resume", run, "--epochs", 3, "--quiet") == 0
    rows = list(csv.DictReader((run / "history.csv").open()))
    old = list(csv.DictReader(before["history.csv"].decode().splitlines()))
    assert [int(float(r["epoch"])) for r in rows] == [1, 2, 3] and rows[:2] == old
    assert strict_json(run / "config.json")["epochs"] == 3
    assert strict_json(run / "metrics.json")["epochs"] == 3


def test_the_module_docstring_names_every_subcommand():
    from vdppl import cli

    for command in ("train", "evaluate", "report", "bench"):
        assert f"``{command}``" in cli.__doc__.splitlines()[0]
