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
# # Variational dropout as SVI in Pyro
#
# **What this notebook teaches.** Dropout with Gaussian noise is approximate Bayesian
# inference, and with vdppl it is an ordinary Pyro SVI problem: a model with a
# log-uniform prior on its weights, an autoguide, and an ELBO. We go step by step:
#
# 1. Gaussian dropout: the noise rate $\alpha$ fixed (`AutoVariationalDropout(model,
#    fixed_alpha=...)`);
# 2. the log-uniform prior (`vd.LogUniform`) that makes the KL term depend on $\alpha$ only;
# 3. the local reparameterization trick (`vd.LocalReparamELBO`);
# 4. learning $\alpha$ (variational dropout [1]) and letting it grow without bound
#    (sparse variational dropout [2]);
# 5. predictive bands on a 1-D regression with a gap in the data, and what they do and
#    do not tell you;
# 6. sparsity and compression of a digit classifier (`vd.sparsity_report`, `vd.compress`).
#
# References:
#
# - [1] Kingma, Salimans, Welling (2015), *Variational Dropout and the Local
#   Reparameterization Trick*, arXiv:1506.02557.
# - [2] Molchanov, Ashukha, Vetrov (2017), *Variational Dropout Sparsifies Deep Neural
#   Networks*, arXiv:1701.05369.
# - [3] Unlu, Aitchison (2020), *Gradient Regularisation as Approximate Variational
#   Inference*, arXiv:2011.10443 (tutorial 06).
#
# Run it top to bottom; on a laptop CPU it takes a minute or two. With the environment
# variable `CI` set (as the test suite does) it runs with tiny settings in a few seconds,
# and its numbers mean nothing.

# %%
import os
import time

import matplotlib.pyplot as plt
import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from pyro.infer import SVI

import vdppl.pyro as vd
from vdppl import kl as vdkl
from vdppl.data import load
from vdppl.diagnostics import plot_log_alpha, plot_sparsity
from vdppl.pyro.ops import lrt_linear

smoke_test = "CI" in os.environ  # tiny settings when the test suite runs this notebook

TOY_STEPS = 30 if smoke_test else 1500  # full-batch SVI steps on the 1-D toy
DRAWS = 20 if smoke_test else 200  # predictive draws per band
DIGIT_EPOCHS = 2 if smoke_test else 60
KL_SAMPLES = 10_000 if smoke_test else 400_000  # Monte Carlo draws for the exact KL

pyro.set_rng_seed(0)
print(f"smoke_test={smoke_test}, torch {torch.__version__}, pyro {pyro.__version__}")

# %% [markdown]
# ## 1. Gaussian dropout is multiplicative weight noise
#
# Dropout multiplies each input unit of a layer by $\xi \sim \mathrm{Bernoulli}(1-p)/(1-p)$,
# noise of mean 1 and variance $p/(1-p)$. Gaussian dropout uses $\xi \sim
# \mathcal N(1, \alpha)$ with the same moments, $\alpha = p/(1-p)$ ($p = 0.5$ gives
# $\alpha = 1$). Multiplying the *weights* instead of the units by independent noise,
# $w_{ij} = \theta_{ij}\,\xi_{ij}$, is sampling from the factorized Gaussian
#
# $$q(w_{ij}) = \mathcal N\!\left(\theta_{ij},\; \alpha\,\theta_{ij}^2\right),$$
#
# so training with Gaussian dropout maximises $\mathbb E_q[\log p(\mathcal D \mid w)]$,
# the data term of an ELBO ([1], section 3). For this to be the *whole* ELBO, the other
# term, $-\mathrm{KL}(q \,\|\, p)$, must not depend on $\theta$, which fixes the prior.
#
# ## 2. The log-uniform prior
#
# The only prior for which $\mathrm{KL}(\mathcal N(\theta, \alpha\theta^2) \,\|\, p)$
# does not depend on $\theta$ is the scale-invariant one, uniform on $\log|w|$:
# $p(w) \propto 1/|w|$. It is improper: it has a `log_prob` but no samples.

