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
# # Predictive uncertainty with ArviZ
#
# **What this notebook teaches.** How to read the uncertainty of a network fitted with
# variational dropout, using ArviZ and `vdppl.diagnostics`:
#
# 1. turning an SVI fit into an `arviz.InferenceData` (`vd.to_inference_data`);
# 2. calibration: expected calibration error and reliability diagrams;
# 3. splitting predictive entropy into aleatoric and epistemic parts (mutual
#    information), and what each is good for;
# 4. detecting out-of-distribution inputs (Fashion-MNIST shown to an MNIST classifier);
# 5. PSIS-LOO with `az.loo`, and what a Pareto $k > 0.7$ means when the draws come from a
#    variational posterior.
#
# - [1] Kingma, Salimans, Welling (2015), *Variational Dropout and the Local
#   Reparameterization Trick*, arXiv:1506.02557.
# - [2] Molchanov, Ashukha, Vetrov (2017), *Variational Dropout Sparsifies Deep Neural
#   Networks*, arXiv:1701.05369.
# - [3] Unlu, Aitchison (2020), *Gradient Regularisation as Approximate Variational
#   Inference*, arXiv:2011.10443.
#
# Further reading: Guo et al. (2017) arXiv:1706.04599 (calibration); Depeweg et al.
# (2018) arXiv:1710.07283 (entropy decomposition); Vehtari, Gelman, Gabry (2017)
# arXiv:1507.04544 and Vehtari et al. (2024) arXiv:1507.02646 (PSIS-LOO, Pareto $k$).
#
# Full settings take one to two minutes on a laptop CPU; with `CI` set in the
# environment the notebook runs with tiny settings and its numbers mean nothing.

# %%
import os
import time
import warnings
from pathlib import Path

import arviz as az
import matplotlib.pyplot as plt
import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro.infer import SVI

import vdppl.pyro as vd
from vdppl.data import load
from vdppl.diagnostics import (
    auroc,
    classification_metrics,
    entropy_decomposition,
    plot_entropy_histograms,
    plot_reliability,
)
from vdppl.diagnostics.loo import K_THRESHOLD, elpd_loo

smoke_test = "CI" in os.environ  # tiny settings when the test suite runs this notebook

EPOCHS = 1 if smoke_test else 30
TRAIN_SUBSET = 500 if smoke_test else None  # None: all 4,000 training images
TEST_SUBSET = 200 if smoke_test else None  # None: all 1,000 test images
OOD_SIZE = 200 if smoke_test else 1000
DRAWS = 10 if smoke_test else 100  # posterior predictive draws
LOO_DRAWS = 30 if smoke_test else 200  # PSIS needs enough draws to fit a tail
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")

pyro.set_rng_seed(0)

# %% [markdown]
# ## A variational dropout classifier on MNIST
#
# LeNet-300-100 on the 5,000-image MNIST subset, with variational dropout (per-weight
# learned $\alpha \le 1$, the cubic KL of [1]): `noise="multiplicative"`. Sparse VD comes
# at the end for comparison.

# %%
mnist = load("mnist5k")
x_train = torch.as_tensor(mnist.x_train).flatten(1)[:TRAIN_SUBSET]
y_train = torch.as_tensor(mnist.y_train)[:TRAIN_SUBSET]
x_test = torch.as_tensor(mnist.x_test).flatten(1)[:TEST_SUBSET]
y_test = torch.as_tensor(mnist.y_test)[:TEST_SUBSET]
N = len(x_train)
image_shape = mnist.image_shape


def build(**guide_options):
    """A fresh LeNet-300-100 model and guide (the param store is cleared)."""
    pyro.clear_param_store()
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Linear(784, 300),
        torch.nn.ReLU(),
        torch.nn.Linear(300, 100),
        torch.nn.ReLU(),
        torch.nn.Linear(100, 10),
    )
    bnn = vd.bayesianize(net)

    def model(x, y=None):
        logits = pyro.deterministic("logits", bnn(x))
        with pyro.plate("data", N, subsample=torch.arange(len(x))):
            return pyro.sample("y", dist.Categorical(logits=logits), obs=y)

    return model, vd.AutoVariationalDropout(model, **guide_options)


