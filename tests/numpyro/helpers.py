"""Small models and runs shared by several test modules."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.handlers import replay, seed, substitute, trace

import vdppl.numpyro as vd


def setup_guide(model, *args, guide=None, key=0, **kwargs):
    """Set the guide up (as ``svi.init`` does) and return it with the initial params of
    the guide and of the model (read from the guide's prototype trace of the model).

    The first run is under ``local_reparam``, so the weight sites hold their means
    instead of being sampled: the same set-up, without compiling a sampler per shape.
    """
    guide = vd.AutoVariationalDropout(model) if guide is None else guide
    with vd.local_reparam():
        tr = trace(seed(guide, jax.random.key(key))).get_trace(*args, **kwargs)
    params = {
        n: s["value"]
        for t in (tr, guide.prototype_trace)
        for n, s in t.items()
        if s["type"] == "param"
    }
    return guide, params


def lrt_run(model, guide, params, *args, key=0):
    """One guide run and one replayed model run, both under one ``local_reparam``.

    Jitted afresh at each call (one XLA compilation instead of one per eager op; tests
    that patch the noise source see the patch at trace time).
    """

    def run(params, key, *args):
        k1, k2 = jax.random.split(key)
        with vd.local_reparam():
            guide_trace = trace(seed(substitute(guide, data=params), k1)).get_trace(*args)
            return seed(substitute(replay(model, guide_trace), data=params), k2)(*args)

    return jax.jit(run)(params, jax.random.key(key), *args)


def mlp_model(hidden=6, out=3, n_in=4):
    """A 2-layer network of vdppl.numpyro.nn.dense layers with a Normal likelihood."""
    w1, w2 = normal(n_in, hidden, seed=10, scale=0.5), normal(hidden, out, seed=11, scale=0.5)

    def model(x, y=None):
        h = jnp.tanh(vd.nn.dense("fc1", x, hidden, init=w1))
        mean = vd.nn.dense("fc2", h, out, init=w2)
        with numpyro.plate("data", x.shape[0]):
            numpyro.sample("y", dist.Normal(mean, 1.0).to_event(1), obs=y)

    return model


def normal(*shape, seed=0, scale=1.0):
    """Fixed float32 test data from NumPy (no JAX sampler to compile per shape)."""
    return jnp.asarray(np.random.default_rng(seed).normal(scale=scale, size=shape), jnp.float32)


def uniform(*shape, low=0.0, high=1.0, seed=0):
    return jnp.asarray(np.random.default_rng(seed).uniform(low, high, size=shape), jnp.float32)


def variables_like(module, x, seed=0, scale=0.5, **kwargs):
    """Flax variables for ``module`` with NumPy-drawn values (shapes by ``jax.eval_shape``,
    so no initializer is compiled): kernels N(0, scale^2 / fan_in), other parameters
    N(0, 0.1^2); other collections (BatchNorm statistics) at mean 0, variance 1."""
    shapes = jax.eval_shape(lambda: module.init(jax.random.key(0), x, **kwargs))
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        name = path[-1].key
        if path[0].key != "params":
            return jnp.full(leaf.shape, 1.0 if name == "var" else 0.0, leaf.dtype)
        fan_in = int(np.prod(leaf.shape[:-1])) if name == "kernel" else 1
        std = scale / np.sqrt(fan_in) if name == "kernel" else 0.1
        return jnp.asarray(rng.normal(scale=std, size=leaf.shape), leaf.dtype)

    return jax.tree_util.tree_map_with_path(draw, shapes)
