"""The NumPyro trainer behind ``vdppl train``: fixed observation noise, divergence, the
optimizer's learning rates, and the Flax architectures (the CLI paths that train whole runs
are in ``tests/test_cli_numpyro.py``)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vdppl import data, models
from vdppl.numpyro.models import build
from vdppl.numpyro.train import Trainer, optimizer
from vdppl.runs import Config

from .conftest import assert_close


@pytest.fixture(scope="module")
def digits():
    ds = data.load("digits")
    return dataclasses.replace(
        ds, x_train=ds.x_train[:200], y_train=ds.y_train[:200],
        x_test=ds.x_test[:50], y_test=ds.y_test[:50],
    )  # fmt: skip


def config(**kw):
    return Config(
        **{"backend": "numpyro", "epochs": 2, "warmup": 1, "hidden": [16], "eval_samples": 4, **kw}
    ).validate()


def test_fixed_observation_noise_is_not_a_parameter():
    ds = data.load("toy1d")
    fixed = Trainer(config(dataset="toy1d", hidden=[8], obs_noise="0.3"), ds)
    assert "obs_noise" not in fixed.params and fixed.pruned_outputs(ds.x_test).shape == (241,)


def test_epoch_loss_is_the_per_example_negative_elbo(digits):
    """With a learning rate of ~0 nothing moves during the epoch, and with KL weight 0
    (the first warm-up epoch) every step's loss estimates the training set's NLL, so
    their mean over N is the mean network's NLL per example: at log sigma^2 = -10 the
    weight noise moves the logits by ~1e-3, hence rel=1e-2 (as for Pyro)."""
    trainer = Trainer(config(lr=1e-12, warmup=5), digits)
    row = trainer.epoch(0)
    logits = trainer.pruned_outputs(digits.x_train)
    log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    nll = -np.mean(log_p[np.arange(len(logits)), digits.y_train])
    assert row["kl_weight"] == 0.0
    assert row["loss"] == pytest.approx(nll, rel=1e-2)
    assert row["data"] == pytest.approx(nll, rel=1e-2)


def test_divergence_keeps_the_last_good_state(digits, monkeypatch):
    trainer = Trainer(config(), digits)
    before = trainer.state

    def diverged(state, *args):
        return state, jnp.float32(np.nan)

    monkeypatch.setattr(trainer, "_step", diverged)
    with pytest.raises(FloatingPointError, match="in epoch 1: training diverged"):
        trainer.epoch(0)
    assert trainer.state is before


def test_learning_rates_schedule_and_variance_lr():
    """Adam's first steps with a constant gradient move each parameter by ``lr`` exactly
    (``m / sqrt(v) = 1`` after bias correction; eps 1e-8 changes the 7th digit), so the
    steps show the learning rate of every epoch: the paper's schedule over 4 epochs is
    1, 1, 1, 0.5 (constant for half, then linear to 0), the variance parameters use
    ``--variance-lr``."""
    cfg = config(epochs=4, lr=1e-2, variance_lr=1e-1, lr_schedule="paper")
    opt = optimizer(cfg, steps_per_epoch=1)
    params = {
        "theta.w": jnp.zeros(()),
        "log_sigma2.w": jnp.zeros(()),
        "Dense_0.bias": jnp.zeros(()),
    }
    state = opt.init(params)
    steps = []
    for i in range(4):
        state = opt.update({k: jnp.ones(()) for k in params}, state, value=jnp.zeros(()))
        new = opt.get_params(state)
        steps.append({k: float(params[k] - new[k]) for k in params})
        params = new
    factors = [1.0, 1.0, 1.0, 0.5]
    assert_close([s["theta.w"] for s in steps], [1e-2 * f for f in factors], rtol=1e-6)
    assert_close([s["Dense_0.bias"] for s in steps], [1e-2 * f for f in factors], rtol=1e-6)
    assert_close([s["log_sigma2.w"] for s in steps], [1e-1 * f for f in factors], rtol=1e-6)
    with pytest.raises(ValueError, match="--variance-lr must be a positive number"):
        config(variance_lr=0.0)


def test_architectures_and_layers_that_do_not_fit():
    """The reference architectures in Flax: LeNet-5 on 28x28 MNIST has the Caffe sizes."""
    net = build(models.architecture("lenet5", 10), (1, 28, 28))
    assert net.input_shape == (28, 28, 1)
    x = jnp.zeros((2, 1, 28, 28))
    shapes = jax.eval_shape(net.module.init, jax.random.key(0), net.prepare(x))["params"]
    kernels = {k: v["kernel"].shape for k, v in shapes.items()}
    assert kernels == {
        "Conv_0": (5, 5, 1, 20), "Conv_1": (5, 5, 20, 50),
        "Dense_0": (4 * 4 * 50, 500), "Dense_1": (500, 10),
    }  # fmt: skip
    with pytest.raises(ValueError, match=r"does not fit inputs of shape \(2, 2, 20\)"):
        build(models.architecture("lenet5", 10), (1, 8, 8))
    with pytest.raises(ValueError, match="it needs image inputs"):
        build(models.architecture("lenet5", 1), (1,))


def test_batchnorm_follows_torch_defaults():
    """Batch statistics in training (Flax's biased variance), running averages updated
    with weight 0.1 (torch's momentum; from mean 0, variance 1), epsilon 1e-5 (torch's);
    the running averages otherwise."""
    layers = [models.Dense(3), models.BatchNorm(), models.ReLU(), models.Dense(2)]
    net = build(layers, (4,))
    x = jax.random.normal(jax.random.key(0), (16, 4))
    variables = net.module.init(jax.random.key(1), x)
    _, state = net.module.apply(variables, x, train=True, mutable=["batch_stats"])
    h = x @ variables["params"]["Dense_0"]["kernel"]  # bias 0 at initialisation
    stats = state["batch_stats"]["BatchNorm_0"]
    # float32 means and variances of 16 rows: rounding well below 1e-6
    assert_close(stats["mean"], 0.1 * h.mean(0), atol=1e-6)
    assert_close(stats["var"], 0.9 + 0.1 * h.var(0), atol=1e-6)
    eval_out = net.module.apply(variables, x)  # running averages: mean 0, variance 1
    hidden = jax.nn.relu(h / jnp.sqrt(1 + 1e-5))
    expected = hidden @ variables["params"]["Dense_1"]["kernel"]
    assert_close(eval_out, expected, atol=1e-6)
    vgg = build(models.architecture("vgg-like", 10), (3, 32, 32))
    shapes = jax.eval_shape(vgg.module.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    assert len([k for k in shapes["batch_stats"]]) == 14  # 13 convs and the fc 512


def test_plain_predictor_compresses_lenet5_like_the_masked_network():
    # LeNet-5 after one epoch from log sigma^2 = -2, so that log alpha >= 3 wherever
    # |theta| < exp(-2.5) ~ 0.08: many of the fc-500 units lose all 10 outgoing
    # weights and compress has something to remove. Its outputs must equal
    # the pruned mean network's up to float32 rounding of the reordered sums (atol 1e-4
    # on logits of order 10).
    x = np.random.default_rng(0).random((64, 1, 28, 28), dtype=np.float32)
    y = (np.arange(64) % 10).astype(np.int64)
    dataset = data.Dataset(
        name="random", task="classification", x_train=x, y_train=y, x_test=x[:16],
        y_test=y[:16], input_shape=(1, 28, 28), num_classes=10, image_shape=(28, 28),
        y_mean=0.0, y_std=1.0, description="random 28x28 images",
    )  # fmt: skip
    trainer = Trainer(config(arch="lenet5", init_log_sigma2=-2.0, batch_size=32), dataset)
    trainer.epoch(0)
    small = trainer.plain_predictor()
    assert small["units_removed"] > 0
    assert_close(small["predict"](x[:16]), trainer.pruned_outputs(x[:16]), atol=1e-4, rtol=0)
