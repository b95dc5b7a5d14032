"""NaN/inf in data is an error where the arrays are concrete, and never inspected on a tracer."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro.handlers import seed, substitute, trace

import vdppl.numpyro as vd

from .helpers import normal, setup_guide

NAN_ROW = jnp.array([[0.0, jnp.nan, 1.0]])


def model(x, y=None):
    h = vd.nn.dense("fc", x, 2, init=normal(3, 2, seed=1))
    h = vd.nn.conv("cv", h.reshape(-1, 2, 1), 2, 2, init=normal(2, 1, 2, seed=2))
    logits = numpyro.deterministic("logits", h.reshape(h.shape[0], -1))
    with numpyro.plate("data", x.shape[0]):
        numpyro.sample("y", dist.Categorical(logits=logits), obs=y)


@pytest.fixture(scope="module")
def fitted():
    return setup_guide(model, normal(4, 3), jnp.zeros(4, jnp.int32))


def test_functional_layers_check_concrete_inputs_only(fitted):
    guide, params = fitted
    values = {**params, **guide.median(params)}
    run = substitute(model, data=values)
    with pytest.raises(ValueError, match="the input of layer 'fc' has NaN or inf"):
        seed(run, 0)(NAN_ROW)
    with pytest.raises(ValueError, match="the input of layer 'cv' has NaN or inf"):
        seed(lambda: vd.nn.conv("cv", jnp.full((1, 2, 1), jnp.inf), 2, 2), 0)()
    logits = jax.jit(lambda x: trace(seed(run, 0)).get_trace(x)["logits"]["value"])(NAN_ROW)
    assert jnp.isnan(logits).all()  # under jit the input is a tracer: not inspected


def test_predict_checks_concrete_arguments(fitted):
    guide, params = fitted
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="predict: the model's argument 0 has NaN or inf"):
        vd.predict(model, guide, params, key, NAN_ROW)
    with pytest.raises(ValueError, match="predict: the model's keyword argument 'x' has NaN"):
        vd.predict(model, guide, params, key, x=np.asarray(NAN_ROW))
    out = jax.jit(lambda x: vd.predict(model, guide, params, key, x, return_sites=["logits"]))
    assert jnp.isnan(out(NAN_ROW)["logits"]).all()  # traced: passed through


def test_to_inference_data_checks_its_data(fitted):
    guide, params = fitted
    key = jax.random.key(0)
    y = jnp.zeros(1, jnp.int32)
    with pytest.raises(ValueError, match="to_inference_data: x has NaN or inf"):
        vd.to_inference_data(model, guide, params, key, NAN_ROW, y, num_samples=2)
    with pytest.raises(ValueError, match="to_inference_data: y has NaN or inf"):
        vd.to_inference_data(model, guide, params, key, normal(1, 3), jnp.array([jnp.inf]))