# %%
prior = vd.LogUniform()
print("log p(w) at w = -2, 0.5:", prior.log_prob(torch.tensor([-2.0, 0.5])))  # -log|w|
try:
    prior.sample()
except RuntimeError as err:
    print(f"sample() refuses: {str(err)[:110]}...")

# %% [markdown]
# With $\varepsilon = w/\theta \sim \mathcal N(1, \alpha)$ the KL becomes a function of
# $\alpha$ alone ([1], eq. (9)), defined up to a constant because the prior is improper:
#
# $$-\mathrm{KL}(\alpha) = \tfrac12 \log\alpha - \mathbb E_{\varepsilon \sim
# \mathcal N(1,\alpha)} \log|\varepsilon| + C, \qquad C = -\tfrac{\gamma + \log 2}{2}$$
#
# (the constant makes $\mathrm{KL} \to 0$ as $\alpha \to \infty$). It has no closed form;
# the papers fit it:
#
# - [1] (cubic, valid for $\alpha \le 1$ only):
#   `-KL ≈ const + 0.5 * log_alpha + c1 * alpha + c2 * alpha**2 + c3 * alpha**3`;
# - [2] (any $\alpha$): `-KL ≈ k1 * sigmoid(k2 + k3 * log_alpha) - 0.5 * log1p(1 / alpha) - k1`.
#
# Let us compute the expectation by Monte Carlo and compare.

# %%
euler_gamma = 0.5772156649015329
log_alphas = np.linspace(-6, 6, 49)
rng = np.random.default_rng(0)
z = rng.standard_normal(KL_SAMPLES)
exact_kl = np.array(
    [
        -(
            0.5 * la
            - np.mean(np.log(np.abs(1 + np.exp(0.5 * la) * z)))
            - (euler_gamma + np.log(2)) / 2
        )
        for la in log_alphas
    ]
)
la_t = torch.as_tensor(log_alphas)
kingma = vdkl.kl_kingma(la_t).numpy()
molchanov = vdkl.kl_molchanov(la_t).numpy()

fig, ax = plt.subplots(figsize=(6, 3.5), layout="constrained")
ax.plot(log_alphas, exact_kl, "k.", label="Monte Carlo (exact up to MC error)")
ax.plot(log_alphas, molchanov, label="sigmoid fit [2]")
ax.plot(log_alphas, kingma, "--", label="cubic fit [1]")
ax.axvline(0, color="grey", lw=0.8)
ax.set(xlabel=r"$\log\alpha$", ylabel="KL per weight (nats)", ylim=(-0.2, 4))
ax.legend()
plt.show()
valid = log_alphas <= 0
print(f"max |sigmoid fit - MC| on [-6, 6]: {np.abs(molchanov - exact_kl).max():.3f} nats")
print(f"max |cubic fit - MC| on [-6, 0]:   {np.abs(kingma - exact_kl)[valid].max():.3f} nats")

# %% [markdown]
# The KL falls as $\alpha$ grows and vanishes as $\alpha \to \infty$: the prior rewards
# noise, and only the data term holds it back. This is what lets sparse variational
# dropout switch weights off ($\alpha \to \infty$ means the weight is pure noise, so it
# can be set to zero). The cubic fit diverges for $\alpha > 1$, which is why vdppl uses it
# only when $\alpha$ is bounded by 1.
#
# `vd.LogUniform` registers this KL with `torch.distributions.kl_divergence`, so Pyro's
# `TraceMeanField_ELBO` (and vdppl's ELBOs built on it) use it analytically.
#
# ## 3. A Bayesian network in Pyro
#
# The 1-D regression toy has 160 training points with a gap around 0 and a test grid that
# also covers the gap and both sides beyond the data. Inputs and targets are standardized.

# %%
toy = load("toy1d")
print(toy.description)
x_train = torch.as_tensor(toy.x_train)
y_train = torch.as_tensor(toy.y_train)
x_grid = torch.as_tensor(toy.x_test)  # sorted, evenly spaced
y_grid = toy.y_test

