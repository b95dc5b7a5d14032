# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Variational dropout as SVI in NumPyro
#
# **What this notebook teaches.** Tutorial 01 built variational dropout as a Pyro SVI
# problem and derived the maths: the log-uniform prior, its KL, the guide, the local
# reparameterization trick. Here we do the same in NumPyro and JAX, and concentrate on what
# changes there:
#
# 1. randomness is explicit: PRNG keys, split and passed by hand;
# 2. a Flax linen MLP becomes a Bayesian model component with `vd.bayesianize`;
# 3. a NumPyro model with a subsampled plate, `vd.AutoVariationalDropout` and
#    `vd.LocalReparamELBO` in `numpyro.infer.SVI`; parameters are values you hold
#    (`svi.get_params(state)`), not a global store;
# 4. `jax.jit(svi.update)`: what jit traces, and how to pass the KL warm-up weight as an
#    argument so that a schedule never recompiles;
# 5. sparsity (`vd.sparsity_report`, `vd.compress`) and predictions (`vd.predict` in its
#    three modes, `numpyro.infer.Predictive` with the guide), and why value checks happen
#    outside jit;
# 6. a whole training run as one compiled `jax.lax.scan`, on a 1-D regression toy with
#    predictive bands;
# 7. the speed difference: the jitted step against the un-jitted one and against the Pyro
#    step of the same network and maths, with compile time shown separately.
#
# References (as in tutorial 01): [1] Kingma, Salimans, Welling (2015), *Variational
# Dropout and the Local Reparameterization Trick*, arXiv:1506.02557; [2] Molchanov,
# Ashukha, Vetrov (2017), *Variational Dropout Sparsifies Deep Neural Networks*,
# arXiv:1701.05369.
#
# Run it top to bottom; on a laptop CPU it takes a couple of minutes, much of it XLA
# compiling. With the environment variable `CI` set (as the test suite does) it runs with
# tiny settings, and its numbers mean nothing.

# %%
import os
import time
from collections.abc import Sequence
from functools import partial

import flax.linen as nn
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.distributions import constraints
from numpyro.infer import SVI, Predictive

import vdppl.numpyro as vd
from vdppl.data import load
from vdppl.diagnostics import plot_log_alpha

smoke_test = "CI" in os.environ  # tiny settings when the test suite runs this notebook

EPOCHS = 2 if smoke_test else 60  # digits epochs, minibatches of 100
TOY_STEPS = 20 if smoke_test else 2000  # full-batch steps on the 1-D toy
DRAWS = 8 if smoke_test else 200  # Monte Carlo draws per prediction
TIMED_STEPS = 3 if smoke_test else 200  # steps per timing
EAGER_STEPS = 1 if smoke_test else 5  # the un-jitted NumPyro step takes seconds
if smoke_test:
    # Smoke runs only check that every cell executes: compile with most XLA
    # optimisations off, which compiles several times faster (and runs slower).
    jax.config.update("jax_disable_most_optimizations", True)

print(
    f"smoke_test={smoke_test}, jax {jax.__version__}, numpyro {numpyro.__version__}, "
    f"device {jax.devices()[0]}"
)

# %% [markdown]
# ## 1. Keys instead of a global seed
#
# JAX functions are pure: the same inputs give the same outputs. Random numbers therefore
# come from an explicit key, and a key used twice gives the same numbers. Instead of
# `pyro.set_rng_seed`, we make one key and split it into one independent key per purpose.

# %%
key = jax.random.key(0)
init_key, svi_key, shuffle_key, predict_key, toy_key = jax.random.split(key, 5)
print("same key, same draw:   ", jax.random.normal(init_key, (3,)))
print("same key, same draw:   ", jax.random.normal(init_key, (3,)))
print("another key, new draw: ", jax.random.normal(svi_key, (3,)))

# %% [markdown]
# ## 2. A Flax network with log-uniform priors
#
# The network is an ordinary Flax linen MLP. `vd.bayesianize` initialises it with a key
# and an example input shape, then makes every `nn.Dense` kernel a NumPyro sample site
# with the log-uniform prior (tutorial 01, section 2) expanded to the kernel's shape.
# Sites are named by Flax's variable paths; biases stay `numpyro.param` point estimates.
# The improper prior cannot be sampled, so the initial kernels are kept as the guide's
# initial means. Flax's layout is `(in, out)`: a dense layer is `x @ kernel + bias`.

