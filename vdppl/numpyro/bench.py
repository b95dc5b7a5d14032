"""Cost of one jitted sparse-VD SVI step in NumPyro against hand-written JAX code.

``python -m vdppl.numpyro.bench`` times LeNet-300-100 (784-300-100-10) at batch 100 on
random data. The plain implementation below is the same maths with no PPL: per layer
``theta``, ``log_sigma2`` and a bias in a dict, local reparameterization, Molchanov's KL
from :mod:`vdppl.kl`, the data term scaled by ``N / batch``, ``optax.adam``, one
``jax.jit``. vdppl's step is ``numpyro.infer.SVI.update`` with
:class:`~vdppl.numpyro.LocalReparamELBO` and
:class:`~vdppl.numpyro.AutoVariationalDropout` on a :func:`~vdppl.numpyro.bayesianize`'d
Flax MLP, with the same optimizer (``optax.adam`` through
``numpyro.optim.optax_to_numpyro``), also under one ``jax.jit``.

Times are the median over ``repeats`` runs of ``steps`` steps (after warm-up), waiting
for the result of the last step of each run, the implementations taking turns; compile
time is the first call's wall time (tracing + XLA compilation) minus one steady step.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
import optax
from numpyro.infer import SVI
from numpyro.optim import optax_to_numpyro

import vdppl.numpyro as vd
from vdppl import kl as vdkl

__all__ = ["LENET300", "MLP", "plain_sparse_vd_step", "speed", "time_steps", "vdppl_step"]

N_TRAIN = 60_000
#: LeNet-300-100's layer sizes, input first.
LENET300 = (784, 300, 100, 10)


class MLP(nn.Module):
    """Dense layers of ``features`` with ReLU between them (LeNet-300-100 by default)."""

    features: tuple[int, ...] = LENET300[1:]

    @nn.compact
    def __call__(self, x):
        for i, width in enumerate(self.features):
            x = nn.Dense(width)(x)
            if i < len(self.features) - 1:
                x = nn.relu(x)
        return x


def plain_sparse_vd_step(variables: dict, lr: float = 1e-3) -> tuple[Callable, tuple]:
    """A hand-written sparse-VD step (no NumPyro) and its initial state."""
    dense = [variables["params"][f"Dense_{i}"] for i in range(len(variables["params"]))]
    params = {
        "theta": [d["kernel"] for d in dense],
        "log_sigma2": [jnp.full_like(d["kernel"], -10.0) for d in dense],
        "bias": [d["bias"] for d in dense],
    }
    optim = optax.adam(lr)

    def loss_fn(params, key, x, y):
        keys = jax.random.split(key, len(params["theta"]))
        h, kl = x, 0.0
        for i, (theta, log_sigma2, bias) in enumerate(
            zip(params["theta"], params["log_sigma2"], params["bias"], strict=True)
        ):
            mean = h @ theta + bias
            var = (h * h) @ jnp.exp(log_sigma2)
            h = mean + jnp.sqrt(var + 1e-8) * jax.random.normal(keys[i], mean.shape)
            if i < len(params["theta"]) - 1:
                h = jax.nn.relu(h)
            kl = kl + vdkl.kl_molchanov(vdkl.log_alpha_from_sigma2(theta, log_sigma2)).sum()
        log_p = jnp.take_along_axis(jax.nn.log_softmax(h), y[:, None], axis=-1).sum()
        return -log_p * (N_TRAIN / x.shape[0]) + kl

    @jax.jit
    def step(state, x, y):
        params, opt_state, key = state
        key, sub = jax.random.split(key)
        loss, grads = jax.value_and_grad(loss_fn)(params, sub, x, y)
        updates, opt_state = optim.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state, key), loss

    return step, (params, optim.init(params), jax.random.key(1))


def vdppl_step(
    module: MLP, variables: dict, lr: float = 1e-3, subsample: str = "plate"
) -> tuple[Callable, object]:
    """vdppl's jitted ``svi.update`` and its initial state.

    :param subsample: how the model scales the minibatch to ``N``: ``"plate"`` is
        ``numpyro.plate("data", N, subsample_size=B)`` (which also draws ``B`` random
        indices each step); ``"scale"`` is ``numpyro.plate("data", B)`` under
        ``numpyro.handlers.scale(scale=N / B)`` (no index draw).
    """
    bnn = vd.bayesianize(module, (1, variables["params"]["Dense_0"]["kernel"].shape[0]),
                         variables=variables)  # fmt: skip

    def model(x, y=None):
        logits = bnn(x)
        if subsample == "plate":
            with numpyro.plate("data", N_TRAIN, subsample_size=x.shape[0]):
                numpyro.sample("y", dist.Categorical(logits=logits), obs=y)
        else:
            with (
                numpyro.plate("data", x.shape[0]),
                numpyro.handlers.scale(scale=N_TRAIN / x.shape[0]),
            ):
                numpyro.sample("y", dist.Categorical(logits=logits), obs=y)

    guide = vd.AutoVariationalDropout(model)
    svi = SVI(model, guide, optax_to_numpyro(optax.adam(lr)), vd.LocalReparamELBO())
    x = jnp.zeros((2, variables["params"]["Dense_0"]["kernel"].shape[0]))
    return jax.jit(svi.update), svi.init(jax.random.key(1), x, jnp.zeros((2,), jnp.int32))


def _run(step: Callable, state, x, y, n: int):
    for _ in range(n):
        state, loss = step(state, x, y)
    jax.block_until_ready(loss)
    return state


def time_steps(
    steps: dict[str, tuple[Callable, object]],
    x,
    y,
    warmup: int = 10,
    repeats: int = 7,
    n: int = 20,
) -> dict[str, dict]:
    """Compile seconds, then median/min/max milliseconds per step of each ``(step, state)``.

    Repeats are interleaved (each implementation runs ``n`` steps in turn, ``repeats``
    times), so a change in machine load hits all of them alike.
    """
    states, out, runs = {}, {}, {name: [] for name in steps}
    for name, (step, state) in steps.items():
        start = time.perf_counter()
        state = _run(step, state, x, y, 1)
        out[name] = {"first_call_s": time.perf_counter() - start}
        states[name] = _run(step, state, x, y, warmup)
    for _ in range(repeats):
        for name, (step, _) in steps.items():
            start = time.perf_counter()
            states[name] = _run(step, states[name], x, y, n)
            runs[name].append(1000 * (time.perf_counter() - start) / n)
    for name, ms in runs.items():
        median = statistics.median(ms)
        first = out[name].pop("first_call_s")
        out[name].update(
            median=median, min=min(ms), max=max(ms), compile_s=max(first - median / 1000, 0.0)
        )
    return out


def speed(
    batch_size: int = 100,
    repeats: int = 7,
    steps: int = 20,
    sizes: tuple[int, ...] = LENET300,
    warmup: int = 10,
    styles: tuple[str, ...] = ("plate", "scale"),
) -> dict:
    """ms per step and compile seconds of plain JAX and of vdppl (each data-plate style).

    :param sizes: layer sizes, input first (default LeNet-300-100).
    :param styles: the model's minibatch scaling, see :func:`vdppl_step`.
    """
    module = MLP(tuple(sizes[1:]))
    variables = module.init(jax.random.key(0), jnp.ones((1, sizes[0])))
    x = jax.random.uniform(jax.random.key(2), (batch_size, sizes[0]))
    y = jax.random.randint(jax.random.key(3), (batch_size,), 0, sizes[-1])
    to_time = {"plain": plain_sparse_vd_step(variables)}
    for style in styles:
        to_time[f"vdppl_{style}"] = vdppl_step(module, variables, subsample=style)
    results = time_steps(to_time, x, y, warmup=warmup, repeats=repeats, n=steps)
    plain = results["plain"]["median"]
    return {
        "arch": "-".join(map(str, sizes)),
        "backend": "numpyro",
        "batch_size": batch_size,
        "device": str(jax.devices()[0]),
        "ms_per_step": {k: v["median"] for k, v in results.items()},
        "ms_min_max": {k: [v["min"], v["max"]] for k, v in results.items()},
        "compile_s": {k: v["compile_s"] for k, v in results.items()},
        "ratio_to_plain": {k: v["median"] / plain for k, v in results.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    out = speed(args.batch_size, args.repeats, args.steps)
    if args.json:
        print(json.dumps(out))
        return
    print(f"MLP {out['arch']}, batch {args.batch_size}, {out['device']}")
    for name, ms in out["ms_per_step"].items():
        lo, hi = out["ms_min_max"][name]
        print(
            f"  {name:<14} {ms:7.3f} ms/step  (min {lo:.3f}, max {hi:.3f})  "
            f"x{out['ratio_to_plain'][name]:.2f}  compile {out['compile_s'][name]:.2f} s"
        )


if __name__ == "__main__":
    main()
