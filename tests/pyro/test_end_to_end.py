"""Sparse VD on digits: accurate, compressed, fast (issue acceptance criteria)."""

import importlib.util
import pathlib

import pyro
import pyro.distributions as dist
import pytest
import torch

import vdppl.pyro as vd

EXAMPLE = pathlib.Path(__file__).parents[2] / "examples" / "pyro_digits.py"


def load_example():
    spec = importlib.util.spec_from_file_location("pyro_digits", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_sparse_vd_on_digits():
    threads = torch.get_num_threads()
    result = load_example().train(quiet=True)  # seed 0, 60 epochs, warm-up 30, 1 thread
    assert torch.get_num_threads() == threads  # the example restores torch's setting
    assert result["accuracy_pruned_mean"] >= 0.95
    assert result["compression"] >= 10
    assert result["train_seconds"] < 60
    # the plain compressed module predicts exactly as the masked mean network
    assert result["accuracy_compressed"] == result["accuracy_pruned_mean"]


def test_predict_modes_and_predictive():
    bnn = vd.bayesianize(
        torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    )

    def model(x, y=None):
        logits = pyro.deterministic("logits", bnn(x))
        with pyro.plate("data", len(x)):
            return pyro.sample("y", dist.Categorical(logits=logits), obs=y)

    guide = vd.AutoVariationalDropout(model, init_log_sigma2=-2.0)
    x = torch.randn(6, 3)
    guide(x, torch.randint(0, 2, (6,)))  # set up with observed labels
    mean = vd.predict(model, guide, x, mode="mean")
    assert mean["logits"].shape == (1, 6, 2) and mean["y"].shape == (1, 6)
    again = vd.predict(model, guide, x, mode="mean")
    assert torch.equal(mean["logits"], again["logits"])  # deterministic
    for mode in ("mc", "lrt"):
        draws = vd.predict(model, guide, x, mode=mode, num_samples=7, return_sites=["logits"])
        assert set(draws) == {"logits"} and draws["logits"].shape == (7, 6, 2)
        assert draws["logits"].std(0).min() > 0  # noisy
    with pytest.raises(RuntimeError, match="give it the guide's model"):
        pyro.infer.Predictive(model, guide=guide, num_samples=5)(x)
    samples = pyro.infer.Predictive(guide.model, guide=guide, num_samples=5)(x)
    logits = samples["logits"].squeeze(1)  # Predictive keeps a dim for the data plate
    assert logits.shape == (5, 6, 2) and logits.std(0).min() > 0
    with pytest.raises(RuntimeError, match="mode='lrt'"), vd.local_reparam():
        pyro.infer.Predictive(guide.model, guide=guide, num_samples=5)(x)
    with pytest.raises(ValueError, match="mode must be one of"):
        vd.predict(model, guide, x, mode="median")
    with pytest.raises(ValueError, match="num_samples must be a positive int"):
        vd.predict(model, guide, x, mode="mc", num_samples=0)
