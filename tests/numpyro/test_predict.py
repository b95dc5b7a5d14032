"""predict's three modes, and numpyro.infer.Predictive with and without local_reparam."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro.infer import Predictive

import vdppl.numpyro as vd
from vdppl.numpyro import ops

from .conftest import assert_close
from .helpers import normal, setup_guide, variables_like

X = normal(6, 3, seed=0)


class MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(2)(nn.relu(nn.Dense(4)(x)))


BNN = vd.bayesianize(MLP(), X, variables=variables_like(MLP(), X))


def model(x, y=None):
    logits = numpyro.deterministic("logits", BNN(x))
    with numpyro.plate("data", x.shape[0]):
        return numpyro.sample("y", dist.Categorical(logits=logits), obs=y)


@pytest.fixture(scope="module")
def fitted():
    guide = vd.AutoVariationalDropout(model, init_log_sigma2=-2.0)
    return setup_guide(model, X, jnp.zeros(6, jnp.int32), guide=guide)  # set up with labels


def test_predict_modes(fitted):
    guide, params = fitted
    key = jax.random.key(2)
    mean = vd.predict(model, guide, params, key, X, mode="mean")
    assert mean["logits"].shape == (1, 6, 2) and mean["y"].shape == (1, 6)
    again = vd.predict(model, guide, params, jax.random.key(3), X, mode="mean")
    assert jnp.array_equal(mean["logits"], again["logits"])  # deterministic
    for mode in ("mc", "lrt"):
        draws = vd.predict(model, guide, params, key, X, mode=mode, num_samples=7,
                           return_sites=["logits"])  # fmt: skip
        assert set(draws) == {"logits"} and draws["logits"].shape == (7, 6, 2)
        assert draws["logits"].std(0).min() > 0  # noisy


def test_predictive_with_the_guide_samples_weights(fitted):
    guide, params = fitted
    samples = Predictive(model, guide=guide, params=params, num_samples=5)(jax.random.key(4), X)
    assert samples["logits"].shape == (5, 6, 2) and samples["y"].shape == (5, 6)
    assert samples["logits"].std(0).min() > 0


def test_predictive_under_local_reparam_samples_pre_activations(fitted, monkeypatch):
    guide, params = fitted
    predictive = Predictive(model, guide=guide, params=params, num_samples=5)
    with vd.local_reparam():
        samples = predictive(jax.random.key(4), X)
    assert samples["logits"].shape == (5, 6, 2) and samples["logits"].std(0).min() > 0
    assert not any(name.endswith("$lrt_variance") for name in samples)
    # With the LRT noise switched off, every draw is the posterior-mean network: the guide
    # gave the means and the model never saw a sampled weight.
    monkeypatch.setattr(ops, "_standard_normal", lambda key, shape, dtype: jnp.zeros(shape, dtype))
    expected = BNN.module.apply(BNN.variables(params, guide.median(params)), X)
    with vd.local_reparam():
        samples = predictive(jax.random.key(4), X)
    assert_close(samples["logits"], jnp.broadcast_to(expected, (5, 6, 2)), atol=1e-5)
    lrt = vd.predict(model, guide, params, jax.random.key(5), X, mode="lrt", num_samples=3)
    assert_close(lrt["logits"], jnp.broadcast_to(expected, (3, 6, 2)), atol=1e-5)
    mc = Predictive(model, guide=guide, params=params, num_samples=5)(jax.random.key(4), X)
    assert mc["logits"].std(0).min() > 0  # without the handler: sampled weights


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        ({"mode": "median"}, ValueError, "mode must be one of"),
        ({"mode": "mc", "num_samples": 0}, ValueError, "num_samples must be a positive int"),
        ({"rng_key": None}, ValueError, "needs an explicit rng_key"),
        ({"threshold": 9.0}, ValueError, "outside"),
    ],
    ids=str,
)
def test_predict_bad_arguments(fitted, kwargs, error, match):
    guide, params = fitted
    kwargs = {"rng_key": jax.random.key(0), **kwargs}
    with pytest.raises(error, match=match):
        vd.predict(model, guide, params, kwargs.pop("rng_key"), X, **kwargs)


def test_predict_sets_a_fresh_guide_up_but_not_under_jit(fitted):
    _, params = fitted
    fresh = vd.AutoVariationalDropout(model, init_log_sigma2=-2.0)
    labels = jnp.zeros(6, jnp.int32)  # set up with observations, as svi.init would be
    out = vd.predict(model, fresh, params, jax.random.key(0), X, labels, mode="mean")
    assert out["logits"].shape == (1, 6, 2) and (out["y"][0] == labels).all()  # observed
    with pytest.raises(RuntimeError, match="before calling predict under jit"):
        jax.jit(lambda k: vd.predict(model, vd.AutoVariationalDropout(model), {}, k, X))(
            jax.random.key(0)
        )
