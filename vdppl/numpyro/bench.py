"""NumPyro measurements behind ``vdppl bench speed`` and ``vdppl bench variance``.

``speed`` times one jitted SVI step of LeNet-300-100 or LeNet-5 (Flax networks built by
:func:`vdppl.numpyro.models.build` from the specs of :mod:`vdppl.models`; random 28x28
inputs) for:

* ``vdppl_lrt``: ``jax.jit(svi.update)`` of ``numpyro.infer.SVI`` with
  :class:`~vdppl.numpyro.LocalReparamELBO` and :class:`~vdppl.numpyro.AutoVariationalDropout`
  (sparse VD) on the :func:`~vdppl.numpyro.bayesianize`'d network, the data term scaled
  by ``numpyro.plate("data", N, subsample_size=B)``;
* ``vdppl_weight_sample``: the same with ``LocalReparamELBO(local_reparam=False)``, one
  weight tensor sampled per minibatch;
* ``plain``: the same sparse-VD maths in JAX and optax alone, one ``jax.jit``: per layer
  ``theta``, ``log_sigma2`` and a bias; ``mean = x @ theta + b``, ``var = x**2 @
  exp(log_sigma2)`` (the convolution in place of ``@`` for conv layers), ``h = mean +
  sqrt(var + 1e-8) * eps``; loss ``N / B * cross_entropy_sum + sum KL_molchanov(log_alpha)``
  (:mod:`vdppl.kl`); ``optax.adam``;
* ``deterministic``: the Flax network with cross-entropy and ``optax.adam``;
* (extra) ``vdppl_lrt_scale``: ``vdppl_lrt`` with ``numpyro.plate("data", B)`` under
  ``numpyro.handlers.scale(N / B)``, which draws no subsample indices.

All use ``optax.adam(1e-3)`` (NumPyro through ``numpyro.optim.optax_to_numpyro``) and the
same initial weights; times come from :func:`vdppl.bench.time_interleaved`, compile
seconds separately.

``variance`` is the analogue of Table 1 of [1]; see :func:`variance`.

[1] Kingma, Salimans, Welling (2015) arXiv:1506.02557.
[2] Molchanov, Ashukha, Vetrov (2017) arXiv:1701.05369.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
from jax import lax
from numpyro.infer import SVI
from numpyro.optim import optax_to_numpyro

import vdppl.numpyro as vd
from vdppl import bench as shared
from vdppl import kl as vdkl
from vdppl import models
from vdppl.numpyro.models import FlaxNetwork, build

__all__ = ["deterministic_step", "network", "plain_sparse_vd_step", "speed", "variance"]

INPUT = (1, 28, 28)


def network(arch: str) -> FlaxNetwork:
    """``lenet300`` or ``lenet5`` for 28x28 images, as ``vdppl train --arch`` builds it."""
    return build(models.architecture(arch, 10), INPUT)


def _nll_sum(logits, y):
    return -jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], axis=-1).sum()


def _flax_names(layers) -> list[str | None]:
    """Flax's auto-names (``Dense_0``, ``Conv_1``) of the layers with weights, else None."""
    counts, names = {}, []
    for spec in layers:
        kind = {models.Dense: "Dense", models.Conv: "Conv"}.get(type(spec))
        names.append(None if kind is None else f"{kind}_{counts.setdefault(kind, 0)}")
        if kind is not None:
            counts[kind] += 1
    return names