lo, hi = x_train.min().item(), x_train.max().item()
gap = (x_train[x_train < 0].max().item(), x_train[x_train > 0].min().item())
xs = x_grid[:, 0].numpy()
region = np.where(
    (xs < lo) | (xs > hi), "beyond the data", np.where((xs > gap[0]) & (xs < gap[1]), "gap", "data")
)


def shade(ax):
    """Grey where there are no training inputs."""
    ax.axvspan(*gap, color="grey", alpha=0.15, lw=0)
    ax.axvspan(xs[0], lo, color="grey", alpha=0.15, lw=0)
    ax.axvspan(hi, xs[-1], color="grey", alpha=0.15, lw=0)


fig, ax = plt.subplots(figsize=(6, 3), layout="constrained")
shade(ax)
ax.plot(xs, y_grid, ".", color="grey", ms=3, label="test grid (noisy)")
ax.plot(x_train[:, 0], y_train, "k.", ms=4, label="training data")
ax.set(xlabel="x (standardized)", ylabel="y (standardized)")
ax.legend()
plt.show()

# %% [markdown]
# The model is an ordinary MLP turned into a Pyro model by `vd.bayesianize`, which puts
# the log-uniform prior on every weight (sites named like the parameters, `"0.weight"`)
# and keeps the biases as point estimates. The observation noise $\sigma$ is a point
# estimate too (`pyro.param`). The plate's `subsample` argument tells Pyro how many data
# points the batch stands for, so the ELBO scales the data term against the KL for us:
#
# $$\mathrm{ELBO} = \frac{N}{|B|}\sum_{n \in B} \mathbb E_q \log
# \mathcal N\!\left(y_n \mid f_w(x_n), \sigma^2\right) - \sum_{\text{weights}}
# \mathrm{KL}(\alpha_{ij}).$$

# %%
N_TOY = len(x_train)


def make_regression_model(in_features=1, hidden=50, first_bias=True):
    net = torch.nn.Sequential(
        torch.nn.Linear(in_features, hidden, bias=first_bias),
        torch.nn.ReLU(),
        torch.nn.Linear(hidden, hidden),
        torch.nn.ReLU(),
        torch.nn.Linear(hidden, 1),
    )
    bnn = vd.bayesianize(net, prior=vd.LogUniform())

    def model(x, y=None):
        mean = pyro.deterministic("mean", bnn(x).squeeze(-1))
        sigma = pyro.param("sigma", torch.tensor(0.5), constraint=constraints.positive)
        with pyro.plate("data", N_TOY, subsample=torch.arange(len(x))):
            return pyro.sample("y", dist.Normal(mean, sigma), obs=y)

    return model, bnn


# %% [markdown]
# ## 4. The guide
#
# `AutoVariationalDropout` puts $q(w) = \mathcal N(\theta, \sigma^2)$ on every site with a
# log-uniform prior. Its means start at the network's own initial weights (an improper
# prior cannot be sampled to initialise them). With `fixed_alpha=a` it is Gaussian
# dropout: $\sigma^2 = a\,\theta^2$ and only $\theta$ is learned. We take $p = 0.2$, so
# $\alpha = p/(1-p) = 0.25$.

# %%
pyro.clear_param_store()
model, bnn = make_regression_model()
guide = vd.AutoVariationalDropout(model, fixed_alpha=0.25)
guide(x_train, y_train)  # the first call creates the parameters
for name, value in pyro.get_param_store().items():
    print(f"{name:40s} {tuple(value.shape)}")
q = guide.get_posterior("2.weight")
print(type(q).__name__, "log alpha =", q.log_alpha.flatten()[0].item(), "= log 0.25")
print("KL per weight is a constant:", vdkl.kl_kingma(torch.tensor(np.log(0.25))).item())