def train(model, guide, epochs=EPOCHS, lr=1e-3):
    elbo = vd.LocalReparamELBO()
    svi = SVI(model, guide, pyro.optim.Adam({"lr": lr}), elbo)
    warmup = max(1, epochs // 2)
    for epoch in range(epochs):
        elbo.kl_weight = min(1.0, epoch / warmup)
        for batch in torch.randperm(N).split(100):
            svi.step(x_train[batch], y_train[batch])


start = time.perf_counter()
model, guide = build(noise="multiplicative")
train(model, guide)
print(f"trained in {time.perf_counter() - start:.0f} s")

# %% [markdown]
# ## From SVI to InferenceData
#
# ArviZ has no converter for SVI results; `vd.to_inference_data` runs the guide and the
# model draw by draw (here with local reparameterization, `mode="lrt"`) and collects:
#
# - `posterior`: draws of the smallest weight layer (a network has too many weights to
#   store them all), with named dimensions;
# - `posterior_predictive`: sampled labels `y` and the `logits` of every draw;
# - `log_likelihood`: $\log p(y_n \mid x_n, w^{(s)})$ per draw $s$ and example $n$;
# - `observed_data`, `constant_data` and a `log_alpha` group with each layer's rates.

# %%
start = time.perf_counter()
idata = vd.to_inference_data(model, guide, x_test, y_test, num_samples=DRAWS, mode="lrt")
print(f"{DRAWS} draws on {len(x_test)} test images in {time.perf_counter() - start:.1f} s")
print(idata)
print(idata.posterior_predictive["logits"].dims, idata.posterior_predictive["logits"].shape)

# %%
az.plot_posterior(
    idata,
    var_names=["4.weight"],
    coords={"4.weight_out": [0], "4.weight_in": [0, 1, 2]},
    figsize=(10, 2.5),
)
plt.show()

# %% [markdown]
# ## Calibration
#
# The predictive distribution averages the class probabilities over the posterior:
#
# $$p(y \mid x, \mathcal D) \approx \frac1S \sum_{s=1}^S \mathrm{softmax}(f_{w^{(s)}}(x)).$$
#
# A classifier is *calibrated* if, among the examples where it says "90 % sure", 90 % are
# right. The reliability diagram bins examples by confidence $\max_k p_k$ and compares
# each bin's accuracy with its mean confidence; the expected calibration error is
#
# ```
# ECE = sum_b (n_b / n) * |accuracy_b - confidence_b|
# ```
#
# We compare the Monte Carlo predictive with the deterministic mean network
# (`vd.predict(..., mode="mean")`, weights at $\theta$).

# %%
logits = torch.as_tensor(idata.posterior_predictive["logits"].values[0])  # (draws, n, 10)
prob_draws = torch.softmax(logits, -1).numpy()
mean_logits = vd.predict(model, guide, x_test, mode="mean")["logits"]
mean_probs = torch.softmax(mean_logits, -1).numpy()  # (1, n, 10)
labels = y_test.numpy()

table = {
    f"MC predictive ({DRAWS} draws)": classification_metrics(prob_draws, labels),
    "mean network": classification_metrics(mean_probs, labels),
}
print(f"{'':26s} {'accuracy':>9s} {'NLL':>7s} {'Brier':>7s} {'ECE':>7s}")
for label, m in table.items():
    print(f"{label:26s} {m['accuracy']:9.3f} {m['nll']:7.3f} {m['brier']:7.3f} {m['ece']:7.3f}")

fig, axes = plt.subplots(1, 2, figsize=(10, 4), layout="constrained")
plot_reliability(prob_draws.mean(0), labels, n_bins=10, ax=axes[0])
plot_reliability(mean_probs[0], labels, n_bins=10, ax=axes[1])
axes[0].set_title(f"MC predictive: {axes[0].get_title()}")
axes[1].set_title(f"mean network: {axes[1].get_title()}")
plt.show()

# %% [markdown]
# Bars below the diagonal are overconfident bins, bars above it underconfident ones.
# With 1,000 test images most examples sit in the top bin, and the sparse bins lower down
# are noisy: an ECE is itself an estimate, with binomial error of order
# $\sqrt{c(1-c)/n_b}$ per bin.
#
# ## Aleatoric and epistemic uncertainty
#
# The entropy of the predictive distribution splits into two parts:
#
# ```
# total     = H(mean_s p_s)            # predictive entropy
# aleatoric = mean_s H(p_s)            # expected entropy: noise each network sees
# epistemic = total - aleatoric        # mutual information I(y; w): disagreement
# ```
#
# The epistemic part is large only when the posterior draws disagree with each other;
# an input that every draw finds ambiguous (a sloppy 4 that could be a 9) has high
# aleatoric entropy instead.

# %%
parts = entropy_decomposition(prob_draws)
correct = prob_draws.mean(0).argmax(-1) == labels

fig, axes = plt.subplots(1, 2, figsize=(11, 4), layout="constrained")
for mask, color, label in ((correct, "tab:blue", "correct"), (~correct, "tab:red", "wrong")):
    axes[0].scatter(
        parts["aleatoric"][mask], parts["epistemic"][mask], s=8, alpha=0.6, c=color, label=label
    )
axes[0].set(
    xlabel="aleatoric (expected entropy, nats)", ylabel="epistemic (mutual information, nats)"
)
axes[0].legend()

# Refer the most uncertain examples to a human: accuracy on the rest.
order_frac = np.linspace(0.5, 1.0, 51)
for score, style in (("total", "-"), ("epistemic", "--")):
    order = np.argsort(parts[score])  # most certain first
    acc = [correct[order[: max(1, int(f * len(order)))]].mean() for f in order_frac]
    axes[1].plot(order_frac, acc, style, label=f"keep the lowest {score}")
axes[1].set(xlabel="fraction of test images kept", ylabel="accuracy on the kept images")
axes[1].legend()
plt.show()

top = np.argsort(parts["epistemic"])[::-1][:8]
fig, axes = plt.subplots(1, 8, figsize=(14, 2.3), layout="constrained")
for ax, i in zip(axes, top, strict=True):
    ax.imshow(x_test[i].reshape(image_shape), cmap="gray_r")
    ax.set(
        xticks=[],
        yticks=[],
        title=f"y={labels[i]} ŷ={prob_draws.mean(0)[i].argmax()}\nMI={parts['epistemic'][i]:.2f}",
    )
fig.suptitle("test images with the highest epistemic uncertainty")
plt.show()

# %% [markdown]
# ## Out-of-distribution detection: Fashion-MNIST
#
# Clothes are not digits. A good posterior should be unsure about them, and mostly
# *epistemically* unsure: the networks in the posterior have never been told what a
# sandal is, so they disagree. We score each image by its total entropy and by its mutual
# information, and measure how well each score separates Fashion-MNIST from MNIST test
# images by the AUROC (the probability that a random OOD image scores higher than a
# random MNIST one; 0.5 is chance):
#
# ```
# AUROC = mean over pairs (i in, o out) of 1[s_o > s_i] + 0.5 * 1[s_o == s_i]
# ```

# %%
have_fashion = FASHION_DIR.is_dir() and any(FASHION_DIR.iterdir())
if have_fashion:
    fashion = load("fashion-mnist")
    x_ood = torch.as_tensor(fashion.x_test[:OOD_SIZE]).flatten(1)
    ood_logits = vd.predict(
        model, guide, x_ood, mode="lrt", num_samples=DRAWS, return_sites=["logits"]
    )
    ood_parts = entropy_decomposition(torch.softmax(ood_logits["logits"], -1).numpy())
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), layout="constrained")
    for ax, score in zip(axes, ("total", "epistemic"), strict=True):
        plot_entropy_histograms(
            parts[score],
            ood_parts[score],
            ax=ax,
            labels=("MNIST test", "Fashion-MNIST test"),
            xlabel=f"{score} entropy (nats)",
        )
    plt.show()
    for score in ("total", "aleatoric", "epistemic"):
        print(f"AUROC by {score:9s} entropy: {auroc(parts[score], ood_parts[score]):.3f}")