# %%
digits = load("digits")  # scikit-learn's 8x8 digits, pixels in [0, 1]
x_tr = jnp.asarray(digits.x_train.reshape(len(digits.x_train), -1))  # (1347, 64)
y_tr = jnp.asarray(digits.y_train)
x_te = jnp.asarray(digits.x_test.reshape(len(digits.x_test), -1))  # (450, 64)
y_te = jnp.asarray(digits.y_test)
N, BATCH = len(x_tr), 100


class MLP(nn.Module):
    features: Sequence[int] = (100, 100, 10)

    @nn.compact
    def __call__(self, x):
        for i, width in enumerate(self.features):
            x = nn.Dense(width)(x)
            if i < len(self.features) - 1:
                x = nn.relu(x)
        return x


bnn = vd.bayesianize(MLP(), (1, 64), prior=vd.LogUniform(), rng_key=init_key)
print(bnn)
print("log p(w) at w = -2, 0.5:", vd.LogUniform().log_prob(jnp.array([-2.0, 0.5])))

# %% [markdown]
# ## 3. The model: a subsampled plate
#
# `numpyro.plate("data", N, subsample_size=B)` tells NumPyro that the minibatch of `B`
# examples stands for all `N`, so the ELBO scales the data term by `N / B` against the KL
# (the formula is in tutorial 01, section 3). We pass the minibatch in ourselves, so the
# indices such a plate draws are not used; it is the sizes that matter. The weights are
# sampled outside the plate: they are global, shared by every example.


# %%
def model(x, y=None):
    logits = numpyro.deterministic("logits", bnn(x))
    with numpyro.plate("data", N, subsample_size=x.shape[0]):
        return numpyro.sample("y", dist.Categorical(logits=logits), obs=y)


# %% [markdown]
# ## 4. Guide, ELBO and explicit parameters
#
# `AutoVariationalDropout` is sparse variational dropout [2] by default: per weight a mean
# $\theta$ and $\log\sigma^2$ (initialised at $-10$), with
# $\log\alpha = \log\sigma^2 - \log\theta^2$. `LocalReparamELBO` is NumPyro's
# `TraceMeanField_ELBO` with the local reparameterization: each dense layer's
# pre-activations are sampled as `x @ theta + b + sqrt(x**2 @ exp(log_sigma2)) * eps`,
# no transpose needed in Flax's layout.
#
# `svi.init` runs guide and model once, eagerly, to create the parameters. There is no
# parameter store: everything lives in the returned `svi_state` (the optimizer's state of
# the unconstrained parameters, mutable state, and a PRNG key that each step splits), and
# `svi.get_params(svi_state)` hands the constrained parameters back as a plain dict.

# %%
guide = vd.AutoVariationalDropout(model)
elbo = vd.LocalReparamELBO()
svi = SVI(model, guide, numpyro.optim.Adam(3e-3), elbo)

start = time.perf_counter()
svi_state = svi.init(svi_key, x_tr[:BATCH], y_tr[:BATCH])
init_s = time.perf_counter() - start
params = svi.get_params(svi_state)
for name, value in params.items():
    print(f"{name:28s} {value.shape}")
log_alpha0 = guide.log_alpha(params)["Dense_1.kernel"]
print(f"initial log alpha of Dense_1: median {jnp.median(log_alpha0):.1f}")
print(f"svi.init took {init_s:.1f} s (eager: JAX compiles every new operation it meets)")

