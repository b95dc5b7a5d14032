import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import pytest
from numpyro.handlers import seed, substitute

import vdppl.numpyro as vd
from vdppl import models as specs

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
        h = nn.relu(nn.Dense(4)(x))
        return nn.Dense(4)(h) + h  # the hidden units are used twice


class Normed(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(2)(nn.LayerNorm()(nn.relu(nn.Dense(5)(x))))  # LayerNorm mixes units


def test_compress_refuses_what_it_cannot_shrink():
    for module in (Residual(), Normed()):
        bnn, guide, params = setup(module, normal(2, 4))
        second = bnn.sites[1]  # in call order (Flax names layers as they are built)
        prune(params, second, (1, slice(None)))  # hidden unit 1: no outgoing weight
        with pytest.raises(ValueError, match="removing the dead units of .* changes its output"):
            vd.compress(bnn, guide, params)
        assert vd.pruned_variables(bnn, guide, params)  # the masked network is still there
    bnn, guide, params = setup(Chain(), jnp.ones((2, 6)))
    with pytest.raises(ValueError, match="does not compute the plain chain"):
        vd.compress(bnn, guide, params, activation=jax.nn.relu)  # it uses tanh first
    with pytest.raises(ValueError, match="one between each pair"):
        vd.compress(bnn, guide, params, activation=[jnp.tanh])
    with pytest.raises(TypeError, match="returned by vdppl.numpyro.bayesianize"):
        vd.pruned_variables(["fc1"], guide, params)
    with pytest.raises(TypeError, match=r"names given to vdppl.numpyro.nn.dense in order"):
        vd.compress("fc1", guide, params)


class SpecNet(nn.Module):
    """A :mod:`vdppl.models` layer list as a Flax module (channels last, evaluation mode)."""

    layers: tuple

    @nn.compact
    def __call__(self, x):
        for spec in self.layers:
            if isinstance(spec, specs.Conv):
                size = (spec.kernel, spec.kernel)
                x = nn.Conv(spec.features, size, spec.stride, padding=spec.padding)(x)
            elif isinstance(spec, specs.Dense):
                x = nn.Dense(spec.features)(x)
            elif isinstance(spec, specs.ReLU):
                x = nn.relu(x)
            elif isinstance(spec, specs.MaxPool):
                x = nn.max_pool(x, (spec.size,) * 2, (spec.size,) * 2)
            elif isinstance(spec, specs.Flatten):
                x = x.reshape(x.shape[0], -1)
            else:
                x = nn.BatchNorm(use_running_average=True)(x)
        return x


def narrow(layers, widths, kernel=3):
    """``layers`` with the given widths (in order) and ``kernel x kernel`` convolutions."""
    widths = iter(widths)
    out = []
    for spec in layers:
        if isinstance(spec, specs.Conv):
            spec = dataclasses.replace(spec, features=next(widths), kernel=kernel)
        elif isinstance(spec, specs.Dense):
            spec = dataclasses.replace(spec, features=next(widths))
        out.append(spec)
    return tuple(out)


def with_statistics(variables, seed=3):
    """BatchNorm running statistics away from (0, 1), so dropping entries matters."""
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        if path[0].key != "batch_stats":
            return leaf
        value = (
            rng.uniform(0.5, 2.0, leaf.shape)
            if path[-1].key == "var"
            else rng.normal(size=leaf.shape)
        )
        return jnp.asarray(value, leaf.dtype)

    return jax.tree_util.tree_map_with_path(draw, variables)


# LeNet-5 and the VGG-like net of the sparse VD paper at toy widths, on 14x14 images:
# 14 -conv3-> 12 -pool-> 6 -conv3-> 4 -pool-> 2, so the Dense layer sees 2 x 2 x 5 inputs
NETS = {
    "lenet5": (narrow(specs.lenet5(3), (4, 5, 6, 3)), (3, 14, 14, 1)),
    "vgg-like-block": (
        narrow(
            [
                specs.Conv(64, 3), specs.BatchNorm(), specs.ReLU(), specs.MaxPool(2),
                specs.Conv(64, 3), specs.BatchNorm(), specs.ReLU(), specs.MaxPool(2),
                specs.Flatten(), specs.Dense(512), specs.BatchNorm(), specs.ReLU(),
                specs.Dense(3),
            ],
            (4, 5, 6, 3),
        ),
        (3, 14, 14, 2),
    ),
}  # fmt: skip


@pytest.mark.parametrize("name", list(NETS), ids=str)
def test_compress_conv_network_removes_channels_and_keeps_outputs(name):
    layers, shape = NETS[name]
    x = normal(*shape, seed=1)
    module = SpecNet(layers)
    bnn = vd.bayesianize(module, x, variables=with_statistics(variables_like(module, x)))
    guide, params = setup_guide(lambda x: bnn(x), x)
    for site, size in (("Conv_0", 4), ("Conv_1", 5), ("Dense_0", 6)):
        params[f"{site}.bias"] = normal(size, seed=size)  # folded constants are not zero
    prune(params, "Conv_0.kernel", (..., 0))  # channel 0: no input; the next layer is a
    # convolution (zero padding differs from a constant), so it stays
    prune(params, "Conv_1.kernel", (..., 1, slice(None)))  # Conv_0 channel 1: no output
    prune(params, "Conv_1.kernel", (..., 3))  # Conv_1 channel 3: no input -> folded
    dense_in = jnp.arange(20).reshape(4, 5)  # Dense_0's inputs: (2 x 2 positions, 5 channels)
    prune(params, "Dense_0.kernel", (dense_in[:, 2].reshape(-1), slice(None)))  # channel 2
    prune(params, "Dense_0.kernel", (slice(None), 5))  # Dense_0 unit 5: no input -> folded
    expected = masked_mean_output(bnn, guide, params, x)
    small = vd.compress(bnn, guide, params)
    assert small.features == {
        "Conv_0.kernel": 3, "Conv_1.kernel": 3, "Dense_0.kernel": 5, "Dense_1.kernel": 3
    }  # fmt: skip
    assert [layer.kernel.shape for layer in small] == [
        (3, 3, 1 if name == "lenet5" else 2, 3), (3, 3, 3, 3), (12, 5), (5, 3)
    ]  # fmt: skip
    assert isinstance(small[0], vd.sparsity.ConvLayer)
    # folding constants into the next bias reorders float32 sums of <= 20 terms
    assert_close(small(x), expected, atol=1e-5)
    # the same module rebuilt with the smaller widths runs the variables with plain Flax
    rebuilt = SpecNet(narrow(layers, small.features.values()))
    assert_close(rebuilt.apply(small.variables, x), expected, atol=1e-5)
    with pytest.raises(TypeError, match="mlp_apply runs chains of Dense layers"):
        vd.mlp_apply(small, x)
    with pytest.raises(ValueError, match="has convolutions; leave activation unset"):
        vd.compress(bnn, guide, params, activation=jax.nn.relu)


class Grouped(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Conv(4, (1,), feature_group_count=2)(x)


def test_report_counts_grouped_inputs_with_the_network():
    bnn, guide, params = setup(Grouped(), jnp.ones((1, 3, 4)))
    # kernel (1, 2, 4): outputs 0, 1 read inputs 0, 1 and outputs 2, 3 read inputs 2, 3
    prune(params, "Conv_0.kernel", (0, 0, slice(0, 2)))  # input 0 loses both its outputs
    assert vd.sparsity_report(guide, params, net=bnn).layers[0].dead_inputs == 1
    assert vd.sparsity_report(guide, params).layers[0].dead_inputs == 0  # read ungrouped


class TrainFlag(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool):
        x = nn.BatchNorm(use_running_average=not train)(nn.Dense(5)(x))
        return nn.Dense(2)(nn.relu(x))


def test_compress_runs_the_module_with_evaluation_arguments():
    x = normal(3, 4)
    module = TrainFlag()
    variables = with_statistics(variables_like(module, x, train=False))
    bnn = vd.bayesianize(module, x, variables=variables, module_kwargs={"train": False})
    bnn.module_kwargs = {}  # as if bayesianize had not been told
    guide, params = setup_guide(lambda x: bnn(x, train=False), x)
    prune(params, "Dense_1.kernel", (3, slice(None)))  # unit 3: no outgoing weight
    with pytest.raises(ValueError, match=r"compress\(\.\.\., module_kwargs=\{\.\.\.\}\)"):
        vd.compress(bnn, guide, params)
    small = vd.compress(bnn, guide, params, module_kwargs={"train": False})
    assert small.features == {"Dense_0.kernel": 4, "Dense_1.kernel": 2}
    assert small.variables["batch_stats"]["BatchNorm_0"]["mean"].shape == (4,)
    expected = bnn.module.apply(vd.pruned_variables(bnn, guide, params), x, train=False)
    assert_close(small(x), expected, atol=1e-6)  # no constant folded: the same sums
