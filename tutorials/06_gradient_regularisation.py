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
# # Gradient regularisation as approximate variational inference
#
# **What this notebook teaches.** Unlu & Aitchison [3] replace the Monte Carlo ELBO by a
# deterministic one: a second-order Taylor expansion of the expected log-likelihood
# around the posterior mean, whose curvature term is a penalty on squared gradients.
# We will
#
# 1. derive it and compare `vd.GradientRegularizedELBO` with the Monte Carlo ELBO as the
#    posterior variance grows;
# 2. look at what the squared-gradient term penalises, layer by layer and weight by
#    weight;
# 3. compare its two curvatures, the empirical Fisher and the generalized Gauss-Newton;
# 4. train with it, and see why the variances want their own, larger learning rate
#    (`vd.variance_lr`).
#
# - [1] Kingma, Salimans, Welling (2015), *Variational Dropout and the Local
#   Reparameterization Trick*, arXiv:1506.02557.
# - [2] Molchanov, Ashukha, Vetrov (2017), *Variational Dropout Sparsifies Deep Neural
#   Networks*, arXiv:1701.05369.
# - [3] Unlu, Aitchison (2020), *Gradient Regularisation as Approximate Variational
#   Inference*, arXiv:2011.10443 (Entropy 23(12):1629, 2021).
#
# Full settings take about a minute on a laptop CPU; with `CI` set in the environment
# the notebook runs with tiny settings and its numbers mean nothing.

# %%
import os
import time

import matplotlib.pyplot as plt
import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.infer import SVI

import vdppl.pyro as vd
from vdppl.data import load
from vdppl.diagnostics import classification_metrics

smoke_test = "CI" in os.environ  # tiny settings when the test suite runs this notebook

EPOCHS = 2 if smoke_test else 40
MC_DRAWS = 3 if smoke_test else 30  # Monte Carlo ELBO draws per variance
LOG_SIGMA2_GRID = [-10.0, -6.0, -2.0] if smoke_test else list(np.arange(-12.0, 0.5, 1.0))
PREDICTIVE_DRAWS = 5 if smoke_test else 50

pyro.set_rng_seed(0)

# %% [markdown]
# ## The deterministic ELBO
#
# For a factorized Gaussian $q(w) = \mathcal N(\mu, \mathrm{diag}\,\sigma^2)$, expand each
# example's log-likelihood to second order around the mean:
#
# $$\mathbb E_q[\log p(y_i \mid x_i, w)] \approx \log p(y_i \mid x_i, \mu) +
# \tfrac12 \sum_k \sigma_k^2 H_{ikk},$$
#
# where $H_i$ is the Hessian of $\log p(y_i \mid x_i, w)$ at $\mu$; the first-order term
# vanishes because $\mathbb E_q[w - \mu] = 0$. The Hessian is expensive and may have the
# wrong sign, so it is replaced by a positive semi-definite curvature $C_i \approx -H_i$:
#
# - the **empirical Fisher**, $C_{ikk} = g_{ik}^2$ with $g_{ik} = \partial \log p(y_i \mid
#   x_i, w) / \partial w_k$ at $\mu$: a squared-gradient penalty ([3]'s choice);
# - the **generalized Gauss-Newton** (GGN), $J_i^\top \Lambda_i J_i$, with $J_i$ the
#   Jacobian of the network's outputs and $\Lambda_i$ the likelihood's Fisher in those
#   outputs. For a softmax likelihood it equals the Fisher: the empirical Fisher averaged
#   over labels drawn from the model, $y \sim p(y \mid x_i, \mu)$.
#
# The objective, for a minibatch $B$ of $N$ examples:
#
# ```
# ELBO ≈ N/|B| * sum_{i in B} [ log p(y_i | x_i, mu) - 1/2 * sum_k sigma2_k * C_ikk ] - KL(q || p)
# ```
#
# No random numbers are drawn. `vd.GradientRegularizedELBO().terms(model, guide, x, y)`
# returns the three pieces `data`, `penalty` (already halved and scaled) and `kl`.
#
# ## Data, model, and a fitted mean
#
# A 64-100-10 classifier on scikit-learn's digits. The model returns its logits instead
# of recording them as a `pyro.deterministic` site, because
# `GradientRegularizedELBO(curvature="ggn")` counts such sites among the observations
# and refuses them; a small helper draws predictions instead of `vd.predict`.