# %% [markdown]
# ## 5. The local reparameterization trick
#
# To estimate $\mathbb E_q[\log p(y_n \mid x_n, w)]$ we could sample a weight matrix and
# run the network. For a linear layer $b = x W^\top$ with factorized Gaussian $W$, each
# pre-activation is itself Gaussian, with
#
# ```
# mean = x @ theta.T            var = x**2 @ sigma2.T
# b    = mean + sqrt(var) * eps,    eps ~ N(0, 1) per example and unit
# ```
#
# so we can sample $b$ directly ([1], section 2.3): one independent noise draw per example
# at the price of two matrix products, and a gradient whose variance falls with the batch
# size (tutorial 03 measures it). `vd.LocalReparamELBO` is `TraceMeanField_ELBO` run under
# the `vd.local_reparam` handler, which intercepts the layers' `vd.linear` calls.
# A quick check that the two ways give the same distribution for one layer:

# %%
layer_q = guide.get_posterior("2.weight")  # 50 x 50
h = torch.rand(1, 50)  # one input vector
with torch.no_grad():
    w = layer_q.sample((5_000,))  # 5,000 weight matrices
    b_weights = torch.einsum("soi,i->so", w, h[0])
    b_lrt = lrt_linear(h.expand(5_000, 50), layer_q.loc, layer_q.variance)
    closed_mean = (h @ layer_q.loc.T)[0]
    closed_var = (h**2 @ layer_q.variance.T)[0]
for label, b in (("weight samples", b_weights), ("local reparam.", b_lrt)):
    print(
        f"{label:15s} max |mean - x@theta| = {(b.mean(0) - closed_mean).abs().max():.4f}  "
        f"max |var / (x^2@sigma2) - 1| = {(b.var(0) / closed_var - 1).abs().max():.3f}"
    )


# %% [markdown]
# ## 6. Training and predictive bands
#
# A small helper trains full-batch SVI and returns the losses; another draws from the
# posterior predictive with `vd.predict(..., mode="lrt")`: `"mean"` holds draws of the
# network's output (epistemic uncertainty only), `"y"` draws of noisy observations
# (epistemic plus the noise $\sigma$). The KL weight is warmed up from 0 to 1 over the
# first half of training, as [2] trains (this matters for sparse VD: the prior pulls
# weights to zero before the data term has shaped them).


# %%
def fit(model, guide, x, y, steps, lr=1e-2):
    elbo = vd.LocalReparamELBO()
    svi = SVI(model, guide, pyro.optim.Adam({"lr": lr}), elbo)
    losses = []
    for step in range(steps):
        elbo.kl_weight = min(1.0, step / (steps / 2))
        losses.append(svi.step(x, y) / len(x))
    return losses


def predictive(model, guide, x):
    draws = vd.predict(model, guide, x, mode="lrt", num_samples=DRAWS)
    return {name: value.numpy() for name, value in draws.items()}


def plot_band(ax, draws, title):
    shade(ax)
    for site, color, label in (
        ("y", "tab:blue", "observation"),
        ("mean", "tab:red", "mean function"),
    ):
        low, high = np.quantile(draws[site], [0.025, 0.975], axis=0)
        ax.fill_between(xs, low, high, color=color, alpha=0.25, lw=0, label=f"95% {label}")
    ax.plot(xs, draws["mean"].mean(0), color="tab:red", lw=1)
    ax.plot(x_train[:, 0], y_train, "k.", ms=3)
    ax.set(title=title, xlabel="x (standardized)", ylim=(-4, 4))


def band_widths(draws):
    """Mean width of the 95% band of the mean function, per region."""
    low, high = np.quantile(draws["mean"], [0.025, 0.975], axis=0)
    width = high - low
    return {r: width[region == r].mean() for r in ("data", "gap", "beyond the data")}


results = {}
start = time.perf_counter()
losses = fit(model, guide, x_train, y_train, TOY_STEPS)
results["Gaussian dropout, p = 0.2"] = {
    "draws": predictive(model, guide, x_grid),
    "sigma": pyro.param("sigma").item(),
}
print(f"trained in {time.perf_counter() - start:.1f} s; final loss per point {losses[-1]:.3f}")

