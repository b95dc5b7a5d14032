"""The ``vdppl`` command, run for real in subprocesses on tiny settings."""

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

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


def test_no_arguments_trains_digits_offline(tmp_path):
    result = vdppl(cwd=tmp_path)
    report = tmp_path / "runs" / "digits-mlp-sparse-vd-pyro" / "report.html"
    assert f"report: {report.relative_to(tmp_path)}" in result.stdout and report.is_file()
    metrics = json.loads((report.parent / "metrics.json").read_text())
    assert metrics["test_error"] <= 0.05 and metrics["compression"] >= 10
    assert metrics["train_seconds"] < 60
    vdppl(cwd=tmp_path)  # a second run gets its own directory
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