def plain_sparse_vd_step(
    net: FlaxNetwork,
    variables: dict,
    lr: float = 1e-3,
    n_train: int = shared.SPEED_N_TRAIN,
    init_log_sigma2: float = -10.0,
) -> tuple[Callable, tuple]:
    """A hand-written jitted sparse-VD step for ``net`` (no NumPyro) and its initial state.

    ``step(state, x, y) -> (state, loss)`` (the loss before the update);
    ``state = (params, opt_state, key)``; ``theta`` starts at the Flax kernels.
    """
    layers, names = net.module.layers, _flax_names(net.module.layers)
    params = {
        name: {
            "theta": variables["params"][name]["kernel"],
            "log_sigma2": jnp.full_like(variables["params"][name]["kernel"], init_log_sigma2),
            "bias": variables["params"][name]["bias"],
        }
        for name in names
        if name is not None
    }
    optim = optax.adam(lr)
    conv_dims = ("NHWC", "HWIO", "NHWC")

    def loss_fn(params, key, x, y):
        keys = iter(jax.random.split(key, len(params)))
        h, kl = x, 0.0
        for spec, name in zip(layers, names, strict=True):
            if isinstance(spec, models.Dense):
                p = params[name]
                mean = h @ p["theta"] + p["bias"]
                var = (h * h) @ jnp.exp(p["log_sigma2"])
            elif isinstance(spec, models.Conv):
                p = params[name]
                pad, stride = ((spec.padding, spec.padding),) * 2, (spec.stride,) * 2
                mean = lax.conv_general_dilated(
                    h, p["theta"], stride, pad, dimension_numbers=conv_dims
                )
                mean = mean + p["bias"]
                var = lax.conv_general_dilated(
                    h * h, jnp.exp(p["log_sigma2"]), stride, pad, dimension_numbers=conv_dims
                )
            elif isinstance(spec, models.ReLU):
                h = jax.nn.relu(h)
                continue
            elif isinstance(spec, models.MaxPool):
                window = (1, spec.size, spec.size, 1)
                h = lax.reduce_window(h, -jnp.inf, lax.max, window, window, "VALID")
                continue
            elif isinstance(spec, models.Flatten):
                h = h.reshape(h.shape[0], -1)
                continue
            else:
                raise TypeError(f"the plain step has no {spec!r}")
            noise = jax.random.normal(next(keys), mean.shape, mean.dtype)
            h = mean + jnp.sqrt(var + vdkl.LRT_EPS) * noise
            log_alpha = vdkl.log_alpha_from_sigma2(p["theta"], p["log_sigma2"])
            kl = kl + vdkl.kl_molchanov(log_alpha).sum()
        return _nll_sum(h, y) * (n_train / x.shape[0]) + kl

    @jax.jit
    def step(state, x, y):
        params, opt_state, key = state
        key, sub = jax.random.split(key)
        loss, grads = jax.value_and_grad(loss_fn)(params, sub, x, y)
        updates, opt_state = optim.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state, key), loss

    return step, (params, optim.init(params), jax.random.key(1))


def deterministic_step(
    net: FlaxNetwork, variables: dict, lr: float = 1e-3, n_train: int = shared.SPEED_N_TRAIN
) -> tuple[Callable, tuple]:
    """The Flax network with cross-entropy and ``optax.adam``: the floor of any step."""
    optim = optax.adam(lr)

    def loss_fn(params, x, y):
        return _nll_sum(net.module.apply({"params": params}, x), y) * (n_train / x.shape[0])

    @jax.jit
    def step(state, x, y):
        params, opt_state = state
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
        updates, opt_state = optim.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), loss

    params = variables["params"]
    return step, (params, optim.init(params))


def _model(bnn, n_train: int, subsample: str = "plate") -> Callable:
    """A classifier on ``bnn``; the data term scaled to ``n_train`` by a subsampled plate,
    or (``subsample="scale"``) by ``numpyro.handlers.scale`` around a plate of the batch."""

    def model(x, y=None):
        logits = bnn(x)
        if subsample == "plate":
            with numpyro.plate("data", n_train, subsample_size=x.shape[0]):
                numpyro.sample("y", dist.Categorical(logits=logits), obs=y)
        else:
            with (
                numpyro.plate("data", x.shape[0]),
                numpyro.handlers.scale(scale=n_train / x.shape[0]),
            ):
                numpyro.sample("y", dist.Categorical(logits=logits), obs=y)

    return model


def _bnn(net: FlaxNetwork, variables: dict):
    return vd.bayesianize(net.module, (1, *net.input_shape), variables=variables)