# %% [markdown]
# ## 5. One compiled step, and the KL weight as an argument
#
# `jax.jit` does not run the Python function on numbers: it *traces* it once with abstract
# values (shape and dtype only), records the array operations (the guide, the model under
# the handlers, the ELBO, its gradient, the Adam update) and hands them to XLA to compile
# into one program. Later calls with the same shapes and dtypes run the compiled program
# and never enter the Python code again; the handlers of `vd.LocalReparamELBO` exist only
# during the trace.
#
# Two consequences for training:
#
# - **Anything the trace reads from Python is frozen into the program.** Setting
#   `elbo.kl_weight = 0.5` after compiling changes nothing. The KL warm-up weight
#   $\beta$ is therefore passed as an argument, `svi.update(state, x, y, kl_weight=beta)`;
#   `LocalReparamELBO` takes it out of the model's arguments. It is traced like the data,
#   so a new $\beta$ each epoch reuses the same program.
# - **A new shape or dtype means a new trace.** A last minibatch of 47 examples would
#   compile a second program, so we use full batches only. A Python float and a
#   `jnp.float32` scalar have different (weak and strong) dtypes: pick one and stick to it.
#
# The Python counter below runs only while JAX traces `update`, so it counts
# compilations. `step.lower(...)` traces and `.compile()` compiles, which lets us time
# the two separately; the first call then reuses the compiled program.

# %%
n_traces = 0


def update(svi_state, x, y, kl_weight):
    global n_traces
    n_traces += 1  # a Python side effect: happens at trace time only
    return svi.update(svi_state, x, y, kl_weight=kl_weight)


step = jax.jit(update)
xb, yb, beta = x_tr[:BATCH], y_tr[:BATCH], jnp.float32(0.0)
start = time.perf_counter()
lowered = step.lower(svi_state, xb, yb, beta)
trace_s = time.perf_counter() - start
start = time.perf_counter()
lowered.compile()
compile_s = time.perf_counter() - start
print(f"trace {trace_s:.2f} s, XLA compile {compile_s:.2f} s, traces so far: {n_traces}")

# %% [markdown]
# ## 6. Training on digits
#
# The recipe of tutorial 01: Adam at 3e-3, minibatches of 100, the KL weight warmed up
# linearly from 0 to 1 over the first half of training. Each epoch's shuffle comes from its
# own key, `fold_in(shuffle_key, epoch)`, so a run is reproducible and any epoch can be
# replayed on its own.
#
# JAX dispatches work asynchronously: `step(...)` returns before the step has finished.
# Looking at a value (`float(loss)`) waits for it. We do that once per epoch, which is also
# where a diverging loss is noticed: inside the compiled step nothing checks values.

