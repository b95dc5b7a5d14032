import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpyro
import pytest
from numpyro.handlers import seed, substitute

import vdppl.numpyro as vd

from .conftest import assert_close
from .helpers import normal, setup_guide, variables_like


def prune(params, site, where):
    """Give the weights selected by ``where`` a huge noise (log alpha > 3)."""
    name = f"log_sigma2.{site}"
    params[name] = params[name].at[where].set(5.0)


def setup(module, x, **kwargs):
    bnn = vd.bayesianize(module, x, variables=variables_like(module, x), **kwargs)
    guide, params = setup_guide(lambda x: bnn(x), x)
    return bnn, guide, params


def masked_mean_output(bnn, guide, params, x):
    values = {**params, **guide.pruned_median(params)}
    return seed(substitute(lambda x: bnn(x), data=values), 0)(x)


class TwoLayer(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(3)(nn.relu(nn.Dense(5)(x)))


def test_report_counts_in_out_in_layout():
    bnn, guide, params = setup(TwoLayer(), jnp.ones((2, 4)))
    # Flax kernels are (in, out): layer 0 units 0, 1 lose all their inputs (columns) ...
    prune(params, "Dense_1.kernel", (slice(None), slice(0, 2)))
    # ... and unit 4 of layer 0 loses all its outputs (row 4 of the next kernel)
    prune(params, "Dense_0.kernel", (4, slice(None)))
    report = vd.sparsity_report(guide, params)
    first, second = report.layers
    assert first.name == "Dense_1.kernel" and first.shape == (5, 4)  # (out, in), as torch
    assert (first.kept, first.total, first.dead_outputs, first.dead_inputs) == (12, 20, 2, 0)
    assert (second.kept, second.total, second.dead_outputs, second.dead_inputs) == (12, 15, 0, 1)
    assert report.compression == pytest.approx(35 / 24)
    assert report.to_dict()["kept_weights"] == 24
    assert "Dense_1.kernel" in str(report) and "total" in str(report)


def test_conv_report_shape_and_everything_pruned():
    bnn, guide, params = setup(nn.Conv(4, (3, 3)), jnp.ones((1, 5, 5, 2)))
    prune(params, "kernel", ...)
    report = vd.sparsity_report(guide, params)
    assert report.layers[0].shape == (4, 2, 3, 3)
    assert math.isinf(report.compression)


class Chain(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = jnp.tanh(nn.Dense(8)(x))
        x = nn.relu(nn.Dense(7)(x))
        return nn.Dense(3)(x)


ACTIVATIONS = [jnp.tanh, jax.nn.relu]


def test_compress_mlp_removes_dead_units_and_keeps_outputs():
    x = normal(10, 6, seed=1)
    bnn, guide, params = setup(Chain(), x)
    params["Dense_0.bias"] = normal(8, seed=2)  # folded constants
    prune(params, "Dense_0.kernel", (slice(None), slice(0, 3)))  # 3 units with no input
    prune(params, "Dense_1.kernel", (7 - 1, slice(None)))  # unit 7 of layer 0: no output
    prune(params, "Dense_2.kernel", (slice(0, 2), slice(None)))  # units 0, 1 of layer 1
    expected = masked_mean_output(bnn, guide, params, x)
    small = vd.compress(bnn, guide, params, activation=ACTIVATIONS)
    assert [layer.kernel.shape for layer in small] == [(6, 8 - 4), (4, 7 - 2), (5, 3)]
    # folding tanh(b) into the next bias reorders float32 sums
    assert_close(vd.mlp_apply(small, x, ACTIVATIONS), expected, atol=1e-5)
    plain = bnn.module.apply(vd.pruned_variables(bnn, guide, params), x)  # plain Flax
    assert_close(plain, expected, atol=1e-6)


def test_compress_layers_written_by_hand():
    def model(x):
        h = jax.nn.relu(vd.nn.dense("fc1", x, 5, init=normal(3, 5, seed=3)))
        return numpyro.deterministic("out", vd.nn.dense("fc2", h, 2, init=normal(5, 2, seed=4)))

    x = normal(4, 3, seed=1)
    guide, params = setup_guide(model, x)
    params["fc1.bias"] = jnp.arange(5.0) - 2
    prune(params, "fc1.kernel", (slice(None), 1))  # unit 1: constant relu(b_1), folded
    small = vd.compress(["fc1", "fc2"], guide, params)
    assert small[0].kernel.shape == (3, 4)
    expected = seed(substitute(model, data={**params, **guide.pruned_median(params)}), 0)(x)
    assert_close(vd.mlp_apply(small, x), expected, atol=1e-5)
    with pytest.raises(ValueError, match="no kernel site for layer"):
        vd.compress(["fc1", "fc9"], guide, params)


class Residual(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(4)(x) + x


def test_compress_needs_a_plain_chain():
    x = jnp.ones((2, 4))
    bnn, guide, params = setup(Residual(), x)
    with pytest.raises(ValueError, match="does not compute the plain chain"):
        vd.compress(bnn, guide, params)
    bnn, guide, params = setup(Chain(), jnp.ones((2, 6)))
    with pytest.raises(ValueError, match="does not compute the plain chain"):
        vd.compress(bnn, guide, params, activation=jax.nn.relu)  # it uses tanh first
    with pytest.raises(ValueError, match="one between each pair"):
        vd.compress(bnn, guide, params, activation=[jnp.tanh])
    cnn, guide, params = setup(nn.Conv(2, (3, 3)), jnp.ones((1, 4, 4, 1)))
    with pytest.raises(ValueError, match="plain chain of Dense layers"):
        vd.compress(cnn, guide, params)
    with pytest.raises(TypeError, match="returned by vdppl.numpyro.bayesianize"):
        vd.pruned_variables(["fc1"], guide, params)