else:
    print(
        f"Fashion-MNIST not found in {FASHION_DIR}: skipping OOD detection. "
        "Install it with `apt-get install dataset-fashion-mnist`."
    )

# %% [markdown]
# ## PSIS-LOO and Pareto $k$
#
# Leave-one-out cross-validation estimates how well the model predicts a new point,
# $\mathrm{elpd} = \sum_n \log p(y_n \mid x_n, \mathcal D_{-n})$, without refitting: PSIS
# reweights the posterior draws $w^{(s)}$ by $r_s \propto 1 / p(y_n \mid x_n, w^{(s)})$,
# which turns draws from $p(w \mid \mathcal D)$ into draws from $p(w \mid \mathcal
# D_{-n})$, and smooths the largest weights with a fitted generalized Pareto tail. The
# tail's shape $k$ says whether the weights have finite variance: for $k > 0.7$ the
# estimate for that point is unreliable.
#
# LOO is about the *training* data, so we build a second InferenceData on the training
# set. Each point's log-likelihood under local-reparameterization draws has the same
# distribution as under sampled weights, and PSIS-LOO works one point at a time, so LRT
# draws are fine here.

# %%
start = time.perf_counter()
idata_train = vd.to_inference_data(
    model, guide, x_train, y_train, num_samples=LOO_DRAWS, mode="lrt", include_x=False
)
print(
    f"log-likelihood of {N} training points x {LOO_DRAWS} draws in {time.perf_counter() - start:.1f} s"
)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    loo = elpd_loo(idata_train)
for w in caught:
    print("warning:", w.message)
