"""The LRT lowers the variance of the ELBO gradient (Kingma et al. 2015, Table 1) without
changing its mean."""

import functools

import pyro
import pyro.distributions as dist
import pytest
import torch
from sklearn.datasets import load_digits

import vdppl.pyro as vd

REPEATS = 200

# Noise at the level where dropout acts (Kingma et al. measure Table 1 with alpha ~ 1):
# Gaussian dropout p = 0.5, and sparse VD with log sigma^2 = -4 (log alpha ~ 0.6 for
# |theta| ~ 0.1). At the sparse-VD initialisation log sigma^2 = -10 (alpha ~ 1e-3) the noise
# barely matters and the measured ratio is only ~3x; vdppl bench variance reports it.
SETTINGS = {"gaussian-dropout-p0.5": {"fixed_alpha": 1.0}, "additive": {"init_log_sigma2": -4.0}}


@functools.cache
def gradient_draws(local_reparam: bool, setting: str) -> dict[str, torch.Tensor]:
    """``REPEATS`` draws of d loss / d theta per layer, on one fixed batch of 100 digits,
    so that all their spread comes from the estimator's noise. Cached: both tests below
    read the same draws."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    X, y = load_digits(return_X_y=True)
    x = torch.tensor(X[:100] / 16.0, dtype=torch.float32)
    y = torch.tensor(y[:100])
    net = torch.nn.Sequential(torch.nn.Linear(64, 100), torch.nn.ReLU(), torch.nn.Linear(100, 10))
    bnn = vd.bayesianize(net)

    def model(x, y):
        logits = bnn(x)
        with pyro.plate("data", 1000, subsample=torch.arange(len(x))):
            pyro.sample("y", dist.Categorical(logits=logits), obs=y)

    guide = vd.AutoVariationalDropout(model, **SETTINGS[setting])
    elbo = vd.LocalReparamELBO(local_reparam=local_reparam)
    guide(x, y)
    thetas = {
        name: pyro.param(f"AutoVariationalDropout.theta.{name}") for name in guide.dropout_sites
    }
    grads = {name: [] for name in thetas}
    for _ in range(REPEATS):
        loss = elbo.differentiable_loss(model, guide, x, y)
        for name, g in zip(thetas, torch.autograd.grad(loss, list(thetas.values()))):
            grads[name].append(g)
    pyro.clear_param_store()
    return {name: torch.stack(g).double() for name, g in grads.items()}


@pytest.mark.parametrize("setting", list(SETTINGS), ids=str)
def test_lrt_gradient_variance_at_least_5x_lower(setting):
    lrt = gradient_draws(True, setting)
    per_minibatch = gradient_draws(False, setting)
    for name in lrt:
        v_lrt, v_mb = lrt[name].var(0).sum().item(), per_minibatch[name].var(0).sum().item()
        assert v_mb >= 5 * v_lrt, (name, v_lrt, v_mb)


@pytest.mark.parametrize("setting", list(SETTINGS), ids=str)
def test_lrt_gradient_is_unbiased(setting):
    """Both estimators have the same mean: the gradient of the same expected ELBO.

    Rule, per weight: ``z = (mean_lrt - mean_mb) / se`` with
    ``se = sqrt(var_lrt / n + var_mb / n)``, n = 200 draws each, is at most the Bonferroni
    bound ``t`` for the layer's N weights at a family-wise false-alarm rate of 0.1 %,
    ``P(|Z| > t) = 0.001 / N`` for a standard normal Z (the means of 200 draws are close
    to normal): t ≈ 5.2 for the ~5,300 noisy weights of the first layer, 4.9 for the 1,000
    of the second.
    Weights whose input pixel is 0 on the whole batch have the KL's deterministic
    gradient in both estimators (se = 0): those must agree to float rounding. And, a
    check with more power against a small bias spread over many weights: the mean of
    ``z**2`` over a layer is at most 1.5, where an unbiased pair gives about 1 and a bias
    of one standard error on every weight gives 2.
    """
    lrt = gradient_draws(True, setting)
    per_minibatch = gradient_draws(False, setting)
    n = REPEATS
    for name in lrt:
        a, b = lrt[name], per_minibatch[name]
        diff = a.mean(0) - b.mean(0)
        se = (a.var(0) / n + b.var(0) / n).sqrt()
        noisy = se > 1e-9
        assert (diff[~noisy].abs() <= 1e-5).all(), name  # float32 rounding of equal numbers
        z = diff[noisy] / se[noisy]
        bound = torch.special.ndtri(torch.tensor(1 - 0.0005 / z.numel(), dtype=torch.float64))
        assert z.abs().max() <= bound, (name, z.abs().max().item(), bound.item())
        assert (z**2).mean() <= 1.5, (name, (z**2).mean().item())