def vdppl_steps(
    net: FlaxNetwork,
    variables: dict,
    key,
    lr: float = 1e-3,
    extras: bool = True,
    init_log_sigma2: float = -10.0,
) -> dict[str, tuple[Callable, object]]:
    """vdppl's jitted ``svi.update`` and initial state, by implementation name."""
    bnn = _bnn(net, variables)
    x0 = jnp.zeros((2, *net.input_shape))
    y0 = jnp.zeros((2,), jnp.int32)
    styles = {"vdppl_lrt": ("plate", True), "vdppl_weight_sample": ("plate", False)}
    if extras:
        styles["vdppl_lrt_scale"] = ("scale", True)
    guides, out = {}, {}
    for name, (subsample, lrt) in styles.items():
        model = _model(bnn, shared.SPEED_N_TRAIN, subsample)
        guide = guides.setdefault(
            subsample, vd.AutoVariationalDropout(model, init_log_sigma2=init_log_sigma2)
        )  # set up once
        elbo = vd.LocalReparamELBO(local_reparam=lrt)
        svi = SVI(model, guide, optax_to_numpyro(optax.adam(lr)), elbo)
        out[name] = (jax.jit(svi.update), svi.init(key, x0, y0))
    return out


def _runner(step: Callable, state, x, y) -> Callable[[int], None]:
    """``run(n)``: ``n`` steps from the current state, waiting for the last loss."""
    holder = [state]

    def run(n: int) -> None:
        state = holder[0]
        for _ in range(n):
            state, loss = step(state, x, y)
        jax.block_until_ready(loss)
        holder[0] = state

    return run


def speed(
    arch: str = "lenet300",
    batch_size: int = 100,
    repeats: int = 7,
    steps: int = 20,
    warmup: int = 10,
    seed: int = 0,
    extras: bool = True,
) -> dict:
    """ms per jitted step of each implementation (see the module docstring).

    :param repeats: timed rounds; each runs ``steps`` steps of every implementation.
    :param warmup: steps of each implementation after its first (compiling) call.
    :param seed: initial weights, data and noise.
    :param extras: also time ``vdppl_lrt_scale``.
    :return: the JSON of :func:`vdppl.bench.speed_result`.
    """
    shared.check_speed_args(arch, batch_size, repeats, steps, warmup)
    net = network(arch)
    k_init, k_x, k_y, k_svi = jax.random.split(jax.random.key(seed), 4)
    variables = jax.jit(net.module.init)(k_init, jnp.zeros((1, *net.input_shape)))
    x = jax.random.uniform(k_x, (batch_size, *net.input_shape))
    y = jax.random.randint(k_y, (batch_size,), 0, 10)
    steps_by_name = {
        **vdppl_steps(net, variables, k_svi, extras=extras),
        "plain": plain_sparse_vd_step(net, variables),
        "deterministic": deterministic_step(net, variables),
    }
    runners = {name: _runner(step, state, x, y) for name, (step, state) in steps_by_name.items()}
    timing = shared.time_interleaved(runners, warmup=warmup, repeats=repeats, steps=steps)
    return shared.speed_result(
        timing,
        arch=arch,
        backend="numpyro",
        batch_size=batch_size,
        seed=seed,
        machine=shared.machine_info(
            device=str(jax.devices()[0]),
            jax_device_count=jax.device_count(),
            jax_disable_most_optimizations=bool(jax.config.read("jax_disable_most_optimizations")),
        ),
        repeats=repeats,
        steps=steps,
        warmup=warmup,
    )