print({k: round(v, 3) for k, v in loo.items()})
test_lpd = np.log(prob_draws.mean(0)[np.arange(len(labels)), labels]).mean()
print(f"elpd_loo per training point: {loo['elpd_loo'] / loo['n']:.3f}")
print(f"log predictive density per test point: {test_lpd:.3f}")

# %% [markdown]
# Compare the two printed numbers. If the variational posterior were the posterior,
# `elpd_loo` per point would estimate the log predictive density of new data, which the
# test set measures directly. A large gap, with LOO the more optimistic, means the
# importance weights could not undo how closely the fit hugs each training point, and
# the Pareto $k$ values say so point by point. ArviZ's own summary:

# %%
with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # az.loo warns about high k; we look at them below
    loo_az = az.loo(idata_train, pointwise=True)
print(loo_az)
k32 = np.asarray(loo_az.pareto_k)
log_lik = idata_train.log_likelihood["y"].values[0]  # (draws, n), float32
saturated = np.isinf(k32)
print(f"{saturated.sum()} points have k = inf")
if saturated.any():
    print(
        f"their largest |log p(y_n | w)| over all draws: {np.abs(log_lik[:, saturated]).max():.1e}"
    )

# %% [markdown]
# Points with $k = \infty$ are, perhaps surprisingly, the *best* fitted ones: the
# log-likelihood is stored in float32, and when $p(y_n \mid x_n, w) \approx 1$ it takes
# only a few distinct values next to 0 (in most draws exactly 0). The importance ratios
# are then constant up to rounding, and the tail fit degenerates. Recomputing the log-likelihood in float64 from
# the stored logits removes these artefacts:

# %%
logits64 = torch.as_tensor(idata_train.posterior_predictive["logits"].values).double()
index = y_train.view(1, 1, -1, 1).expand(*logits64.shape[:3], 1)
log_lik64 = torch.log_softmax(logits64, -1).gather(-1, index)[..., 0]  # (chain, draw, n)
idata_train.log_likelihood["y"] = (idata_train.log_likelihood["y"].dims, log_lik64.numpy())
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    loo_az = az.loo(idata_train, pointwise=True)
k = np.asarray(loo_az.pareto_k)
print(f"float64: {np.isinf(k).sum()} points with k = inf, elpd_loo {loo_az.elpd_loo:.2f}")
print(f"ArviZ's threshold for {LOO_DRAWS} draws, min(1 - 1/log10(S), 0.7): {loo_az.good_k:.2f}")
for threshold in (loo_az.good_k, K_THRESHOLD):
    print(f"share of points with k > {threshold:.2f}: {np.mean(k > threshold):.1%}")
fig, axes = plt.subplots(1, 2, figsize=(11, 3.5), layout="constrained", width_ratios=(2, 1))
az.plot_khat(loo_az, ax=axes[0], show_bins=True)
axes[1].hist(k[np.isfinite(k)], bins=40)
axes[1].axvline(K_THRESHOLD, color="tab:red", ls="--", label="0.7")
axes[1].axvline(loo_az.good_k, color="tab:orange", ls=":", label=f"{loo_az.good_k:.2f}")
axes[1].set(xlabel="Pareto k", ylabel="training points")
axes[1].legend()
plt.show()

train_probs = torch.softmax(
    torch.as_tensor(idata_train.posterior_predictive["logits"].values[0]), -1
).mean(0)
p_true = train_probs[torch.arange(N), y_train].numpy()
finite = np.isfinite(k)
print(
    f"mean p(y_n | x_n) of the training points: k > 0.7: {p_true[finite & (k > 0.7)].mean():.3f}, "
    f"k <= 0.7: {p_true[finite & (k <= 0.7)].mean():.3f}"
)
worst = np.argsort(np.where(finite, k, -np.inf))[::-1][:8]
fig, axes = plt.subplots(1, 8, figsize=(14, 2.3), layout="constrained")
for ax, i in zip(axes, worst, strict=True):
    ax.imshow(x_train[i].reshape(image_shape), cmap="gray_r")
    ax.set(
        xticks=[],
        yticks=[],
        title=f"y={y_train[i].item()} p(y)={p_true[i]:.2f}\nk={k[i]:.2f}",
    )
