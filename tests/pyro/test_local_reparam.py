"""Local reparameterization: moments in closed form and by sampling, and its plumbing."""

import pyro
import pyro.distributions as dist
import pytest
import torch
import torch.nn.functional as F
from pyro import poutine
from pyro.infer import SVI

import vdppl.pyro as vd
from vdppl.pyro import ops
from vdppl.pyro.distributions import DropoutNormal

from .conftest import assert_close

# (module, input shape): dense and conv 1d/2d/3d with stride, padding, dilation, groups
LAYERS = {
    "linear": (lambda: torch.nn.Linear(5, 3), (2, 5)),
    "conv1d": (lambda: torch.nn.Conv1d(2, 4, 3, stride=2, padding=1), (2, 2, 9)),
    "conv2d-dilation-groups": (
        lambda: torch.nn.Conv2d(4, 6, 3, padding=2, dilation=2, groups=2),
        (2, 4, 6, 6),
    ),
    "conv2d-same": (lambda: torch.nn.Conv2d(3, 2, 3, padding="same"), (1, 3, 5, 5)),
    "conv3d": (lambda: torch.nn.Conv3d(2, 3, 2, stride=(1, 2, 1)), (1, 2, 4, 4, 3)),
}


#: Guide options: sparse VD, learned multiplicative rates per weight and per input unit,
#: and Gaussian dropout with a fixed rate.
NOISE = {
    "additive": {},
    "multiplicative-weight": {"noise": "multiplicative"},
    "multiplicative-unit": {"noise": "multiplicative", "alpha_shape": "unit"},
    "fixed-alpha": {"fixed_alpha": 0.3},
}


def input_channel(shape, groups):
    """Input channel read by each weight of ``(out, in/groups, *kernel)``, as a tensor."""
    out, per_group = shape[0], shape[1]
    o = torch.arange(out).reshape(-1, 1)
    j = torch.arange(per_group).reshape(1, -1)
    return ((o // (out // groups)) * per_group + j).reshape(
        out, per_group, *(1,) * (len(shape) - 2)
    )


def fitted_layer(make, noise="additive"):
    """A one-layer bayesianized module and a guide with random theta and dropout rates.

    Returns ``theta`` and the weight variance ``sigma2`` computed here from the
    parameters: ``exp(log_sigma2)`` (additive), ``alpha * theta**2`` (multiplicative and
    fixed alpha), with "unit" rates laid out over the layer's input channels.
    """
    bnn = vd.bayesianize(make())

    def model(x):
        return bnn(x)

    guide = vd.AutoVariationalDropout(model, **NOISE[noise])
    x0 = torch.randn(LAYERS_BY_FN[make][1])
    guide(x0)
    store = pyro.get_param_store()
    theta = store["AutoVariationalDropout.theta.weight"].detach()
    if noise == "additive":
        name = "AutoVariationalDropout.log_sigma2.weight"
        store[name] = torch.empty_like(store[name]).uniform_(-5, 0)
        return bnn, model, guide, theta, store[name].detach().exp()
    if noise == "fixed-alpha":
        return bnn, model, guide, theta, 0.3 * theta**2
    name = "AutoVariationalDropout.log_alpha_param.weight"
    store[name] = torch.empty_like(store[name]).uniform_(-3, -0.1)
    log_alpha = store[name].detach()
    if noise == "multiplicative-unit" and theta.dim() > 1:
        groups = getattr(bnn, "groups", 1)
        log_alpha = log_alpha.reshape(-1)[input_channel(theta.shape, groups)]
    return bnn, model, guide, theta, log_alpha.exp() * theta**2


LAYERS_BY_FN = {make: (make, shape) for make, shape in LAYERS.values()}


def lrt_run(model, guide, x):
    with vd.local_reparam():
        guide_trace = poutine.trace(guide).get_trace(x)
        return poutine.replay(model, trace=guide_trace)(x)


def reference_moments(layer, x, theta, sigma2):
    """Closed form written independently of vdppl: mean x*mu + b, variance x^2*sigma^2."""
    bias = layer.bias.detach()
    if theta.dim() == 2:
        return x @ theta.T + bias, (x**2) @ sigma2.T
    n = theta.dim() - 2
    conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[n]
    kw = dict(
        stride=layer.stride, padding=layer.padding, dilation=layer.dilation, groups=layer.groups
    )
    return conv(x, theta, bias, **kw), conv(x**2, sigma2, None, **kw)


@pytest.mark.parametrize("noise", list(NOISE), ids=str)
@pytest.mark.parametrize("name", list(LAYERS), ids=str)
def test_lrt_moments_closed_form(name, noise, monkeypatch):
    make, shape = LAYERS[name]
    bnn, model, guide, theta, sigma2 = fitted_layer(make, noise)
    x = torch.randn(shape)
    mean, var = reference_moments(bnn, x, theta, sigma2)
    monkeypatch.setattr(ops, "_standard_normal", torch.zeros_like)
    assert_close(lrt_run(model, guide, x), mean, atol=1e-5)
    monkeypatch.setattr(ops, "_standard_normal", torch.ones_like)
    out = lrt_run(model, guide, x)
    assert_close((out - mean) ** 2 - ops.LRT_EPS, var, atol=1e-5, rtol=1e-4)


# Every layer with sparse VD's noise; the other noise modes on the dense layer only (their
# variance formulas, the grouped "unit" layout included, are checked on every layer by
# the closed-form test above; a draw loop over conv weights costs seconds per case).
SAMPLED = [(name, "additive") for name in LAYERS] + [
    ("linear", noise) for noise in NOISE if noise != "additive"
]


@pytest.mark.parametrize("name,noise", SAMPLED, ids=str)
def test_lrt_moments_match_weight_sampling(name, noise):
    """By sampling: LRT draws and explicit weight draws have the closed-form moments.

    S = 4000 draws each. Tolerance 5 standard errors per element (mean: sqrt(v / S);
    variance of a Gaussian sample: v * sqrt(2 / (S - 1))), so a correct implementation
    fails with probability ~1e-6 per element.
    """
    make, shape = LAYERS[name]
    bnn, model, guide, theta, sigma2 = fitted_layer(make, noise)
    x = torch.randn(shape)
    mean, var = reference_moments(bnn, x, theta, sigma2)
    var = var + ops.LRT_EPS
    S = 4000
    lrt = lrt_run(model, guide, x.repeat((S,) + (1,) * (x.dim() - 1)))
    lrt = lrt.reshape((S,) + mean.shape)
    weights = theta + sigma2.sqrt() * torch.randn((S,) + theta.shape)
    sampled = torch.stack(
        [
            ops.conv(x, w, bnn.bias, bnn.stride, bnn.padding, bnn.dilation, bnn.groups)
            if theta.dim() > 2
            else ops.linear(x, w, bnn.bias)
            for w in weights
        ]
    )
    for draws in (lrt, sampled):
        se_mean = (var / S).sqrt()
        se_var = var * (2 / (S - 1)) ** 0.5
        assert ((draws.mean(0) - mean).abs() <= 5 * se_mean + 1e-6).all()
        assert ((draws.var(0) - var).abs() <= 5 * se_var + 1e-6).all()


def test_lrt_never_samples_weights(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("a weight tensor was sampled under local reparameterization")

    monkeypatch.setattr(DropoutNormal, "rsample", forbidden)
    bnn = vd.bayesianize(
        torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    )

    def model(x, y):
        logits = bnn(x)
        with pyro.plate("data", 10, subsample=torch.arange(len(x))):
            pyro.sample("y", dist.Categorical(logits=logits), obs=y)

    guide = vd.AutoVariationalDropout(model)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 1e-2}), vd.LocalReparamELBO())
    svi.step(torch.randn(5, 4), torch.randint(0, 2, (5,)))  # does not raise
    with pytest.raises(AssertionError, match="was sampled"):
        SVI(model, guide, pyro.optim.Adam({}), vd.LocalReparamELBO(local_reparam=False)).step(
            torch.randn(5, 4), torch.randint(0, 2, (5,))
        )