# %% [markdown]
# Now learn $\alpha$. `noise="multiplicative"` learns $\theta$ and $\log\alpha$ per weight
# (variational dropout B of [1]); by default $\alpha \le 1$ and the KL is the cubic fit.
# Leaving the defaults (`noise="additive"`) gives sparse VD [2]: parameters $\theta$ and
# $\log\sigma^2$, with $\log\alpha = \log\sigma^2 - \log\theta^2$ unbounded (clipped at 8) and
# the sigmoid KL. The additive parameterization keeps the gradient with respect to
# $\theta$ from carrying noise of variance $\alpha\theta^2$ when $\alpha$ is large ([2],
# section 4.2).

# %%
for label, options in (
    ("variational dropout, α ≤ 1", {"noise": "multiplicative"}),
    ("sparse VD, α unbounded", {}),
):
    pyro.clear_param_store()  # the models share parameter names ("0.weight", "sigma", ...)
    model, bnn = make_regression_model()
    guide = vd.AutoVariationalDropout(model, **options)
    start = time.perf_counter()
    fit(model, guide, x_train, y_train, TOY_STEPS)
    results[label] = {
        "draws": predictive(model, guide, x_grid),
        "sigma": pyro.param("sigma").item(),
        "compression": vd.sparsity_report(guide).compression,
    }
    print(f"{label}: trained in {time.perf_counter() - start:.1f} s")

fig, axes = plt.subplots(1, 3, figsize=(13, 3.6), sharey=True, layout="constrained")
for ax, (label, result) in zip(axes, results.items(), strict=True):
    plot_band(ax, result["draws"], label)
axes[0].legend(loc="upper left", fontsize="small")
plt.show()

true_sigma = 0.15 / toy.y_std  # the generating noise, on the standardized scale
print(f"{'':30s} {'sigma':>6s}  width of the 95% band of the mean function")
print(f"{'':30s} {'':6s}  {'data':>8s} {'gap':>8s} {'beyond':>8s}")
for label, result in results.items():
    w = band_widths(result["draws"])
    print(
        f"{label:30s} {result['sigma']:6.3f}  {w['data']:8.3f} {w['gap']:8.3f} "
        f"{w['beyond the data']:8.3f}"
    )
print(f"{'(true noise)':30s} {true_sigma:6.3f}")
print(f"sparse VD keeps 1 weight in {results['sparse VD, α unbounded']['compression']:.0f}")

# %% [markdown]
# What to read from the plots and the table:
#
# - **Fixed $\alpha$ underfits.** Gaussian dropout with $p = 0.2$ cannot lower its noise,
#   so the fitted observation noise $\sigma$ absorbs the misfit and comes out well above
#   the true 0.15 / `y_std`. Learning $\alpha$ lets the model find the noise level.
# - **Beyond the data the bands widen.** Multiplicative noise on the first layer gives
#   pre-activations of variance `x**2 @ sigma2.T`, which grows with $|x|$, and the mean
#   functions of different draws fan out.
# - **In the gap they do not.** With the biases as point estimates, at $x = 0$ the first
#   layer's pre-activation variance `x**2 @ sigma2.T` is exactly zero; near the gap's middle
#   the network is nearly deterministic, however far it is from the data. A factorized
#   posterior of this kind cannot express "I have not seen inputs here" between two
#   clusters (see Foong et al. 2019, *In-Between Uncertainty in Bayesian Neural
#   Networks*, arXiv:1906.11537).
# - **Sparse VD is the most confident.** Its posterior removes most weights and leaves
#   the rest with small $\alpha$; sparsity is what it is for, not calibrated bands.
#
# A cheap experiment on the gap: give the first-layer bias a prior too, by feeding a
# constant input $[x, 1]$ into a first layer without bias. Now the pre-activation variance
# at $x = 0$ is $\sigma^2_{\text{const}} > 0$.