fig.suptitle("training points with the largest Pareto k")
plt.show()

# %% [markdown]
# What $k > 0.7$ means here. PSIS-LOO assumes the draws come from the posterior. Ours
# come from the variational posterior $q$, which is narrower than the true posterior and
# shaped differently, so the importance ratios $r_s \propto 1/p(y_n \mid x_n, w^{(s)})$
# are asked to correct for two things at once: leaving the point out, and $q \neq
# p(w \mid \mathcal D)$, which PSIS-LOO knows nothing about. A large $k$ means the ratios
# have so heavy a tail that their average is dominated by a few draws, and the point's
# LOO estimate cannot be trusted; with a large share of such points the sum `elpd_loo`
# cannot either (`vdppl.diagnostics.loo.elpd_loo` warns with the share). Look at the
# printed mean $p(y_n \mid x_n)$ of the two groups and at the images to see which points
# these are in your run. When the share is not small, compare models by held-out log
# predictive density instead; more draws only help when $k$ is moderate.
#
# The threshold 0.7 is the asymptotic one. With $S$ draws, Vehtari et al. (2024)
# recommend $\min(1 - 1/\log_{10} S,\ 0.7)$, which ArviZ reports as `good_k` (0.57 for
# 200 draws); `elpd_loo` counts against 0.7, so it is the more lenient of the two.
#
# ## Sparse VD for comparison
#
# The same network with sparse VD's unbounded $\alpha$ (`noise="additive"`, the default).
# Pruning removes most weights; what happens to calibration and OOD detection?

# %%
start = time.perf_counter()
model, guide = build()  # sparse VD: theta, log sigma^2, unbounded alpha
train(model, guide)
sparse_logits = vd.predict(
    model, guide, x_test, mode="lrt", num_samples=DRAWS, return_sites=["logits"]
)
sparse_draws = torch.softmax(sparse_logits["logits"], -1).numpy()
table["sparse VD, MC predictive"] = classification_metrics(sparse_draws, labels)
print(
    f"trained and evaluated in {time.perf_counter() - start:.0f} s; {vd.sparsity_report(guide).compression:.0f}x compression"
)
sparse_parts = entropy_decomposition(sparse_draws)
if have_fashion:
    sparse_ood = vd.predict(
        model, guide, x_ood, mode="lrt", num_samples=DRAWS, return_sites=["logits"]
    )
    sparse_ood_parts = entropy_decomposition(torch.softmax(sparse_ood["logits"], -1).numpy())
    for name, (ind, ood) in {
        "variational dropout": (parts, ood_parts),
        "sparse VD": (sparse_parts, sparse_ood_parts),
    }.items():
        print(
            f"{name:20s} OOD AUROC: total {auroc(ind['total'], ood['total']):.3f}, "
            f"epistemic {auroc(ind['epistemic'], ood['epistemic']):.3f}"
        )
print(f"{'':26s} {'accuracy':>9s} {'NLL':>7s} {'ECE':>7s} {'mean MI':>8s}")
for label, m in table.items():
    print(
        f"{label:26s} {m['accuracy']:9.3f} {m['nll']:7.3f} {m['ece']:7.3f} {m['entropy_epistemic']:8.4f}"
    )

# %% [markdown]
# Compare the rows: on this small training set sparse VD pays for its compression in
# accuracy and NLL, and its surviving weights have small $\alpha$, so its draws agree
# more and the average epistemic part is smaller. Whether that hurts OOD detection is a
# separate question: a mutual information that is smaller everywhere can still *rank*
# inputs well, and AUROC only looks at the ranking. Compare the two AUROC lines.
#
# ## Exercises
#
# 1. Repeat the calibration with `mode="mc"` (one weight sample per draw) instead of
#    `"lrt"`. Are the metrics the same? Should they be?
# 2. How many draws does the ECE need? Plot it against `num_samples` from 1 to 200.
# 3. Use the mean network's max-probability as the OOD score (no sampling at all). How
#    much of the AUROC is owed to the posterior?
# 4. Train on a third of the training set. Does the epistemic part grow on the test set,
#    as it should when the data say less?
# 5. Compute `az.waic(idata_train)` and compare it with LOO. Which points dominate the
#    difference?
# 6. Refit the model without the training point with the largest $k$ (a few epochs from
#    the current fit are enough for a rough answer) and compare its exact leave-one-out
#    log predictive density with the PSIS estimate.
