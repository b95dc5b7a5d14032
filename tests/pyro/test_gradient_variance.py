"""The LRT lowers the variance of the ELBO gradient (Kingma et al. 2015, Table 1)."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from sklearn.datasets import load_digits

import vdppl.pyro as vd


def gradient_variance(local_reparam: bool, guide_options: dict, repeats: int = 200):
    """Per-layer total variance of d loss / d theta over repeated draws on one batch."""
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

    guide = vd.AutoVariationalDropout(model, **guide_options)
    elbo = vd.LocalReparamELBO(local_reparam=local_reparam)
    guide(x, y)
    thetas = {
        name: pyro.param(f"AutoVariationalDropout.theta.{name}") for name in guide.dropout_sites
    }
    grads = {name: [] for name in thetas}
    for _ in range(repeats):
        loss = elbo.differentiable_loss(model, guide, x, y)
        for name, g in zip(thetas, torch.autograd.grad(loss, list(thetas.values()))):
            grads[name].append(g)
    return {name: torch.stack(g).var(0).sum().item() for name, g in grads.items()}


# Noise at the level where dropout acts (Kingma et al. measure Table 1 with alpha ~ 1):
# Gaussian dropout p = 0.5, and sparse VD with log sigma^2 = -4 (log alpha ~ 0.6 for
# |theta| ~ 0.1). At the sparse-VD initialisation log sigma^2 = -10 (alpha ~ 1e-3) the noise
# barely matters and the measured ratio is only ~3x; vdppl bench variance reports it.
SETTINGS = {"gaussian-dropout-p0.5": {"fixed_alpha": 1.0}, "additive": {"init_log_sigma2": -4.0}}


@pytest.mark.parametrize("setting", list(SETTINGS), ids=str)
def test_lrt_gradient_variance_at_least_5x_lower(setting):
    # The same fixed batch of 100 digits, so all variance comes from the estimator's noise.
    lrt = gradient_variance(True, SETTINGS[setting])
    per_minibatch = gradient_variance(False, SETTINGS[setting])
    for name in lrt:
        assert per_minibatch[name] >= 5 * lrt[name], (name, lrt[name], per_minibatch[name])