def test_deferred_site_used_outside_the_primitive_is_an_error():
    def model(x):
        w = pyro.sample(
            "w",
            vd.LogUniform().expand([3, 2]).to_event(2),
            infer={"vdppl_init": torch.ones(3, 2), "local_reparam": True},
        )
        return x @ w  # not through vdppl.pyro.ops.linear

    guide = vd.AutoVariationalDropout(model)
    with pytest.raises(RuntimeError, match="never passed them to vdppl.pyro.ops"):
        lrt_run(model, guide, torch.randn(4, 3))


def test_transformed_weight_is_an_error():
    def model(x):
        w = pyro.sample(
            "w",
            vd.LogUniform().expand([2, 3]).to_event(2),
            infer={"vdppl_init": torch.ones(2, 3), "local_reparam": True},
        )
        return vd.linear(x, 2 * w, name="w")

    guide = vd.AutoVariationalDropout(model)
    with pytest.raises(RuntimeError, match="not the value of that sample site"):
        lrt_run(model, guide, torch.randn(4, 3))


def test_without_the_handler_the_primitives_are_plain_torch():
    x, w, b = torch.randn(3, 4), torch.randn(5, 4), torch.randn(5)
    assert_close(vd.linear(x, w, b), F.linear(x, w, b))
    x, w = torch.randn(1, 2, 6, 6), torch.randn(3, 2, 3, 3)
    assert_close(vd.conv(x, w, None, 1, 1), F.conv2d(x, w, None, 1, 1))


def test_lrt_noise_is_independent_per_example():
    bnn, model, guide, theta, sigma2 = fitted_layer(LAYERS["linear"][0])
    x = torch.randn(1, 5).repeat(2, 1)
    out = lrt_run(model, guide, x)
    assert not torch.equal(out[0], out[1])
