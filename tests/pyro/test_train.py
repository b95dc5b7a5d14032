"""The Pyro trainer behind ``vdppl train``: methods, pretrained means, divergence."""

import dataclasses
import json
import math

import numpy as np
import pytest
import torch

from vdppl import data, runs
from vdppl.pyro.train import Trainer
from vdppl.runs import Config


@pytest.fixture(scope="module")
def digits():
    ds = data.load("digits")
    return dataclasses.replace(
        ds,
        x_train=ds.x_train[:200],
        y_train=ds.y_train[:200],
        x_test=ds.x_test[:50],
        y_test=ds.y_test[:50],
    )


def config(**kw):
    return Config(**{"epochs": 2, "warmup": 1, "hidden": [16], "eval_samples": 4, **kw}).validate()


@pytest.mark.parametrize(
    "method", ["sparse-vd", "vd-a", "vd-b", "gaussian-dropout", "map", "gradreg"]
)
def test_each_method_trains_and_predicts(method, digits):
    trainer = Trainer(config(method=method), digits)
    rows = [trainer.epoch(e) for e in range(2)]
    assert all(math.isfinite(r["loss"]) for r in rows)
    outputs = trainer.pruned_outputs(digits.x_test)
    assert outputs.shape == (50, 10)
    probs = trainer.predictive_probs(digits.x_test, 3)
    np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-5)
    assert trainer.sparsity().total == 64 * 16 + 16 * 10


def test_epoch_loss_is_the_per_example_negative_elbo(digits):
    # With a learning rate of ~0 the parameters do not move during the epoch, and with KL
    # weight 0 (the first warm-up epoch) every minibatch's loss estimates the whole training
    # set's NLL. At log sigma^2 = -10 the weight noise changes logits by ~1e-3, so the
    # average minibatch loss equals the mean network's NLL per example to within 1e-2.
    trainer = Trainer(config(lr=1e-12, warmup=5), digits)
    row = trainer.epoch(0)
    logits = torch.as_tensor(trainer.pruned_outputs(digits.x_train))
    nll = torch.nn.functional.cross_entropy(logits, torch.as_tensor(digits.y_train)).item()
    assert row["kl_weight"] == 0.0
    assert row["loss"] == pytest.approx(nll, rel=1e-2)
    assert row["data"] == pytest.approx(nll, rel=1e-2)


def test_pretrained_means_come_from_a_map_run(digits, tmp_path):
    dense = Trainer(config(method="map"), digits)
    dense.epoch(0)
    runs.write_json(tmp_path / runs.CONFIG, config(method="map").to_dict())
    dense.save(tmp_path / runs.CHECKPOINT, epoch=1, history=[])
    map_weights = {k: v.clone() for k, v in dense.guide.median().items()}
    sparse = Trainer(config(pretrained=str(tmp_path)), digits)
    theta = sparse.guide.median()
    for name, value in map_weights.items():
        torch.testing.assert_close(theta[name], value)
    with pytest.raises(ValueError, match="differs in arch"):
        Trainer(config(pretrained=str(tmp_path), arch="lenet300"), digits)


def test_regression_on_toy1d():
    ds = data.load("toy1d")
    trainer = Trainer(config(dataset="toy1d", hidden=[32, 32]), ds)
    trainer.epoch(0)
    assert trainer.pruned_outputs(ds.x_test).shape == (len(ds.x_test),)
    idata = trainer.inference_data(ds.x_test, ds.y_test, num_samples=3, include_x=True)
    assert idata.posterior_predictive["y"].shape == (1, 3, len(ds.x_test))


def test_divergence_stops_with_a_message(digits, monkeypatch):
    trainer = Trainer(config(), digits)
    monkeypatch.setattr(trainer.svi, "step", lambda *a: float("nan"))
    with pytest.raises(FloatingPointError, match="training diverged"):
        trainer.epoch(0)


def test_config_round_trip(tmp_path):
    c = config(method="gradreg", variance_lr=0.01)
    runs.write_json(tmp_path / "c.json", c.to_dict())
    assert Config.from_dict(json.loads((tmp_path / "c.json").read_text())) == c