# %%
digits = load("digits")
x_train = torch.as_tensor(digits.x_train).flatten(1)
y_train = torch.as_tensor(digits.y_train)
x_test = torch.as_tensor(digits.x_test).flatten(1)
y_test = torch.as_tensor(digits.y_test)
N = len(x_train)


def build(**guide_options):
    """A fresh network, model and guide (the param store is cleared)."""
    pyro.clear_param_store()
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(64, 100), torch.nn.ReLU(), torch.nn.Linear(100, 10))
    bnn = vd.bayesianize(net)

    def model(x, y=None):
        logits = bnn(x)
        with pyro.plate("data", N, subsample=torch.arange(len(x))):
            pyro.sample("y", dist.Categorical(logits=logits), obs=y)
        return logits

    guide = vd.AutoVariationalDropout(model, **guide_options)
    guide(x_train[:2], y_train[:2])  # create the parameters
    return bnn, model, guide


@torch.no_grad()
def predictive_probs(model, guide, x, draws):
    """Class probabilities, ``(draws, n, 10)``, by local reparameterization draws."""
    out = []
    for _ in range(draws):
        with vd.local_reparam():
            guide_trace = poutine.trace(guide).get_trace(x)
            logits = poutine.replay(model, trace=guide_trace)(x)
        out.append(torch.softmax(logits, -1))
    return torch.stack(out).numpy()


@torch.no_grad()
def mean_probs(model, guide, x):
    """Class probabilities of the mean network, ``(1, n, 10)``."""
    return torch.softmax(poutine.condition(model, data=guide.median())(x), -1)[None].numpy()


