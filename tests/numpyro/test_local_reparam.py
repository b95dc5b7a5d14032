"""Local reparameterization: moments in closed form and by sampling, and its plumbing."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro.handlers import replay, seed, substitute, trace
from numpyro.infer import TraceMeanField_ELBO

import vdppl.numpyro as vd
from vdppl.numpyro import ops
from vdppl.numpyro.distributions import DropoutNormal

from .conftest import assert_close
from .helpers import lrt_run, mlp_model, normal, setup_guide, uniform

# name: (layer options for vd.nn.conv / dense, input shape); channels last
LAYERS = {
    "dense": ({}, (2, 5)),
    "dense-3d-input": ({}, (2, 4, 5)),
    "conv1d-stride-padding": ({"kernel_size": (3,), "strides": 2, "padding": 1}, (2, 9, 2)),
    "conv2d-dilation-groups": (
        {"kernel_size": (3, 3), "padding": 2, "dilation": 2, "feature_group_count": 2},
        (2, 6, 6, 4),
    ),
    "conv2d-same": ({"kernel_size": (3, 3), "padding": "SAME"}, (1, 5, 5, 3)),
    "conv2d-input-dilation": (
        {"kernel_size": (2, 2), "input_dilation": (2, 1), "padding": 1},
        (1, 3, 4, 2),
    ),
    "conv3d-valid": (
        {"kernel_size": (2, 2, 2), "strides": (1, 2, 1), "padding": "VALID"},
        (1, 4, 4, 3, 2),
    ),
}
FEATURES = 6


@functools.cache
def _one_layer(name):
    options, shape = LAYERS[name]

    if name.startswith("dense"):
        kernel_shape = (shape[-1], FEATURES)
    else:
        groups = options.get("feature_group_count", 1)
        kernel_shape = (*options["kernel_size"], shape[-1] // groups, FEATURES)
    init = normal(*kernel_shape, seed=1)

    def model(x):
        if name.startswith("dense"):
            return vd.nn.dense("layer", x, FEATURES, init=init)
        return vd.nn.conv("layer", x, FEATURES, init=init, **options)

    guide, params = setup_guide(model, normal(*shape, seed=2))
    # random noise levels and a non-zero bias, so every term of the moments matters
    params["log_sigma2.layer.kernel"] = uniform(*kernel_shape, low=-5.0, high=0.0, seed=3)
    params["layer.bias"] = normal(FEATURES, seed=4)
    return model, guide, params


def one_layer(name):
    """A one-layer model, its set-up guide and random parameters (cached: set-up is eager)."""
    model, guide, params = _one_layer(name)
    return model, guide, dict(params)


def reference(name, params, x, kernel):
    """The layer computed by Flax itself (independent of vdppl.numpyro.ops)."""
    options, _ = LAYERS[name]
    if name.startswith("dense"):
        layer = nn.Dense(FEATURES)
    else:
        options = {**options}
        layer = nn.Conv(
            FEATURES,
            options.pop("kernel_size"),
            kernel_dilation=options.pop("dilation", 1),
            **options,
        )
    return layer.apply({"params": {"kernel": kernel, "bias": params["layer.bias"]}}, x)


def reference_moments(name, params, x):
    theta = params["theta.layer.kernel"]
    sigma2 = jnp.exp(params["log_sigma2.layer.kernel"])
    mean = reference(name, params, x, theta)
    zero_bias = {**params, "layer.bias": jnp.zeros(FEATURES)}
    return mean, reference(name, zero_bias, x * x, sigma2)


@pytest.mark.parametrize("name", list(LAYERS), ids=str)
def test_lrt_moments_closed_form(name, monkeypatch):
    model, guide, params = one_layer(name)
    x = normal(*LAYERS[name][1], seed=5)
    mean, var = reference_moments(name, params, x)
    monkeypatch.setattr(ops, "_standard_normal", lambda key, shape, dtype: jnp.zeros(shape, dtype))
    assert_close(lrt_run(model, guide, params, x), mean, atol=1e-5)
    monkeypatch.setattr(ops, "_standard_normal", lambda key, shape, dtype: jnp.ones(shape, dtype))
    out = lrt_run(model, guide, params, x)
    # (out - mean)^2 recovers var + 1e-8 up to float32 cancellation in out - mean
    assert_close((out - mean) ** 2 - ops.LRT_EPS, var, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", list(LAYERS), ids=str)
def test_lrt_moments_match_weight_sampling(name):
    """By sampling: LRT draws and explicit weight draws have the closed-form moments.

    S = 4000 draws each. Tolerance 5 standard errors per element (mean: sqrt(v / S);
    variance of a Gaussian sample: v * sqrt(2 / (S - 1))), so a correct implementation
    fails with probability ~1e-6 per element; 1e-6 absolute for float32 rounding.
    """
    model, guide, params = one_layer(name)
    x = normal(*LAYERS[name][1], seed=5)
    mean, var = reference_moments(name, params, x)
    var = var + ops.LRT_EPS
    S = 4000
    repeated = jnp.tile(x, (S,) + (1,) * (x.ndim - 1))
    lrt = lrt_run(model, guide, params, repeated).reshape((S,) + mean.shape)
    theta = params["theta.layer.kernel"]
    sigma = jnp.exp(0.5 * params["log_sigma2.layer.kernel"])
    weights = theta + sigma * normal(S, *theta.shape, seed=6)
    sampled = jax.jit(jax.vmap(lambda w: reference(name, params, x, w)))(weights)
    for draws in (lrt, sampled):
        se_mean = jnp.sqrt(var / S)
        se_var = var * (2 / (S - 1)) ** 0.5
        assert (jnp.abs(draws.mean(0) - mean) <= 5 * se_mean + 1e-6).all()
        assert (jnp.abs(draws.var(0, ddof=1) - var) <= 5 * se_var + 1e-6).all()


def test_lrt_never_samples_weights(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("a weight tensor was sampled under local reparameterization")

    model = mlp_model()
    x, y = normal(5, 4), jnp.zeros((5, 3))
    guide, params = setup_guide(model, x, y)
    monkeypatch.setattr(DropoutNormal, "sample", forbidden)
    key = jax.random.key(1)
    vd.LocalReparamELBO().loss(key, params, model, guide, x, y)  # does not raise
    with pytest.raises(AssertionError, match="was sampled"):
        vd.LocalReparamELBO(local_reparam=False).loss(key, params, model, guide, x, y)


def test_separately_wrapped_model_and_guide_give_the_same_loss():
    # replay carries the guide's posterior to the model, so one handler per function works
    model = mlp_model()
    x, y = jax.random.normal(jax.random.key(0), (5, 4)), jnp.ones((5, 3))
    guide, params = setup_guide(model, x, y)
    key = jax.random.key(7)
    ours = vd.LocalReparamELBO().loss(key, params, model, guide, x, y)
    wrapped = TraceMeanField_ELBO().loss(
        key, params, vd.local_reparam(model), vd.local_reparam(guide), x, y
    )
    assert ours == wrapped


def test_deferred_site_used_outside_the_primitive_is_an_error():
    def model(x, transform):
        w = numpyro.sample(
            "w",
            vd.LogUniform().expand([3, 2]).to_event(2),
            infer={"vdppl_init": jnp.ones((3, 2)), "local_reparam": True},
        )
        return x @ w if transform is None else vd.dense(x, transform(w), site="w")

    x = jnp.ones((4, 3))
    guide, params = setup_guide(model, x, None)
    with pytest.raises(RuntimeError, match="never passed them to vdppl.numpyro.ops"):
        lrt_run(model, guide, params, x, None)
    transformed = functools.partial(model, transform=lambda w: 2 * w)
    with pytest.raises(RuntimeError, match="not a transformed copy"):
        lrt_run(transformed, guide, params, x)


def test_substituted_mean_without_variance_is_an_error():
    model = mlp_model()
    x = jnp.ones((2, 4))
    guide, params = setup_guide(model, x)
    with pytest.raises(RuntimeError, match="substituted rather than replayed"), vd.local_reparam():
        means = seed(substitute(guide, data=params), 0)(x)
        seed(substitute(substitute(model, data=params), data=means), 1)(x)


def test_noise_needs_a_key():
    model = mlp_model()
    x = jnp.ones((2, 4))
    guide, params = setup_guide(model, x)
    with pytest.raises(ValueError, match="needs a PRNG key"), vd.local_reparam():
        guide_trace = trace(seed(substitute(guide, data=params), 0)).get_trace(x)
        substitute(replay(model, guide_trace), data=params)(x)


def test_explicit_key_and_plain_primitives():
    x = jax.random.normal(jax.random.key(0), (3, 4))
    w, b = jax.random.normal(jax.random.key(1), (4, 5)), jnp.arange(5.0)
    assert_close(vd.dense(x, w, b), x @ w + b)
    xc = jax.random.normal(jax.random.key(2), (1, 6, 6, 2))
    wc = jax.random.normal(jax.random.key(3), (3, 3, 2, 4))
    expected = nn.Conv(4, (3, 3), padding=1).apply({"params": {"kernel": wc, "bias": b[:4]}}, xc)
    assert_close(vd.conv(xc, wc, b[:4], 1, 1), expected, atol=1e-5)

    def model(key):
        kernel = vd.nn.weight_site("w", (4, 5), vd.LogUniform(), w)
        return vd.dense(x, kernel, b, site="w", rng_key=key)

    guide, params = setup_guide(model, None)
    params["log_sigma2.w"] = jnp.zeros((4, 5))
    first = lrt_run(model, guide, params, jax.random.key(5), key=0)
    again = lrt_run(model, guide, params, jax.random.key(5), key=1)
    assert jnp.array_equal(first, again)  # the noise came from the explicit key


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: vd.dense(jnp.ones((2, 3)), jnp.ones((4, 5))), "last dim must match"),
        (lambda: vd.dense(jnp.ones((2, 4)), jnp.ones((4, 5)), jnp.ones(4)), "bias must have"),
        (lambda: vd.dense(jnp.ones((2, 4)), jnp.ones(4)), r"kernel of shape \(in, out\)"),
        (lambda: vd.conv(jnp.ones((1, 5, 5, 3)), jnp.ones((3, 3, 2, 4))), "input channels"),
        (lambda: vd.conv(jnp.ones((5, 5, 2)), jnp.ones((3, 3, 2, 4))), "channels last"),
        (lambda: vd.conv(jnp.ones((1, 5, 2)), jnp.ones((2, 4))), "kernel of shape"),
        (lambda: vd.conv(jnp.ones((1, 5, 2)), jnp.ones((3, 2, 4)), padding="CIRCULAR"), "pads"),
        (lambda: vd.conv(jnp.ones((1, 5, 2)), jnp.ones((3, 2, 4)), strides=(1, 1)), "strides"),
        (lambda: vd.conv(jnp.ones((1, 5, 2)), jnp.ones((3, 2, 4)), padding=[1, 1]), "padding must"),
        (lambda: vd.conv(jnp.ones((1, 5, 2)), jnp.ones((3, 2, 4)), jnp.ones(3)), "bias must"),
    ],
    ids=str,
)
def test_shape_errors_are_static(call, match):
    with pytest.raises(ValueError, match=match):
        call()
    with pytest.raises(ValueError, match=match):
        jax.jit(call)()  # raised while tracing, from shapes alone


def test_lrt_noise_is_independent_per_example():
    model, guide, params = one_layer("dense")
    x = jnp.tile(jax.random.normal(jax.random.key(0), (1, 5)), (2, 1))
    out = lrt_run(model, guide, params, x)
    assert not jnp.array_equal(out[0], out[1])


def test_handler_keeps_no_state_and_does_not_clobber_the_trace():
    model = mlp_model()
    x = jnp.ones((2, 4))
    guide, params = setup_guide(model, x)
    handler = vd.local_reparam()
    with handler:
        guide_trace = trace(seed(substitute(guide, data=params), 0)).get_trace(x)
        tr = trace(seed(substitute(replay(model, guide_trace), data=params), 1)).get_trace(x)
    assert handler._weights == {} and handler._deferred == set()
    # the op messages carry no "name": the trace holds the weight sites themselves
    assert tr["fc1.kernel"]["type"] == "sample" and tr["fc1.kernel"]["fn"].event_shape == (4, 6)
    assert set(tr) == {"fc1.kernel", "fc1.bias", "fc2.kernel", "fc2.bias", "data", "y"}
    assert isinstance(guide_trace["fc1.kernel"]["infer"]["vdppl_lrt_posterior"], DropoutNormal)
    assert np.asarray(guide_trace["fc1.kernel$lrt_variance"]["value"]).shape == (4, 6)


@pytest.mark.parametrize("vectorize", [True, False], ids=["vmap", "lax.map"])
def test_particles_average_single_particle_losses(vectorize):
    # each particle runs its own handler inside the vmapped / mapped function
    model = mlp_model()
    x, y = normal(5, 4), normal(5, 3, seed=1)
    guide, params = setup_guide(model, x, y)
    key = jax.random.key(3)
    elbo = vd.LocalReparamELBO(num_particles=3, vectorize_particles=vectorize)
    many = jax.jit(lambda k: elbo.loss(k, params, model, guide, x, y))(key)
    single = jax.jit(lambda k: vd.LocalReparamELBO().loss(k, params, model, guide, x, y))
    losses = [single(k) for k in jax.random.split(key, 3)]
    assert_close(many, jnp.mean(jnp.stack(losses)), rtol=1e-5)  # float32 mean of 3
    with pytest.raises(ValueError, match="num_particles must be a positive int"):
        vd.LocalReparamELBO(num_particles=0)


# ----------------------------------------------- a Gaussian prior on an LRT weight site
W_SHAPE = (4, 3)
W_LOC = normal(*W_SHAPE, seed=20)
W_SCALE = uniform(*W_SHAPE, low=0.2, high=1.0, seed=21)


def gaussian_prior_model(x):
    """A weight site with a (non-expanded) Normal prior, consumed by the LRT primitive."""
    prior = dist.Normal(jnp.zeros(W_SHAPE), 1.0).to_event(2)
    w = numpyro.sample("w", prior, infer={"local_reparam": True})
    numpyro.deterministic("out", vd.dense(x, w, site="w"))


def hand_written_guide(x):
    loc = numpyro.param("w_loc", W_LOC)
    scale = numpyro.param("w_scale", W_SCALE, constraint=dist.constraints.positive)
    infer = {"local_reparam": True, "vdppl_lrt_guide": True}
    numpyro.sample("w", dist.Normal(loc, scale).to_event(2), infer=infer)


def with_log_uniform_layer(x):
    gaussian_prior_model(x)
    vd.nn.dense("aux", x, 2, init=normal(4, 2, seed=22))  # AutoVariationalDropout needs one


def separately_wrapped_outputs(model, guide, params, x, keys):
    """``out`` of the model as SVI(local_reparam(model), local_reparam(guide)) runs it."""

    def run(key):
        k1, k2 = jax.random.split(key)
        guide_run = substitute(seed(vd.local_reparam(guide), k1), data=params)
        guide_trace = trace(guide_run).get_trace(x)
        model_run = substitute(replay(seed(vd.local_reparam(model), k2), guide_trace), data=params)
        return trace(model_run).get_trace(x)["out"]["value"]

    return jax.jit(jax.vmap(run))(keys)


@pytest.mark.parametrize("guide_kind", ["hand-written", "AutoVariationalDropout"], ids=str)
def test_gaussian_prior_site_with_separately_wrapped_model_and_guide(guide_kind):
    """Regression: the model's own handler must not defer its Gaussian-prior site to the
    prior mean (the layer then computed x @ W_loc, noiseless). Moments by sampling, S = 4000
    draws: 5 standard errors per element as in test_lrt_moments_match_weight_sampling."""
    x = jnp.concatenate([normal(1, 4, seed=23)] * 2 + [normal(1, 4, seed=24)])
    if guide_kind == "hand-written":
        model, guide = gaussian_prior_model, hand_written_guide
        params = {"w_loc": W_LOC, "w_scale": W_SCALE}
    else:
        model = with_log_uniform_layer
        guide, params = setup_guide(model, x)
        params.update({"loc.w": W_LOC, "scale.w": W_SCALE})
    S = 4000
    out = separately_wrapped_outputs(
        model, guide, params, x, jax.random.split(jax.random.key(0), S)
    )
    assert not jnp.array_equal(out[0], out[1])  # samples differ across keys
    assert not jnp.array_equal(out[:, 0], out[:, 1])  # identical rows: per-example noise
    mean, var = x @ W_LOC, (x * x) @ (W_SCALE**2) + ops.LRT_EPS
    assert (jnp.abs(out.mean(0) - mean) <= 5 * jnp.sqrt(var / S) + 1e-6).all()
    assert (jnp.abs(out.var(0, ddof=1) - var) <= 5 * var * (2 / (S - 1)) ** 0.5 + 1e-6).all()


def test_model_alone_samples_its_gaussian_prior_weights():
    # no guide replays the site: the handler leaves it to the prior, which is sampled
    x = jnp.ones((2, 4))
    first, second = (
        trace(seed(vd.local_reparam(gaussian_prior_model), k)).get_trace(x)
        for k in (jax.random.key(1), jax.random.key(2))
    )
    assert not jnp.array_equal(first["w"]["value"], jnp.zeros(W_SHAPE))
    assert not jnp.array_equal(first["out"]["value"], second["out"]["value"])
    assert jnp.array_equal(first["out"]["value"], x @ first["w"]["value"])  # a sampled weight
