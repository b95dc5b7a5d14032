"""Functional layers and bayesianize: names, equivalence with Flax, and clear errors."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro.handlers import seed, substitute, trace
from numpyro.infer import SVI

import vdppl.numpyro as vd

from .conftest import assert_close
from .helpers import normal, setup_guide, variables_like


def run_with_initial_kernels(bnn, x, **kwargs):
    """The converted network with every kernel site at its initial value (no handler)."""
    kernels = {layer.site: layer.kernel_init for layer in bnn.layers}
    run = substitute(lambda x: bnn(x, **kwargs), data=kernels)
    with trace() as tr:
        out = seed(run, 0)(x)
    return out, tr


def test_functional_layers_sites_and_initial_values():
    w0 = jnp.arange(12.0).reshape(3, 4) / 10

    def model(x):
        h = vd.nn.dense("fc", x, 4, init=w0)
        h = h.reshape(2, 2, 2, 1)
        return vd.nn.conv("cv", h, 5, (2, 2), use_bias=False)

    x = jnp.ones((2, 3))
    guide, params = setup_guide(model, x)
    proto = guide.prototype_trace
    assert set(proto) == {"fc.kernel", "fc.bias", "cv.kernel"}
    assert proto["fc.kernel"]["infer"]["local_reparam"] is True
    assert proto["cv.kernel"]["fn"].event_shape == (2, 2, 1, 5)
    assert_close(guide.median(params)["fc.kernel"], w0)  # the given initial kernel
    assert guide.median(params)["cv.kernel"].std() > 0  # LeCun normal, drawn at set-up
    with pytest.raises(ValueError, match="init has shape"):
        seed(lambda: vd.nn.dense("fc", x, 4, init=jnp.ones((4, 3))), 0)()
    with pytest.raises(ValueError, match="not divisible by feature_group_count"):
        seed(lambda: vd.nn.conv("c", jnp.ones((1, 4, 4, 3)), 4, 3, feature_group_count=2), 0)()


class Block(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.Conv(4, (3, 3), strides=2, padding=((1, 0), (0, 1)), input_dilation=(1, 2))(x)
        x = nn.relu(x)
        x = nn.Conv(4, (2, 2), padding="CIRCULAR", feature_group_count=2)(x)
        x = nn.Conv(6, (3, 3), padding="REFLECT", kernel_dilation=2, input_dilation=1)(x)
        x = nn.LayerNorm()(x)
        return nn.Dense(3)(x.reshape(x.shape[0], -1))


class Causal(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.Conv(3, 3, padding="CAUSAL", kernel_dilation=2)(x)
        return nn.Sequential([nn.Dense(5), nn.tanh, nn.Dense(2, use_bias=False)])(x)


class WithBatchNorm(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool):
        x = nn.Dense(5)(x)
        x = nn.BatchNorm(use_running_average=not train, momentum=0.5)(x)
        return nn.Dense(2)(nn.relu(x))


MODULES = {
    "conv-block": (Block, (2, 8, 8, 2)),
    "causal-sequential": (Causal, (2, 7, 2)),
    "unbatched-conv": (lambda: nn.Conv(3, (2, 2)), (5, 5, 2)),
}


@pytest.mark.parametrize("name", list(MODULES), ids=str)
def test_bayesianize_computes_what_flax_computes(name):
    make, shape = MODULES[name]
    module = make()
    x = jax.random.normal(jax.random.key(0), shape)
    bnn = vd.bayesianize(module, x, rng_key=jax.random.key(1))
    variables = module.init(jax.random.key(1), x)
    out, tr = run_with_initial_kernels(bnn, x)
    # same products in float32, summed in a possibly different order by XLA
    assert_close(out, module.apply(variables, x), atol=1e-5)
    kernel_sites = {n for n, s in tr.items() if s["type"] == "sample"}
    assert kernel_sites == set(bnn.sites) and len(bnn.sites) >= 1
    assert all(s["infer"]["local_reparam"] for n, s in tr.items() if n in kernel_sites)


def test_bayesianize_names_params_and_pretrained_variables():
    module = Block()
    x = jnp.ones((1, 8, 8, 2))
    variables = module.init(jax.random.key(5), x)
    bnn = vd.bayesianize(module, x, variables=variables, name="net")
    assert bnn.sites == [
        "net.Conv_0.kernel",
        "net.Conv_1.kernel",
        "net.Conv_2.kernel",
        "net.Dense_0.kernel",
    ]
    _, tr = run_with_initial_kernels(bnn, x)
    params = {n for n, s in tr.items() if s["type"] == "param"}
    assert params == {
        "net.Conv_0.bias", "net.Conv_1.bias", "net.Conv_2.bias", "net.Dense_0.bias",
        "net.LayerNorm_0.scale", "net.LayerNorm_0.bias",
    }  # fmt: skip
    assert_close(bnn.layers[0].kernel_init, variables["params"]["Conv_0"]["kernel"])
    assert "Dense_0.kernel" in repr(bnn)


def test_batchnorm_state_is_a_mutable_site():
    module = WithBatchNorm()
    x = jax.random.normal(jax.random.key(0), (6, 3))
    variables = module.init(jax.random.key(1), x, train=False)
    bnn = vd.bayesianize(module, x, variables=variables, module_kwargs={"train": False})
    out, tr = run_with_initial_kernels(bnn, x, train=True)
    expected, new_state = module.apply(variables, x, train=True, mutable=["batch_stats"])
    assert_close(out, expected, atol=1e-5)
    state = tr["$state"]
    assert tr["$state"]["type"] == "mutable"
    assert_close(state["value"]["batch_stats"]["BatchNorm_0"]["mean"],
                 new_state["batch_stats"]["BatchNorm_0"]["mean"])  # fmt: skip


class WithEmbed(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(2)(nn.Embed(10, 3)(x.astype(jnp.int32)).sum(-2))


class OwnParam(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(2)(x) * self.param("gain", nn.initializers.ones, (2,))


class Shared(nn.Module):
    @nn.compact
    def __call__(self, x):
        layer = nn.Dense(3)
        return layer(layer(x))


def test_unsupported_layers_are_refused_or_kept_deterministic():
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="does not support Embed"):
        vd.bayesianize(WithEmbed(), (2, 4), rng_key=key)
    bnn = vd.bayesianize(WithEmbed(), (2, 4), rng_key=key, unsupported="deterministic")
    assert bnn.sites == ["Dense_0.kernel"] and ("Embed_0", "embedding") in bnn.deterministic
    with pytest.raises(ValueError, match="does not know the layer OwnParam"):
        vd.bayesianize(OwnParam(), (2, 4), rng_key=key)
    bnn = vd.bayesianize(OwnParam(), (2, 4), rng_key=key, unsupported="deterministic")
    assert ("gain",) in bnn.deterministic
    with pytest.raises(ValueError, match="called 2 times per forward pass"):
        vd.bayesianize(Shared(), (2, 3), rng_key=key)


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        ({"module": nn.LayerNorm()}, ValueError, "has no flax.linen.Dense or flax.linen.Conv"),
        ({"rng_key": None}, ValueError, "needs rng_key="),
        ({"example_input": [1, 4]}, TypeError, "input shape .* or an example input"),
        ({"example_input": jnp.array([[1.0, jnp.nan, 0.0, 0.0]])}, ValueError, "NaN or inf"),
        ({"prior": dist.Normal(jnp.zeros(2), 1.0)}, ValueError, "prior must be scalar"),
        ({"prior": "log-uniform"}, TypeError, "prior must be a numpyro Distribution"),
        ({"module": lambda x: x}, TypeError, "expects a flax.linen.Module"),
        ({"unsupported": "ignore"}, ValueError, "unsupported must be 'error' or 'deterministic'"),
        ({"module": nn.Conv(2, 3, mask=jnp.ones((3, 4, 2)))}, ValueError, "masked convolutions"),
        ({"module": nn.Dense(2, dtype=jnp.bfloat16)}, ValueError, "supports float32 layers"),
        ({"module": nn.Dense(2, dot_general=jax.lax.dot_general)}, ValueError, "dot_general"),
        (
            {"module": nn.Conv(2, 3, conv_general_dilated=jax.lax.conv_general_dilated)},
            ValueError,
            "custom convolution",
        ),
    ],
    ids=str,
)
def test_bayesianize_bad_inputs(kwargs, error, match):
    options = {
        "module": nn.Dense(2),
        "example_input": (1, 5, 4) if isinstance(kwargs.get("module"), nn.Conv) else (1, 4),
        "rng_key": jax.random.key(0),
        **kwargs,
    }
    module, example = options.pop("module"), options.pop("example_input")
    with pytest.raises(error, match=match):
        vd.bayesianize(module, example, **options)


def test_inputs_checked_statically_and_when_concrete():
    bnn = vd.bayesianize(nn.Dense(2), (1, 4), rng_key=jax.random.key(0))

    def model(x):
        numpyro.deterministic("out", bnn(x))

    model = substitute(model, data={"kernel": bnn.layers[0].kernel_init})

    with pytest.raises(ValueError, match="last dim must match"):
        jax.jit(lambda x: seed(model, 0)(x))(jnp.ones((3, 5)))  # shapes: checked under jit
    with pytest.raises(ValueError, match="network's input has NaN"):
        seed(model, 0)(jnp.array([[0.0, jnp.nan, 1.0, 2.0]]))  # values: only when concrete
    out = jax.jit(lambda x: trace(seed(model, 0)).get_trace(x)["out"]["value"])(
        jnp.array([[0.0, jnp.nan, 1.0, 2.0]])
    )
    assert jnp.isnan(out).any()  # a tracer is never inspected


def test_batchnorm_state_is_updated_by_svi():
    module = WithBatchNorm()
    x, y = normal(8, 3, seed=0), jnp.arange(8) % 2
    bnn = vd.bayesianize(
        module, x, variables=variables_like(module, x, train=False), module_kwargs={"train": False}
    )

    def model(x, y=None, train=True):
        logits = bnn(x, train=train)
        with numpyro.plate("data", x.shape[0]):
            numpyro.sample("y", dist.Categorical(logits=logits), obs=y)

    svi = SVI(
        model, vd.AutoVariationalDropout(model), numpyro.optim.Adam(1e-2), vd.LocalReparamELBO()
    )
    state = svi.init(jax.random.key(0), x, y)
    step = jax.jit(svi.update)
    for _ in range(2):
        state, loss = step(state, x, y)
    stats = state.mutable_state["$state"]["batch_stats"]["BatchNorm_0"]
    # momentum 0.5 from zero: after two updates the running mean is about 0.75 x the batch
    # mean of the first layer's pre-activations. Tolerance: one Adam step (lr 1e-2) moves
    # each weight by <= 0.01, i.e. the batch mean by <= 3 * 0.01 * max|x| ~ 0.04.
    layer = bnn.layers[0]
    batch_mean = (x @ layer.kernel_init + layer.bias_init).mean(0)
    assert jnp.isfinite(loss)
    assert_close(stats["mean"], 0.75 * batch_mean, atol=0.05)
    params = {**svi.get_params(state), **state.mutable_state}
    out = vd.predict(model, svi.guide, params, jax.random.key(1), x, mode="mean", train=False)
    assert out["y"].shape == (1, 8)


class Wraps(nn.Module):
    """``layer`` inside an ordinary module, with a supported Dense after it."""

    layer: nn.Module

    @nn.compact
    def __call__(self, x):
        return nn.Dense(2)(self.layer(x).reshape(x.shape[0], -1))


UNSUPPORTED = {
    "DenseGeneral": (nn.DenseGeneral((2, 2)), (1, 4)),
    "Einsum": (nn.Einsum((4, 3), "ab,bc->ac"), (2, 4)),
    "ConvTranspose": (nn.ConvTranspose(2, (3,)), (1, 5, 2)),
    "ConvLocal": (nn.ConvLocal(2, (3,)), (1, 5, 2)),
}


@pytest.mark.parametrize("name", list(UNSUPPORTED), ids=str)
def test_unsupported_flax_layers_are_named_in_the_error(name):
    layer, shape = UNSUPPORTED[name]
    with pytest.raises(ValueError, match=f"does not support {name} .*flax.linen.Dense and"):
        vd.bayesianize(Wraps(layer), shape, rng_key=jax.random.key(0))


def test_nnx_modules_are_refused():
    from flax import nnx

    with pytest.raises(TypeError, match="is a flax.nnx module, which is not supported"):
        vd.bayesianize(nnx.Linear(3, 2, rngs=nnx.Rngs(0)), (1, 3), rng_key=jax.random.key(0))