# %%
warmup = max(1, EPOCHS // 2)
history = {"loss": [], "kept": []}
start = time.perf_counter()
for epoch in range(EPOCHS):
    beta = jnp.float32(min(1.0, epoch / warmup))
    perm = jax.random.permutation(jax.random.fold_in(shuffle_key, epoch), N)
    total = 0.0
    for i in range(0, N - BATCH + 1, BATCH):  # full batches only: one compiled program
        idx = perm[i : i + BATCH]
        svi_state, loss = step(svi_state, x_tr[idx], y_tr[idx], beta)
        total = total + loss
    total = float(total)  # waits for the epoch's last step
    if not np.isfinite(total):
        raise FloatingPointError(f"the loss diverged in epoch {epoch}; lower the learning rate")
    history["loss"].append(total / N)
    history["kept"].append(vd.sparsity_report(guide, svi.get_params(svi_state)).kept)
train_s = time.perf_counter() - start
print(f"{EPOCHS} epochs in {train_s:.1f} s; traces of the step: {n_traces}")

fig, axes = plt.subplots(1, 2, figsize=(9, 3), layout="constrained")
axes[0].plot(history["loss"])
axes[0].set(xlabel="epoch", ylabel="loss per example", yscale="log")
axes[1].plot(history["kept"])
axes[1].set(xlabel="epoch", ylabel="weights with log α < 3", yscale="log")
for ax in axes:
    ax.axvline(warmup, color="grey", ls="--", lw=0.8)  # end of the KL warm-up
plt.show()

# %% [markdown]
# One trace for the whole run, although $\beta$ changed every epoch. As in tutorial 01,
# the loss is the negative ELBO with the KL weighted by $\beta$, so it can rise while
# $\beta$ grows; afterwards both terms fall as weights are switched off.
#
# ## 7. Sparsity and compression
#
# Both functions take the parameters explicitly. `vd.sparsity_report` counts the weights
# with $\log\alpha < 3$ per layer (shapes shown as `(out, in)`, as the Pyro backend
# reports them); `vd.compress` exports the pruned mean network with dead units removed.
# Its layers are plain arrays: `vd.mlp_apply(small, x)` is `relu(x @ W + b)` layer by layer,
# with no NumPyro and no Flax.

# %%
params = svi.get_params(svi_state)
report = vd.sparsity_report(guide, params)
print(report)
plot_log_alpha({k: np.asarray(v) for k, v in guide.log_alpha(params).items()}, threshold=3.0)
plt.show()

small = vd.compress(bnn, guide, params)
print(small)
small_logits = vd.mlp_apply(small, x_te)
print(f"test accuracy of the compressed MLP: {(small_logits.argmax(-1) == y_te).mean():.3f}")

# %% [markdown]
# ## 8. Predictions, and why value checks happen outside jit
#
# `vd.predict(model, guide, params, key, x, mode=...)` has three modes: `"mean"`, the
# pruned mean network (deterministic, the compressed network's outputs); `"mc"`, one
# sampled weight tensor per draw; `"lrt"`, pre-activations sampled independently per
# example. It vmaps over draws; we jit it once per mode (`mode` is a Python string that
# decides what is traced, hence a static argument).
#
# `numpyro.infer.Predictive` with the guide samples weights from the guide and runs the
# model with them, the same as `"mc"` (called under `with vd.local_reparam():` it samples
# pre-activations instead, as `"lrt"` does).


# %%
@partial(jax.jit, static_argnames="mode")
def predict_logits(params, key, x, mode):
    draws = vd.predict(
        model, guide, params, key, x, mode=mode, num_samples=DRAWS, return_sites=["logits"]
    )
    return draws["logits"]  # (draws, examples, classes); one draw in "mean" mode


def scores(logits):
    """Accuracy and mean negative log-likelihood of the draw-averaged probabilities."""
    probs = jax.nn.softmax(logits, -1).mean(0)
    nll = -jnp.log(jnp.take_along_axis(probs, y_te[:, None], -1) + 1e-12).mean()
    return float((probs.argmax(-1) == y_te).mean()), float(nll)


predictions = {
    f'vd.predict, "{mode}"': predict_logits(params, predict_key, x_te, mode)
    for mode in ("mean", "mc", "lrt")
}
predictive = Predictive(model, guide=guide, params=params, num_samples=DRAWS)
predictions["Predictive with the guide"] = predictive(predict_key, x_te)["logits"]
print(f"{'':28s} accuracy    NLL")
for label, logits in predictions.items():
    acc, nll = scores(logits)
    print(f"{label:28s} {acc:8.3f} {nll:6.3f}")
mean_logits = predictions['vd.predict, "mean"'][0]
print(f"max |compressed - mean mode| = {jnp.abs(small_logits - mean_logits).max():.1e}")

# %% [markdown]
# Called eagerly, `vd.predict` checks its inputs and refuses NaN. Under `jit` the same
# input is a tracer, an abstract value whose numbers do not exist yet when the Python code
# runs, so no Python `if` can look at them: the NaN flows through to the output. This is
# why vdppl checks values where they are concrete (in `bayesianize`, at the guide's
# set-up, in eager calls) and never inside a compiled step. Check your data once before
# training, and the loss between epochs (as above); `jax.experimental.checkify` compiles
# such checks into the program if you need them there.

# %%
bad = x_te.at[0, 0].set(jnp.nan)
try:
    vd.predict(model, guide, params, predict_key, bad, mode="mean")
except ValueError as err:
    print(f"eager:  ValueError: {str(err)[:75]}...")
nan_rows = jnp.isnan(predict_logits(params, predict_key, bad, "mean")[0]).any(-1)
print(f"jitted: no error; rows of NaN logits: {int(nan_rows.sum())} of {len(bad)}")

# %% [markdown]
# ## 9. A whole training run as one program: the 1-D toy
#
# On small data the cost of a step is mostly the call from Python. `jax.lax.scan` moves
# the loop itself into the compiled program: the body is traced once and XLA runs it
# `TOY_STEPS` times, with the warm-up schedule as an array of $\beta$s scanned over. We
# fit tutorial 01's 1-D regression with a gap (160 points, full batch) with variational
# dropout, `noise="multiplicative"` (learned $\alpha \le 1$ per weight); the observation
# noise $\sigma$ is a `numpyro.param` with a positivity constraint.

# %%
toy = load("toy1d")
x_toy, y_toy = jnp.asarray(toy.x_train), jnp.asarray(toy.y_train)
x_grid = jnp.asarray(toy.x_test)  # sorted, evenly spaced over [-6, 6] before scaling
xs = np.asarray(x_grid[:, 0])
lo, hi = float(x_toy.min()), float(x_toy.max())
gap = (float(x_toy[x_toy < 0].max()), float(x_toy[x_toy > 0].min()))
region = np.where(
    (xs < lo) | (xs > hi), "beyond the data", np.where((xs > gap[0]) & (xs < gap[1]), "gap", "data")
)
toy_init_key, toy_svi_key, toy_predict_key = jax.random.split(toy_key, 3)
toy_bnn = vd.bayesianize(MLP((50, 50, 1)), (1, 1), rng_key=toy_init_key)


def toy_model(x, y=None):
    mean = numpyro.deterministic("mean", toy_bnn(x)[..., 0])
    sigma = numpyro.param("sigma", 0.5, constraint=constraints.positive)
    with numpyro.plate("data", x.shape[0]):
        return numpyro.sample("y", dist.Normal(mean, sigma), obs=y)


toy_guide = vd.AutoVariationalDropout(toy_model, noise="multiplicative")
toy_svi = SVI(toy_model, toy_guide, numpyro.optim.Adam(1e-2), vd.LocalReparamELBO())
toy_state = toy_svi.init(toy_svi_key, x_toy, y_toy)


@jax.jit
def train_toy(state, betas):
    def one_step(state, beta):
        return toy_svi.update(state, x_toy, y_toy, kl_weight=beta)

    return jax.lax.scan(one_step, state, betas)  # final state, loss of every step


betas = jnp.minimum(1.0, jnp.arange(TOY_STEPS) / (TOY_STEPS / 2))  # warm-up, then 1
start = time.perf_counter()
toy_state, toy_losses = train_toy(toy_state, betas)
toy_losses.block_until_ready()
print(f"{TOY_STEPS} steps, compiled and run, in {time.perf_counter() - start:.1f} s")
toy_params = toy_svi.get_params(toy_state)


@jax.jit
def toy_bands(params, key):
    draws = vd.predict(toy_model, toy_guide, params, key, x_grid, mode="lrt", num_samples=DRAWS)
    return {site: jnp.quantile(draws[site], jnp.array([0.025, 0.975]), axis=0)
            for site in ("y", "mean")} | {"average": draws["mean"].mean(0)}  # fmt: skip


bands = toy_bands(toy_params, toy_predict_key)
fig, ax = plt.subplots(figsize=(6.5, 3.5), layout="constrained")
for span in (gap, (xs[0], lo), (hi, xs[-1])):
    ax.axvspan(*span, color="grey", alpha=0.15, lw=0)  # no training inputs here
ax.fill_between(xs, *bands["y"], color="tab:blue", alpha=0.25, lw=0, label="95% observation")
ax.fill_between(xs, *bands["mean"], color="tab:red", alpha=0.3, lw=0, label="95% mean function")
ax.plot(xs, bands["average"], color="tab:red", lw=1)
ax.plot(x_toy[:, 0], y_toy, "k.", ms=3)
ax.set(xlabel="x (standardized)", ylabel="y (standardized)", ylim=(-4, 4))
ax.legend(loc="upper left", fontsize="small")
plt.show()
width = np.asarray(bands["mean"][1] - bands["mean"][0])
print(f"fitted sigma {float(toy_params['sigma']):.3f} (true noise {0.15 / toy.y_std:.3f})")
print("95% band of the mean function, mean width:")
for name in ("data", "gap", "beyond the data"):
    print(f"  {name:16s} {width[region == name].mean():.3f}")

# %% [markdown]
# As in tutorial 01, the band widens beyond the data, where the first layer's
# pre-activation variance `x**2 @ sigma2` grows with $|x|$, but hardly in the gap: with
# point-estimate biases that variance vanishes at $x = 0$ (tutorial 01, section 6,
# discusses this and a fix).
#
# ## 10. The speed difference
#
# We time one SVI step on the digits network (64-100-100-10, minibatch 100, sparse VD
# with the local reparameterization) three ways:
#
# - **NumPyro, jitted**: the compiled `step` from section 5;
# - **NumPyro, not jitted**: `svi.update` called directly. JAX then runs operation by
#   operation, each dispatched from Python (and compiled the first time it is met);
# - **Pyro**: `vdppl.pyro` with the same network, guide, ELBO and optimizer, on PyTorch,
#   with Pyro's argument validation off (the compiled step checks no values either) and
#   PyTorch on one thread.
#
# Because JAX dispatches asynchronously, every timing waits for the last step's result
# (`block_until_ready`); Pyro's `svi.step` returns a Python float, which already waits.

# %%
import pyro  # noqa: E402 -- only this section needs PyTorch
import pyro.distributions as pdist  # noqa: E402
import torch  # noqa: E402

import vdppl.pyro as vdp  # noqa: E402


def ms_per_step(update, state, n):
    """Wall milliseconds per step of ``update`` over ``n`` steps on one minibatch."""
    start = time.perf_counter()
    for _ in range(n):
        state, loss = update(state, xb, yb, beta)
    loss.block_until_ready()  # wait for the asynchronously dispatched work
    return 1000 * (time.perf_counter() - start) / n, state


def eager_update(state, x, y, kl_weight):
    return svi.update(state, x, y, kl_weight=kl_weight)


beta = jnp.float32(1.0)
timing = {}
jit_ms, _ = ms_per_step(step, svi_state, TIMED_STEPS)
timing["NumPyro, jitted"] = {"first": trace_s + compile_s, "ms": jit_ms}
first_ms, eager_state = ms_per_step(eager_update, svi_state, 1)
eager_ms, _ = ms_per_step(eager_update, eager_state, EAGER_STEPS)
timing["NumPyro, not jitted"] = {"first": first_ms / 1000, "ms": eager_ms}

pyro.clear_param_store()
pyro.set_rng_seed(0)
pyro.enable_validation(False)
torch_threads = torch.get_num_threads()
torch.set_num_threads(1)  # fastest for matrices this small; see the notes below
torch_net = torch.nn.Sequential(
    torch.nn.Linear(64, 100),
    torch.nn.ReLU(),
    torch.nn.Linear(100, 100),
    torch.nn.ReLU(),
    torch.nn.Linear(100, 10),
)
torch_bnn = vdp.bayesianize(torch_net, prior=vdp.LogUniform())


def pyro_model(x, y=None):
    logits = torch_bnn(x)
    with pyro.plate("data", N, subsample=torch.arange(len(x))):
        return pyro.sample("y", pdist.Categorical(logits=logits), obs=y)


pyro_svi = pyro.infer.SVI(
    pyro_model,
    vdp.AutoVariationalDropout(pyro_model),
    pyro.optim.Adam({"lr": 3e-3}),
    vdp.LocalReparamELBO(),
)
xb_t, yb_t = torch.from_numpy(np.array(xb)), torch.from_numpy(np.array(yb))
start = time.perf_counter()
pyro_svi.step(xb_t, yb_t)  # the first call also sets the guide up
pyro_first = time.perf_counter() - start
start = time.perf_counter()
for _ in range(TIMED_STEPS):
    pyro_svi.step(xb_t, yb_t)
timing["Pyro (PyTorch)"] = {
    "first": pyro_first,
    "ms": 1000 * (time.perf_counter() - start) / TIMED_STEPS,
}
pyro.enable_validation(True)  # Pyro's defaults again
torch.set_num_threads(torch_threads)

pyro_ms = timing["Pyro (PyTorch)"]["ms"]
print(f"digits MLP 64-100-100-10, minibatch {BATCH}, JAX on {jax.devices()[0]}, "
      f"PyTorch on 1 thread, {os.cpu_count()} CPUs")  # fmt: skip
print(f"{'':22s} {'first call (s)':>14s} {'ms per step':>12s} {'speed vs Pyro':>14s}")
for label, t in timing.items():
    print(f"{label:22s} {t['first']:14.2f} {t['ms']:12.2f} {pyro_ms / t['ms']:13.3g}x")
print(f"(the jitted step's first call: trace {trace_s:.2f} s + XLA compile {compile_s:.2f} s)")
n_steps = EPOCHS * (N // BATCH)
print(f"a {EPOCHS}-epoch run is {n_steps} steps: jitted "
      f"{trace_s + compile_s + n_steps * jit_ms / 1000:.1f} s with compilation, Pyro "
      f"{pyro_first + n_steps * pyro_ms / 1000:.1f} s with set-up")  # fmt: skip

fig, ax = plt.subplots(figsize=(6, 2.5), layout="constrained")
ax.barh(list(timing), [t["ms"] for t in timing.values()], color="tab:blue")
ax.set(xscale="log", xlabel="ms per SVI step (log scale)")
ax.invert_yaxis()
plt.show()

# %% [markdown]
# How to read the table, and how not to:
#
# - **These numbers belong to this machine.** They change with the CPU, the number of
#   threads, other work running at the same time, and the library versions; on a shared
#   machine, rerun the cell and expect variation. Compare the orders of magnitude, not
#   the digits. Threads matter most: we run PyTorch on one thread, the fastest for
#   matrices this small; with two threads on a busy two-core machine we measured its step
#   25 times slower, as its threads waited for each other. In smoke mode (`CI` set)
#   XLA's optimisations are off and the steps are tiny, so the numbers mean nothing.
# - **Jit pays once, up front.** Tracing and compiling took seconds, the time of
#   thousands of compiled steps, and it is paid again in every new process and for every
#   new shape. On a problem this small, a single training run may spend as long
#   compiling as running (compare the last printed line): the gain grows with the number
#   of steps and the size of the model. The un-jitted step's first call is slow too: JAX
#   compiles each operation the first time it meets it.
# - **Without jit, NumPyro is the slowest of the three.** Every small operation, and every
#   effect handler, goes through Python: never train with an un-jitted `svi.update`.
# - **The jitted step against Pyro** is mostly a comparison of per-step overhead at this
#   size: the matrices are small, and Pyro's Python machinery (traces, handlers, the
#   parameter store) runs at every step while the compiled program skips all of it. For
#   larger networks and batches the arithmetic dominates and the gap narrows
#   (`vdppl bench speed --backend numpyro` and `--backend pyro` time LeNet-300-100).
#
# ## Exercises
#
# 1. Call `step` with a Python float as the KL weight (`0.5` instead of
#    `jnp.float32(0.5)`) and watch `n_traces`. Then change the batch size to 64. Why does
#    each retrace, and what does it cost here?
# 2. Write a jitted step that takes no `kl_weight` argument, so that the ELBO reads
#    `elbo.kl_weight`. Train with a warm-up set through the attribute
#    (`elbo.kl_weight = beta` each epoch) and compare the loss curve and compression
#    with section 6. What did the compiled program do with the schedule?
# 3. Train the digits network for a whole epoch inside one `jax.lax.scan` (scan over the
#    epoch's minibatch indices, as section 9 scans over steps) and time an epoch against
#    the Python loop of section 6.
# 4. Compare `noise="multiplicative"` with the default additive noise on the 1-D toy:
#    band widths per region and fitted $\sigma$ (tutorial 01 does this in Pyro; do you get
#    the same picture?).
# 5. Give the toy's first layer a constant input, `[x, 1]`, and no bias (tutorial 01,
#    section 6) and see whether the band in the gap widens.
# 6. Rerun section 10 with minibatches of 1,000 (sample them with replacement) and with
#    LeNet-300-100 on random 784-pixel inputs. How do the ratios change, and why?
