"""Sparse VD on digits: accurate, compressed, fast (the Pyro backend's acceptance test)."""

import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
from numpyro.infer import SVI

import vdppl.numpyro as vd
from vdppl.datasets import load_digits


class MLP(nn.Module):
    hidden: int = 100

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Dense(self.hidden)(x))
        x = nn.relu(nn.Dense(self.hidden)(x))
        return nn.Dense(10)(x)


def train(epochs=60, warmup=30, lr=3e-3, batch_size=100, seed=0):
    """Fit sparse VD on digits (64-100-100-10, the Pyro example's recipe); return metrics."""
    data = load_digits()  # X / 16, stratified 75/25 split, random_state=0
    x_train, y_train = jnp.asarray(data.x_train), jnp.asarray(data.y_train)
    x_test, y_test = jnp.asarray(data.x_test), jnp.asarray(data.y_test)
    n = len(x_train)
    key = jax.random.key(seed)
    init_key, svi_key, shuffle_key, predict_key = jax.random.split(key, 4)
    bnn = vd.bayesianize(MLP(), (1, 64), rng_key=init_key)  # log-uniform priors

    def model(x, y=None):
        logits = numpyro.deterministic("logits", bnn(x))
        with numpyro.plate("data", n, subsample_size=x.shape[0]):  # scales the data term
            numpyro.sample("y", dist.Categorical(logits=logits), obs=y)

    guide = vd.AutoVariationalDropout(model)  # sparse VD: theta and log sigma^2 per weight
    svi = SVI(model, guide, numpyro.optim.Adam(lr), vd.LocalReparamELBO())
    state = svi.init(svi_key, x_train[:batch_size], y_train[:batch_size])
    step = jax.jit(svi.update)

    start = time.perf_counter()
    for epoch in range(epochs):
        beta = jnp.float32(min(1.0, epoch / warmup) if warmup else 1.0)  # KL warm-up
        perm = jax.random.permutation(jax.random.fold_in(shuffle_key, epoch), n)
        for i in range(0, n - batch_size + 1, batch_size):  # full batches: one compilation
            idx = perm[i : i + batch_size]
            state, loss = step(state, x_train[idx], y_train[idx], kl_weight=beta)
    jax.block_until_ready(loss)
    seconds = time.perf_counter() - start

    params = svi.get_params(state)
    report = vd.sparsity_report(guide, params)
    mean = vd.predict(model, guide, params, predict_key, x_test, mode="mean")["logits"][0]
    small = vd.compress(bnn, guide, params)
    small_logits = vd.mlp_apply(small, x_test)
    return {
        "accuracy_pruned_mean": float((mean.argmax(-1) == y_test).mean()),
        "accuracy_compressed": float((small_logits.argmax(-1) == y_test).mean()),
        "compression": report.compression,
        "train_seconds": seconds,
        "report": report,
        "compressed": small,
        "max_logit_difference": float(jnp.abs(small_logits - mean).max()),
    }


def test_sparse_vd_on_digits():
    result = train()  # seed 0, 60 epochs, warm-up 30
    assert result["accuracy_pruned_mean"] >= 0.95, result
    assert result["compression"] >= 10, result
    assert result["train_seconds"] < 60, result
    # the plain compressed MLP predicts exactly as the masked mean network
    assert result["accuracy_compressed"] == result["accuracy_pruned_mean"]
    # and computes the same logits up to float32 rounding of the folded biases
    assert result["max_logit_difference"] < 1e-4, result