# ------------------------------------------------------------------ variance
def variance(
    stage: str = "init",
    epochs: int = 10,
    batch_size: int = 100,
    repeats: int = 100,
    limit_train: int | None = None,
    seed: int = 0,
    dataset: str = shared.VARIANCE_DATASET,
) -> dict:
    """Empirical variance of the minibatch gradient of the ELBO, three estimators.

    The study of :func:`vdppl.bench.bench_variance` (the analogue of [1]'s Table 1) with
    Flax's initial weights; the bottom layer's kernel is 784x300, the top's 100x10.
    ``weight_per_example`` is ``jax.vmap`` over the examples of the one-weight-sample ELBO
    of a batch of one (``N / 1 * (-log p(y_i | x_i, w_i)) + KL``), averaged;
    ``local_reparam`` is :class:`~vdppl.numpyro.LocalReparamELBO` and
    ``weight_per_minibatch`` is ``LocalReparamELBO(local_reparam=False)``.

    :param dataset: another image dataset for quick runs (``--smoke`` uses ``digits``);
        the network's input layer follows its image size.
    :return: :meth:`vdppl.bench.GradientVariance.result`'s JSON.
    """
    from vdppl.data import load

    shared.check_variance_args(stage, epochs, batch_size, repeats, limit_train)
    data = load(dataset)
    net = build(models.architecture(shared.VARIANCE_ARCH, data.num_classes), data.input_shape)
    x = net.prepare(jnp.asarray(data.x_train[:limit_train]))
    y = jnp.asarray(data.y_train[:limit_train])
    n = int(x.shape[0])
    k_init, k_svi, k_grad = jax.random.split(jax.random.key(seed), 3)
    variables = jax.jit(net.module.init)(k_init, x[:1])  # one compilation, not one per op
    model = _model(_bnn(net, variables), n)
    guide = vd.AutoVariationalDropout(model)
    svi = SVI(model, guide, optax_to_numpyro(optax.adam(1e-3)), vd.LocalReparamELBO())
    params = svi.get_params(svi.init(k_svi, x[:2], y[:2]))
    sites = guide.dropout_sites
    layers = {"bottom": sites[0], "top": sites[-1]}
    alpha_one = {
        f"log_sigma2.{s}": jnp.log(params[f"theta.{s}"] ** 2 + 1e-8) for s in guide.dropout_sites
    }
    state = svi.init(k_svi, x[:2], y[:2], init_params={**params, **alpha_one})
    if stage == "trained":
        update = jax.jit(svi.update)
        rng = np.random.default_rng(seed)
        for _ in range(epochs):
            for batch in shared.epoch_batches(n, batch_size, rng):
                state, _ = update(state, x[batch], y[batch])
    params = svi.get_params(state)
    kinds = ("theta", "log_sigma2")
    targets = {
        f"{kind}.{site}": params[f"{kind}.{site}"] for kind in kinds for site in layers.values()
    }
    estimators = _estimators(model, guide)
    grads = {
        name: jax.jit(
            jax.grad(lambda t, key, xb, yb, loss=loss: loss(key, {**params, **t}, xb, yb))
        )
        for name, loss in estimators.items()
    }
    result = shared.GradientVariance()
    keys = jax.random.split(k_grad, repeats)
    for key, batch in zip(keys, shared.minibatches(n, batch_size, repeats, seed), strict=True):
        for name, grad in grads.items():
            g = grad(targets, key, x[batch], y[batch])
            for layer, site in layers.items():
                for kind in kinds:
                    result.add(name, kind, layer, g[f"{kind}.{site}"])
    return result.result(
        kinds,
        backend="numpyro",
        stage=stage,
        epochs=epochs if stage == "trained" else 0,
        batch_size=batch_size,
        repeats=repeats,
        train_examples=n,
        seed=seed,
        layers=layers,
        dataset=dataset,
    )


def _estimators(model, guide) -> dict[str, Callable]:
    """``loss(key, params, x, y)`` (the negative ELBO) of each estimator, by name."""
    lrt = vd.LocalReparamELBO()
    per_minibatch = vd.LocalReparamELBO(local_reparam=False)

    def one(key, params, x, y):
        return per_minibatch.loss(key, params, model, guide, x[None], y[None])

    def per_example(key, params, x, y):
        keys = jax.random.split(key, x.shape[0])
        return jnp.mean(jax.vmap(one, in_axes=(0, None, 0, 0))(keys, params, x, y))

    return {
        "local_reparam": lambda key, p, x, y: lrt.loss(key, p, model, guide, x, y),
        "weight_per_example": per_example,
        "weight_per_minibatch": lambda key, p, x, y: per_minibatch.loss(key, p, model, guide, x, y),
    }