# %%
pyro.clear_param_store()
model, bnn = make_regression_model(in_features=2, first_bias=False)
with_one = torch.cat([x_train, torch.ones_like(x_train)], dim=1)
grid_with_one = torch.cat([x_grid, torch.ones_like(x_grid)], dim=1)
guide = vd.AutoVariationalDropout(model, noise="multiplicative")
fit(model, guide, with_one, y_train, TOY_STEPS)
draws_bias_prior = predictive(model, guide, grid_with_one)

fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharey=True, layout="constrained")
plot_band(axes[0], results["variational dropout, α ≤ 1"]["draws"], "VD, bias a point estimate")
plot_band(axes[1], draws_bias_prior, "VD, first-layer bias with a prior")
axes[0].legend(loc="upper left", fontsize="small")
plt.show()
for label, draws in (
    ("bias a point estimate", results["variational dropout, α ≤ 1"]["draws"]),
    ("bias with a prior", draws_bias_prior),
):
    w = band_widths(draws)
    print(
        f"{label:22s} data {w['data']:.3f}  gap {w['gap']:.3f}  beyond {w['beyond the data']:.3f}"
    )

# %% [markdown]
# Compare the gap column of the two rows: the band of the mean function in the gap
# should now be several times wider than before, although nothing else changed. Whether
# that width is *right* is another matter; the point is that what a variational
# posterior can say is set by its family and by which quantities get one.
#
# ## 7. Sparsity and compression on digits
#
# Sparse VD on scikit-learn's 8×8 digits (1,347 training images), minibatches of 100,
# KL warm-up over the first half of training. The likelihood is categorical; the model
# keeps the logits as a `pyro.deterministic` site so that `vd.predict` returns them.

# %%
digits = load("digits")
x_tr = torch.as_tensor(digits.x_train).flatten(1)  # (1347, 64)
y_tr = torch.as_tensor(digits.y_train)
x_te = torch.as_tensor(digits.x_test).flatten(1)
y_te = torch.as_tensor(digits.y_test)
N_DIGITS = len(x_tr)

pyro.clear_param_store()
pyro.set_rng_seed(0)
net = torch.nn.Sequential(
    torch.nn.Linear(64, 100),
    torch.nn.ReLU(),
    torch.nn.Linear(100, 100),
    torch.nn.ReLU(),
    torch.nn.Linear(100, 10),
)
digit_bnn = vd.bayesianize(net)


def digit_model(x, y=None):
    logits = pyro.deterministic("logits", digit_bnn(x))
    with pyro.plate("data", N_DIGITS, subsample=torch.arange(len(x))):
        return pyro.sample("y", dist.Categorical(logits=logits), obs=y)