def train(model, guide, elbo, optim, epochs=EPOCHS, record=None):
    svi = SVI(model, guide, optim, elbo)
    for epoch in range(epochs):
        elbo.kl_weight = min(1.0, epoch / max(1, epochs // 2))
        for batch in torch.randperm(N).split(100):
            svi.step(x_train[batch], y_train[batch])
        if record is not None:
            record(epoch)


start = time.perf_counter()
bnn, model, guide = build(init_log_sigma2=-10.0)
train(model, guide, vd.LocalReparamELBO(), pyro.optim.Adam({"lr": 3e-3}))
fit = classification_metrics(mean_probs(model, guide, x_test), y_test.numpy())
print(
    f"fitted in {time.perf_counter() - start:.0f} s; mean network test accuracy {fit['accuracy']:.3f}"
)

# %% [markdown]
# ## The deterministic ELBO against the Monte Carlo ELBO
#
# Keep the means fixed and set every $\log\sigma^2$ to one value $c$. For each $c$ we
# compute, on the whole training set:
#
# - the Monte Carlo ELBO: `-vd.LocalReparamELBO().loss(...)`, averaged over draws;
# - the deterministic ELBO with the empirical Fisher and with the GGN;
# - the plug-in value $\log p(\mathcal D \mid \mu) - \mathrm{KL}$, which ignores the
#   variance in the data term.
#
# All four share the same analytic KL, so they differ only in the data term.

# %%
# The guide's log sigma^2 tensors; we overwrite them in place (replacing the tensors in
# the param store would leave the guide's module holding the old ones).
log_sigma2 = {
    name: pyro.param(f"AutoVariationalDropout.log_sigma2.{name}") for name in guide.dropout_sites
}
fitted_log_sigma2 = {name: value.detach().clone() for name, value in log_sigma2.items()}

curves = {"Monte Carlo": [], "Monte Carlo se": [], "empirical Fisher": [], "GGN": [], "plug-in": []}
start = time.perf_counter()
for c in LOG_SIGMA2_GRID:
    with torch.no_grad():
        for value in log_sigma2.values():
            value.fill_(c)
    mc = [-vd.LocalReparamELBO().loss(model, guide, x_train, y_train) for _ in range(MC_DRAWS)]
    curves["Monte Carlo"].append(np.mean(mc))
    curves["Monte Carlo se"].append(np.std(mc) / np.sqrt(len(mc)))
    for curvature, label in (("empirical_fisher", "empirical Fisher"), ("ggn", "GGN")):
        terms = vd.GradientRegularizedELBO(curvature=curvature).terms(
            model, guide, x_train, y_train
        )
        curves[label].append((terms["data"] - terms["penalty"] - terms["kl"]).item())
    curves["plug-in"].append((terms["data"] - terms["kl"]).item())
with torch.no_grad():  # put the fitted variances back
    for name, value in log_sigma2.items():
        value.copy_(fitted_log_sigma2[name])
print(f"swept {len(LOG_SIGMA2_GRID)} variances in {time.perf_counter() - start:.0f} s")

grid = np.array(LOG_SIGMA2_GRID)
fig, axes = plt.subplots(1, 2, figsize=(12, 4), layout="constrained")
for label, style in (
    ("Monte Carlo", "ko-"),
    ("empirical Fisher", "s--"),
    ("GGN", "^--"),
    ("plug-in", ":"),
):
    axes[0].plot(grid, np.array(curves[label]) / N, style, label=label)
axes[0].set(xlabel="log σ² (all weights)", ylabel="ELBO per training example", ylim=(-3, 0.1))
axes[0].legend()
mc = np.array(curves["Monte Carlo"])
for label, style in (("empirical Fisher", "s--"), ("GGN", "^--"), ("plug-in", ":")):
    axes[1].semilogy(grid, np.abs(np.array(curves[label]) - mc) / N, style, label=label)
axes[1].semilogy(
    grid, 2 * np.array(curves["Monte Carlo se"]) / N, "k-", lw=0.8, label="2 MC standard errors"
)
axes[1].set(xlabel="log σ² (all weights)", ylabel="|approximation - Monte Carlo| per example")
axes[1].legend()
plt.show()

# %% [markdown]
# Reading the two panels: at small variances all approximations agree with the Monte
# Carlo ELBO (the right panel's gaps sink towards the Monte Carlo error). As $\sigma^2$
# grows the plug-in value misses the cost of noise entirely, and the expansions, being
# quadratic in $w - \mu$, capture its first part only; the Monte Carlo ELBO falls faster
# than either. Where the curves part is where the deterministic objective stops being a
# faithful stand-in for the ELBO. On this well-fitted training set the empirical Fisher is
# the smaller curvature of the two (next section), so it under-penalises noise more.
# Note where each curve peaks: an optimiser of the deterministic objective would choose
# a larger variance than the Monte Carlo ELBO's best, most of all with the empirical
# Fisher. Remember this when we train with it below.
#
# ## What the squared-gradient term penalises
#
# We compute the per-example gradients ourselves with `torch.func`, at the fitted means,
# for the same two-layer network written as a plain function. Summed over examples, the
# squared gradients are the diagonal of the empirical Fisher, `EF_k = sum_i g_ik**2`;
# the GGN diagonal is `GGN_k = sum_i sum_c p_ic * g_ick**2`, where $g_{ic}$ is the
# gradient of $\log p(c \mid x_i, \mu)$ for label $c$ and $p_{ic}$ its probability.

# %%
weights = {name: value.detach() for name, value in guide.median().items()}  # "0.weight", "2.weight"
biases = {name: pyro.param(name).detach() for name in ("0.bias", "2.bias")}  # point estimates


def logits_fn(w, x):
    hidden = torch.relu(x @ w["0.weight"].T + biases["0.bias"])
    return hidden @ w["2.weight"].T + biases["2.bias"]


def log_lik(w, x, y):  # one example
    return torch.log_softmax(logits_fn(w, x), -1).gather(-1, y[None])[0]


per_example_grad = torch.func.vmap(torch.func.grad(log_lik), in_dims=(None, 0, 0))
grads = per_example_grad(weights, x_train, y_train)  # {"0.weight": (N, 100, 64), ...}
ef = {name: (g**2).sum(0) for name, g in grads.items()}

with torch.no_grad():
    probs_train = torch.softmax(logits_fn(weights, x_train), -1)
ggn = {name: torch.zeros_like(w) for name, w in weights.items()}
for c in range(10):
    g_c = per_example_grad(weights, x_train, torch.full((N,), c))
    for name in ggn:
        ggn[name] += (probs_train[:, c, None, None] * g_c[name] ** 2).sum(0)

sigma2 = {name: value.detach().exp() for name, value in log_sigma2.items()}
for label, curvature, diag in (("empirical Fisher", "empirical_fisher", ef), ("GGN", "ggn", ggn)):
    ours = 0.5 * sum((sigma2[n] * diag[n]).sum() for n in weights)
    library = vd.GradientRegularizedELBO(curvature=curvature).terms(model, guide, x_train, y_train)
    print(
        f"{label:16s} penalty: ours {ours.item():.6f}, GradientRegularizedELBO {library['penalty'].item():.6f}"
    )

# %% [markdown]
# The penalty for weight $k$ is $\tfrac12 \sigma_k^2 \sum_i g_{ik}^2$: a weight may carry
# noise only in directions in which the log-likelihood is flat. Directions where it is
# sharp (large squared gradients) make noise expensive, so the optimum gives them small
# variance, as a Laplace approximation would. Per layer, and per input pixel for the
# first layer:

# %%
fig, axes = plt.subplots(1, 4, figsize=(15, 3.4), layout="constrained")
names = list(weights)
x_pos = np.arange(len(names))
for offset, (label, diag) in zip(
    (-0.2, 0.2), (("empirical Fisher", ef), ("GGN", ggn)), strict=True
):
    per_layer = [0.5 * (sigma2[n] * diag[n]).sum().item() for n in names]
    axes[0].bar(x_pos + offset, per_layer, 0.4, label=label)
axes[0].set(xticks=x_pos, xticklabels=names, ylabel="penalty at the fitted σ²", yscale="log")
axes[0].legend(fontsize="small")
for ax, (label, diag) in zip(axes[1:3], (("empirical Fisher", ef), ("GGN", ggn)), strict=True):
    shown = ax.imshow(diag["0.weight"].sum(0).reshape(8, 8), cmap="magma")
    fig.colorbar(shown, ax=ax)
    ax.set(title=f"{label}, first layer, per pixel", xticks=[], yticks=[])
axes[3].imshow(x_train.mean(0).reshape(8, 8), cmap="gray")
axes[3].set(title="mean training image", xticks=[], yticks=[])
plt.show()

# %% [markdown]
# ## Empirical Fisher against GGN
#
# Per weight, both diagonals on log-log axes. The empirical Fisher uses the observed
# label only; the GGN averages over labels the model itself would draw. On a training
# example the model fits confidently, the observed-label gradient is nearly zero
# ($p(y_i) \approx 1$), while the GGN still counts the sensitivity to the labels the
# model considers unlikely but possible. On misfitted examples it is the other way round.

# %%
correct = probs_train.argmax(-1) == y_train
share_wrong = {
    name: ((grads[name][~correct] ** 2).sum() / ef[name].sum()).item() for name in weights
}
fig, axes = plt.subplots(1, len(names), figsize=(11, 4), layout="constrained")
for ax, name in zip(axes, names, strict=True):
    a, b = ef[name].flatten().numpy(), ggn[name].flatten().numpy()
    keep = (a > 0) & (b > 0)
    ax.loglog(b[keep], a[keep], ".", ms=2, alpha=0.4)
    lims = [min(a[keep].min(), b[keep].min()), max(a[keep].max(), b[keep].max())]
    ax.plot(lims, lims, "k--", lw=0.8, label="EF = GGN")
    ax.set(xlabel="GGN diagonal", ylabel="empirical Fisher diagonal", title=f"layer {name}")
    ax.legend()
plt.show()
for name in names:
    ratio = (ef[name].sum() / ggn[name].sum()).item()
    print(
        f"{name}: sum EF / sum GGN = {ratio:.2f}; {share_wrong[name]:.0%} of the EF comes from the "
        f"{int((~correct).sum())} misclassified training examples"
    )

# %% [markdown]
# ## Training with the deterministic ELBO
#
# Now fit with `GradientRegularizedELBO` from scratch (means from the network's
# initialisation, $\log\sigma^2 = -10$ as in [2]). [3] report that the variances then
# converge slowly: their gradient, $-\tfrac12 \sum_i g_{ik}^2$ plus the KL's, is tiny
# next to the means'. `vd.variance_lr(lr, variance_lr)` builds per-parameter Adam
# arguments that give the guide's variance parameters (`log_sigma2`) their own rate:
#
# ```python
# optim = pyro.optim.Adam(vd.variance_lr(3e-3, 3e-2))
# ```
#
# We train three models for the same number of epochs and record the mean $\log\sigma^2$
# of each layer after every epoch.

# %%
RUNS = {
    "Monte Carlo ELBO (LRT)": (vd.LocalReparamELBO, 3e-3),
    "gradient-regularised, same lr": (vd.GradientRegularizedELBO, 3e-3),
    "gradient-regularised, variance lr x10": (vd.GradientRegularizedELBO, 3e-2),
}
trajectories, results = {}, {}
for label, (elbo_class, var_lr) in RUNS.items():
    bnn, model, guide = build(init_log_sigma2=-10.0)
    track = {name: [] for name in guide.dropout_sites}

    def record(epoch, guide=guide, track=track):
        for name in track:
            track[name].append(
                pyro.param(f"AutoVariationalDropout.log_sigma2.{name}").mean().item()
            )

    start = time.perf_counter()
    train(model, guide, elbo_class(), pyro.optim.Adam(vd.variance_lr(3e-3, var_lr)), record=record)
    seconds = time.perf_counter() - start
    trajectories[label] = track
    results[label] = {
        "mean network": classification_metrics(mean_probs(model, guide, x_test), y_test.numpy()),
        "LRT predictive": classification_metrics(
            predictive_probs(model, guide, x_test, PREDICTIVE_DRAWS), y_test.numpy()
        ),
        "seconds": seconds,
        "log_sigma2": {
            n: pyro.param(f"AutoVariationalDropout.log_sigma2.{n}").detach().clone() for n in track
        },
        "means": {n: v.detach().clone() for n, v in guide.median().items()},
        "biases": {n: pyro.param(n).detach().clone() for n in ("0.bias", "2.bias")},
        "log_alpha": guide.log_alpha(),
    }
    print(f"{label}: {EPOCHS} epochs in {seconds:.1f} s")

fig, axes = plt.subplots(1, 2, figsize=(11, 3.6), sharey=True, layout="constrained")
for ax, name in zip(axes, names, strict=True):
    for label, track in trajectories.items():
        ax.plot(np.arange(1, EPOCHS + 1), track[name], label=label)
    ax.set(title=f"layer {name}", xlabel="epoch", ylabel="mean log σ²")
axes[0].legend(fontsize="small")
plt.show()

print(f"{'':40s} {'mean network':>24s}   {'LRT predictive':>24s}")
print(f"{'':40s} {'acc':>7s} {'NLL':>7s} {'ECE':>7s}   {'acc':>7s} {'NLL':>7s} {'ECE':>7s}")
for label, r in results.items():
    m, p = r["mean network"], r["LRT predictive"]
    print(
        f"{label:40s} {m['accuracy']:7.3f} {m['nll']:7.3f} {m['ece']:7.3f}   "
        f"{p['accuracy']:7.3f} {p['nll']:7.3f} {p['ece']:7.3f}"
    )

# %% [markdown]
# At the means' learning rate the variances of the deterministic objective hardly leave
# their initial value in this many epochs: the posterior stays a near point mass, and
# the method is MAP with a log-uniform prior. With a ten times larger rate for
# `log_sigma2` they move. Two columns of the table tell two stories:
#
# - the **mean network**, the deterministic predictor the objective is built around;
# - the **LRT predictive**, which samples from $q$ and so tests whether the learned
#   variances are ones the network can actually tolerate.
#
# If the variances grow into the range where the sweep above showed the expansion
# parting from the Monte Carlo ELBO, the LRT predictive suffers while the mean network
# does not: the Taylor expansion certified noise levels that sampling reveals to be
# harmful. Check in the table whether that happened in your run.
#
# Finally, does the fitted posterior put small variances where the log-likelihood is
# sharp? Per weight of the first layer, the learned $\log\sigma^2$ against the squared
# gradients summed over the training set, at that run's own means:

# %%
label = "gradient-regularised, variance lr x10"
r = results[label]
biases = r["biases"]  # logits_fn reads the biases of this run
g = per_example_grad(r["means"], x_train, y_train)["0.weight"]
sharpness = (g**2).sum(0).flatten().numpy()
keep = sharpness > 0
learned = {
    "log σ²": r["log_sigma2"]["0.weight"].flatten().numpy(),
    "log α": r["log_alpha"]["0.weight"].flatten().numpy(),
}


def ranks(a):
    return np.argsort(np.argsort(a))


fig, axes = plt.subplots(1, 2, figsize=(11, 4), layout="constrained")
for ax, (what, values) in zip(axes, learned.items(), strict=True):
    rho = np.corrcoef(ranks(np.log(sharpness[keep])), ranks(values[keep]))[0, 1]
    ax.semilogx(sharpness[keep], values[keep], ".", ms=2, alpha=0.4)
    ax.set(
        xlabel="sum_i g_ik² (empirical Fisher diagonal)",
        ylabel=f"learned {what}",
        title=f"first layer, {what}: Spearman ρ = {rho:.2f}",
    )
fig.suptitle(label)
plt.show()
print(f"share of first-layer weights pruned (log α > 3): {np.mean(learned['log α'] > 3):.0%}")

# %% [markdown]
# Read the right panel first. With the log-uniform prior the KL depends only on the
# *relative* noise $\alpha = \sigma^2/\theta^2$ and pushes it up everywhere; the curvature
# term pushes back in proportion to the squared gradients. So the sharper a direction,
# the smaller the $\alpha$ the fit affords it, and flat directions end up at the clip
# $\log\alpha = 8$: pruned, as in sparse VD.
#
# The left panel looks the other way round, and shows why $\sigma^2$ alone is the wrong
# thing to look at here: in flat directions the KL raises $\alpha$ mostly by shrinking
# $\theta$ to zero, and once $\log\alpha$ reaches its clip its gradient stops, so those
# weights keep a small, frozen $\sigma^2$. The textbook statement "small variance where
# the curvature is large", as in a Laplace approximation, belongs to a Gaussian prior,
# whose KL pins the scale of $\sigma^2$ (exercise 1). (Pixels that are always 0 give
# their weights zero gradient; they are left out of the plots.)
#
# ## Exercises
#
# 1. Repeat the sweep with a Normal prior: `vd.bayesianize(net, prior=dist.Normal(0.,
#    1.))` and `pyro.infer.autoguide.AutoNormal`, which `GradientRegularizedELBO` also
#    accepts. With a proper prior the variances cannot grow without bound; how does that
#    change the training results?
# 2. Train with `curvature="ggn"`. Does the LRT predictive hold up better, and why would
#    it (hint: the GGN does not vanish on well-fitted examples)?
# 3. Try variance learning rates 1x, 3x, 10x and 30x and plot test NLL of both
#    predictors against it.
# 4. The expansion's error is third order in $\sigma$. Fit a line to
#    $\log|\text{GGN ELBO} - \text{MC ELBO}|$ against $\log\sigma$ at small variances and
#    check the slope (you will need more Monte Carlo draws there).
# 5. Time one step of `GradientRegularizedELBO` against `LocalReparamELBO` at batch sizes
#    10, 100 and 1000. Where does the extra backward pass of the curvature term show?