digit_guide = vd.AutoVariationalDropout(digit_model)
elbo = vd.LocalReparamELBO()
svi = SVI(digit_model, digit_guide, pyro.optim.Adam({"lr": 3e-3}), elbo)
warmup = max(1, DIGIT_EPOCHS // 2)
history = {"loss": [], "kept": []}
start = time.perf_counter()
for epoch in range(DIGIT_EPOCHS):
    elbo.kl_weight = min(1.0, epoch / warmup)
    total = sum(svi.step(x_tr[b], y_tr[b]) for b in torch.randperm(N_DIGITS).split(100))
    history["loss"].append(total / N_DIGITS)
    history["kept"].append(vd.sparsity_report(digit_guide).kept)
print(f"{DIGIT_EPOCHS} epochs in {time.perf_counter() - start:.1f} s")

fig, axes = plt.subplots(1, 2, figsize=(9, 3), layout="constrained")
axes[0].plot(history["loss"])
axes[0].set(xlabel="epoch", ylabel="loss per example", yscale="log")
axes[1].plot(history["kept"])
axes[1].set(xlabel="epoch", ylabel="weights with log α < 3", yscale="log")
for ax in axes:
    ax.axvline(warmup, color="grey", ls="--", lw=0.8)  # end of the KL warm-up
plt.show()

# %% [markdown]
# The loss first *rises*: it is the negative ELBO with the KL weighted by $\beta$, and
# $\beta$ grows during the warm-up (dashed line) while the KL of 17,400 weights is still
# large. Afterwards both terms fall as weights are switched off.
#
# Pruning keeps the weights with $\log\alpha < 3$ ($\alpha \approx 20$, a dropout rate
# $p = \alpha/(1+\alpha) \approx 0.95$): a weight that noisy carries no information, and
# its mean is set to zero. `vd.sparsity_report` counts what survives per layer, and the
# compression ratio $|W| / |W \neq 0|$.

# %%
report = vd.sparsity_report(digit_guide, threshold=3.0)
print(report)
log_alpha = {name: value.numpy() for name, value in digit_guide.log_alpha().items()}
plot_log_alpha(log_alpha, threshold=3.0)
plt.show()
plot_sparsity(report)
plt.show()

# %% [markdown]
# `vd.compress` exports the pruned mean network as a plain `torch.nn.Sequential`: masked
# weights $\theta \cdot [\log\alpha < 3]$, and hidden units whose incoming or outgoing
# weights are all pruned removed (a unit with no inputs left outputs the constant
# $\mathrm{ReLU}(b)$, which is folded into the next layer's bias). Its outputs are those
# of `vd.predict(..., mode="mean")`, the sparse deterministic predictor of [2].

# %%
small = vd.compress(digit_bnn, digit_guide).eval()
print(small)
with torch.no_grad():
    small_logits = small(x_te)
mean_logits = vd.predict(digit_model, digit_guide, x_te, mode="mean")["logits"][0]
lrt_logits = vd.predict(digit_model, digit_guide, x_te, mode="lrt", num_samples=DRAWS)["logits"]
lrt_probs = torch.softmax(lrt_logits, -1).mean(0)
print(f"max |compressed - pruned mean network| = {(small_logits - mean_logits).abs().max():.2e}")
for label, scores in (
    ("compressed network", small_logits),
    ("pruned mean network", mean_logits),
    (f"LRT predictive ({DRAWS} draws)", lrt_probs),
):
    print(f"test accuracy, {label:25s} {(scores.argmax(-1) == y_te).float().mean():.3f}")
dense_params = sum(p.numel() for p in net.parameters())
small_params = sum(p.numel() for p in small.parameters())
print(f"parameters: dense {dense_params:,}, compressed module {small_params:,}")

# %% [markdown]
# The compressed module's parameter count includes the zeros that remain inside its
# (smaller) dense matrices; the report's compression counts only non-zero weights.
# Tutorial 04 does the same on MNIST with LeNet-300-100 and times the result.
#
# ## Exercises
#
# 1. Gaussian dropout: train the toy with `fixed_alpha` for $p = 0.05, 0.2, 0.5$. How do
#    the fitted $\sigma$ and the band widths change? Why does a larger $p$ not simply give
#    wider bands?
# 2. Replace the Monte Carlo KL of section 2 by numerical integration
#    (`scipy.integrate.quad` over $\varepsilon$) and find the largest error of each fit.
#    Where does the cubic fit of [1] become useless?
# 3. Variational dropout A: `AutoVariationalDropout(model, noise="multiplicative",
#    alpha_shape="unit")` learns one rate per input unit. Compare its bands and its
#    learned $\alpha$ with the per-weight rates.
# 4. Train the digit classifier without KL warm-up (`elbo.kl_weight = 1.0` from the
#    start). What happens to the compression and the accuracy? (DESIGN.md quotes numbers
#    for this data set; check them.)
# 5. Sweep the pruning threshold from $-1$ to $5$ and plot test accuracy of the pruned
#    mean network against the number of weights kept.
# 6. Give every bias a prior: write the network with constant inputs in every layer (or
#    a custom `PyroModule`) and see whether the band in the gap follows.
