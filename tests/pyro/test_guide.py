import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import SVI, TraceMeanField_ELBO
from pyro.infer.autoguide import AutoNormal

import vdppl.pyro as vd
from vdppl import kl as vdkl
from vdppl.pyro.distributions import ImproperPriorError

from .conftest import assert_close


def make_model():
    bnn = vd.bayesianize(
        torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 3))
    )

    def model(x, y=None):
        logits = bnn(x)
        noise = pyro.sample("noise", dist.LogNormal(0.0, 1.0))  # a non-LogUniform site
        shift = pyro.sample("shift", dist.Normal(torch.zeros(3), 1.0).to_event(1))
        with pyro.plate("data", 50, subsample=torch.arange(len(x))):
            pyro.sample("y", dist.Normal(logits + shift, noise).to_event(1), obs=y)

    return bnn, model


def test_sites_and_shapes_match_autonormal():
    bnn, model = make_model()
    x, y = torch.randn(5, 4), torch.randn(5, 3)
    guide = vd.AutoVariationalDropout(model)
    reference = AutoNormal(model, init_loc_fn=vd.init_to_module)
    ours = poutine.trace(guide).get_trace(x, y)
    theirs = poutine.trace(reference).get_trace(x, y)
    ours_sites = {n: s["value"].shape for n, s in ours.nodes.items() if s["type"] == "sample"}
    theirs_sites = {
        n: s["value"].shape
        for n, s in theirs.nodes.items()
        if s["type"] == "sample" and not s["infer"].get("is_auxiliary")
    }
    assert ours_sites == theirs_sites
    assert guide.dropout_sites == ["0.weight", "2.weight"]


def test_initial_means_are_the_module_weights():
    net = torch.nn.Sequential(torch.nn.Linear(3, 2))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0, -2.0, 3.0], [0.5, 0.0, -1.0]]))
    bnn = vd.bayesianize(net)
    guide = vd.AutoVariationalDropout(lambda x: bnn(x))
    guide(torch.randn(1, 3))
    assert_close(guide.median()["0.weight"], net[0].weight)
    assert_close(
        pyro.param("AutoVariationalDropout.log_sigma2.0.weight"), torch.full((2, 3), -10.0)
    )


@pytest.mark.parametrize(
    "alpha_shape,expected", [("weight", (6, 4)), ("unit", (1, 4)), ("layer", (1, 1))], ids=str
)
def test_multiplicative_alpha_shapes(alpha_shape, expected):
    bnn, model = make_model()
    guide = vd.AutoVariationalDropout(model, noise="multiplicative", alpha_shape=alpha_shape)
    guide(torch.randn(5, 4), torch.randn(5, 3))
    assert pyro.param("AutoVariationalDropout.log_alpha_param.0.weight").shape == expected
    la = guide.log_alpha()["0.weight"]
    assert la.shape == (6, 4) and la.max() <= 0.0  # alpha <= 1 by default
    assert guide.kl_approximation == "kingma"
    fn = guide.get_posterior("0.weight")
    assert_close(fn.scale**2, la.exp() * fn.loc**2, atol=1e-7)


def test_unbounded_multiplicative_uses_molchanov():
    _, model = make_model()
    guide = vd.AutoVariationalDropout(model, noise="multiplicative", max_log_alpha=None)
    assert guide.kl_approximation == "molchanov"


def test_fixed_alpha_is_gaussian_dropout():
    _, model = make_model()
    guide = vd.AutoVariationalDropout(model, fixed_alpha=0.25)
    guide(torch.randn(5, 4), torch.randn(5, 3))
    assert guide.noise == "multiplicative"
    assert not any("log_alpha" in k or "log_sigma2" in k for k in pyro.get_param_store().keys())
    assert_close(guide.log_alpha()["2.weight"], torch.full((3, 6), math.log(0.25)))


def test_additive_log_alpha_and_mask():
    _, model = make_model()
    guide = vd.AutoVariationalDropout(model)
    guide(torch.randn(5, 4), torch.randn(5, 3))
    theta = pyro.param("AutoVariationalDropout.theta.0.weight")
    log_sigma2 = pyro.param("AutoVariationalDropout.log_sigma2.0.weight")
    with torch.no_grad():
        log_sigma2[:3] = 5.0  # huge noise: these rows get pruned
    expected = vdkl.log_alpha_from_sigma2(theta, log_sigma2)
    assert_close(guide.log_alpha()["0.weight"], expected)
    mask = guide.mask()["0.weight"]
    assert torch.equal(mask, expected < 3.0) and not mask[:3].any() and mask[3:].all()
    pruned = guide.pruned_median()["0.weight"]
    assert (pruned[:3] == 0).all() and torch.equal(pruned[3:], theta[3:].detach())


def test_median_and_quantiles():
    _, model = make_model()
    guide = vd.AutoVariationalDropout(model)
    guide(torch.randn(5, 4), torch.randn(5, 3))
    q = guide.quantiles([0.1, 0.5, 0.9])
    med = guide.median()
    for name in med:
        assert_close(q[name][1], med[name], atol=1e-6)
        assert (q[name][0] <= q[name][2]).all()
    assert (med["noise"] > 0).all()  # constrained site, transformed back


def test_kl_is_analytic_for_dropout_sites():
    # ELBO with no data term equals -sum KL computed from vdppl.kl directly.
    bnn = vd.bayesianize(torch.nn.Linear(3, 2))

    def model(x):
        bnn(x)

    guide = vd.AutoVariationalDropout(model)
    guide(torch.randn(1, 3))
    loss = vd.LocalReparamELBO().loss(model, guide, torch.randn(1, 3))
    la = guide.log_alpha()["weight"]
    assert loss == pytest.approx(vdkl.kl_molchanov(la).sum().item(), rel=1e-5)
    assert TraceMeanField_ELBO().loss(model, guide, torch.randn(1, 3)) == pytest.approx(
        loss, rel=1e-5
    )


def dense_regression(deterministic=False):
    """A 3-2 Bayesian linear layer with a Normal likelihood, its guide (set up) and data."""
    bnn = vd.bayesianize(torch.nn.Linear(3, 2))
    x, y = torch.randn(4, 3), torch.randn(4, 2)

    def model(x, y):
        out = bnn(x)
        if deterministic:
            out = pyro.deterministic("out", out)
        with pyro.plate("data", 4):
            pyro.sample("y", dist.Normal(out, 1.0).to_event(1), obs=y)

    guide = vd.AutoVariationalDropout(model)
    guide(x, y)
    return model, guide, x, y


def test_deterministic_sites_are_not_scored(monkeypatch):
    # pyro.deterministic records a masked Delta that counts as observed; its log density
    # is 0, so the ELBO skips it instead of computing it.
    model, guide, x, y = dense_regression(deterministic=True)
    pyro.set_rng_seed(1)
    expected = vd.LocalReparamELBO().loss(model, guide, x, y)

    def forbidden(self, value):
        raise AssertionError("the log density of a pyro.deterministic site was computed")

    monkeypatch.setattr(dist.Delta, "log_prob", forbidden)
    pyro.set_rng_seed(1)
    assert vd.LocalReparamELBO().loss(model, guide, x, y) == expected


def test_kl_weight_scales_only_the_kl():
    model, guide, x, y = dense_regression()
    pyro.set_rng_seed(1)
    full = vd.LocalReparamELBO().loss(model, guide, x, y)
    pyro.set_rng_seed(1)
    data_only = vd.LocalReparamELBO(kl_weight=0.0).loss(model, guide, x, y)
    kl = vdkl.kl_molchanov(guide.log_alpha()["weight"]).sum().item()
    assert full - data_only == pytest.approx(kl, rel=1e-4)


def test_trains_with_svi():
    bnn, model = make_model()
    guide = vd.AutoVariationalDropout(model)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 1e-2}), vd.LocalReparamELBO())
    x = torch.randn(50, 4)
    y = torch.randn(50, 3)
    losses = [svi.step(x, y) for _ in range(200)]
    assert sum(losses[-20:]) < sum(losses[:20])


@pytest.mark.parametrize(
    "options,match",
    [
        ({"noise": "gaussian"}, "noise must be one of"),
        ({"alpha_shape": "row"}, "alpha_shape must be one of"),
        ({"alpha_shape": "unit"}, "needs noise='multiplicative'"),
        ({"noise": "additive", "fixed_alpha": 0.5}, "use noise='multiplicative'"),
        ({"fixed_alpha": -1.0}, "Expected fixed_alpha > 0"),
        ({"fixed_alpha": float("nan")}, "Expected fixed_alpha > 0"),
        ({"noise": "multiplicative", "max_log_alpha": 9.0}, "max_log_alpha must be in"),
        ({"init_log_sigma2": 10.0}, "init_log_sigma2 must be a number in"),
        ({"init_log_sigma2": -100.0}, "init_log_sigma2 must be a number in"),
        ({"init_scale": 0.0}, "Expected init_scale > 0"),
        ({"init_scale": float("inf")}, "Expected init_scale > 0 and finite"),
        ({"init_scale": True}, "Expected init_scale > 0"),
        ({"fixed_alpha": 0.5, "alpha_shape": "unit"}, "has no effect with fixed_alpha"),
        ({"max_log_alpha": 2.0}, "additive noise .* leaves alpha unbounded"),
        ({"fixed_alpha": 0.5, "max_log_alpha": -1.0}, "fixed_alpha freezes alpha"),
    ],
    ids=str,
)
def test_bad_options(options, match):
    _, model = make_model()
    with pytest.raises(ValueError, match=match):
        vd.AutoVariationalDropout(model, **options)


def test_numbers_of_any_real_type_are_accepted():
    _, model = make_model()
    guide = vd.AutoVariationalDropout(
        model,
        noise="multiplicative",
        max_log_alpha=np.float32(-0.5),
        init_log_sigma2=np.int64(-8),
        init_scale=1,
    )
    assert guide.max_log_alpha == -0.5 and guide.init_log_sigma2 == -8.0
    assert vd.AutoVariationalDropout(model, fixed_alpha=np.float64(0.25)).fixed_alpha == 0.25
    # the defaults (0.0) and None mean "no bound to set" for additive noise and fixed alpha
    vd.AutoVariationalDropout(model, max_log_alpha=None)
    vd.AutoVariationalDropout(model, fixed_alpha=1.0, max_log_alpha=None)


def regression(n=200):
    """y = x @ (1, -2, 0.5) + N(0, 0.1^2): data that want a small dropout rate."""
    net = torch.nn.Linear(3, 1, bias=False)
    with torch.no_grad():
        net.weight.copy_(torch.tensor([[1.0, -2.0, 0.5]]))
    bnn = vd.bayesianize(net)
    x = torch.randn(n, 3)
    y = x @ torch.tensor([1.0, -2.0, 0.5]) + 0.1 * torch.randn(n)

    def model(x, y=None):
        out = bnn(x).squeeze(-1)
        if y is not None:
            with pyro.plate("data", len(x)):
                pyro.sample("y", dist.Normal(out, 0.1), obs=y)

    return model, x, y


LOG_ALPHA = "AutoVariationalDropout.log_alpha_param.weight"


def test_bounded_log_alpha_has_the_gradient_of_its_interval_near_the_bound():
    # log_alpha = -8 + 8 * sigmoid(u) on (-8, 0), so d/du = (log_alpha + 8) * (0 - log_alpha) / 8:
    # small near the bound but not 0, unlike a clamp's. Without data the loss is the KL of
    # the 3 weights, 3 * kl_kingma(log_alpha), whose derivative is written out here.
    model, x, _ = regression()
    guide = vd.AutoVariationalDropout(model, noise="multiplicative", alpha_shape="layer")
    guide(x)
    assert guide.log_alpha()["weight"].max() < 0  # the initial value is inside the interval
    for la in (-1e-2, -1.0):
        pyro.get_param_store()[LOG_ALPHA] = torch.full((1, 1), la)
        loss = vd.LocalReparamELBO().differentiable_loss(model, guide, x)
        la = pyro.param(LOG_ALPHA).item()  # as float32 stores it
        u = pyro.param(LOG_ALPHA).unconstrained()  # the leaf the guide used
        (grad,) = torch.autograd.grad(loss, [u])
        a = math.exp(la)
        dkl = -(0.5 + vdkl.C1 * a + 2 * vdkl.C2 * a**2 + 3 * vdkl.C3 * a**3)
        expected = 3 * dkl * (la + 8) * (0 - la) / 8
        assert grad.item() != 0
        assert grad.item() == pytest.approx(expected, rel=1e-4)  # float32 rounding


def test_log_alpha_comes_back_from_the_bound():
    # The KL alone pushes alpha up to its bound (alpha = 1); a clamp would then have a zero
    # gradient and alpha would stay there. Here the data bring it back down.
    model, x, y = regression()
    guide = vd.AutoVariationalDropout(model, noise="multiplicative", alpha_shape="layer")
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.1}), vd.LocalReparamELBO())
    for _ in range(150):
        svi.step(x)  # no data: KL only
    at_bound = guide.log_alpha()["weight"].max().item()
    assert -0.1 < at_bound < 0  # alpha above 0.9
    for _ in range(150):
        svi.step(x, y)
    # the data (noise sd 0.1 on 200 points) want alpha far below 1
    assert guide.log_alpha()["weight"].max().item() < -2


def test_unit_alpha_of_a_grouped_conv_is_one_per_input_channel():
    conv = torch.nn.Conv2d(4, 6, 3, groups=2)  # weight (6, 2, 3, 3): 3 outputs per group
    bnn = vd.bayesianize(conv)
    guide = vd.AutoVariationalDropout(
        lambda x: bnn(x), noise="multiplicative", alpha_shape="unit", init_log_sigma2=-12.0
    )
    guide(torch.randn(1, 4, 5, 5))
    assert guide.groups == {"weight": 2}
    # weight [o, j] reads input channel (o // 3) * 2 + j; each channel's initial rate is the
    # mean over its weights of init_log_sigma2 - log(theta**2 + 1e-8)
    theta = conv.weight.detach()
    channel = torch.tensor([[(o // 3) * 2 + j for j in range(2)] for o in range(6)])
    per_weight = -12.0 - torch.log(theta**2 + 1e-8)
    init = torch.stack([per_weight[channel == c].mean() for c in range(4)])
    assert pyro.param(LOG_ALPHA).shape == (2, 1, 2, 1, 1)
    assert_close(pyro.param(LOG_ALPHA).reshape(4), init.clamp(-7.92, -0.08), atol=1e-5)
    values = torch.tensor([-1.0, -2.0, -3.0, -4.0])
    pyro.get_param_store()[LOG_ALPHA] = values.reshape(2, 1, 2, 1, 1)
    expected = values[channel][:, :, None, None].expand(6, 2, 3, 3)
    assert_close(guide.log_alpha()["weight"], expected, atol=1e-6)


def test_bad_threshold():
    _, model = make_model()
    guide = vd.AutoVariationalDropout(model)
    guide(torch.randn(5, 4), torch.randn(5, 3))
    with pytest.raises(ValueError, match="outside"):
        guide.mask(threshold=100.0)


def test_model_without_log_uniform_sites():
    def model():
        pyro.sample("z", dist.Normal(0.0, 1.0))

    with pytest.raises(ValueError, match="no latent site with a LogUniform prior"):
        vd.AutoVariationalDropout(model)()


def test_log_uniform_site_without_initial_value():
    def model():
        pyro.sample("w", vd.LogUniform().expand([3]).to_event(1))

    with pytest.raises(ImproperPriorError, match="no initial value"):
        vd.AutoVariationalDropout(model)()


def test_weights_inside_a_subsampled_plate():
    bnn = vd.bayesianize(torch.nn.Linear(3, 2))

    def model(x):
        with pyro.plate("data", 100, subsample=torch.arange(len(x))):
            bnn(x)

    with pytest.raises(ValueError, match="inside the subsampled plate"):
        vd.AutoVariationalDropout(model)(torch.randn(4, 3))


def test_summaries_before_the_first_call():
    _, model = make_model()
    with pytest.raises(RuntimeError, match="call it once"):
        vd.AutoVariationalDropout(model).log_alpha()


def test_same_model_trains_with_autonormal_and_sampled_weights():
    # Without local_reparam the converted layers sample whole weight tensors, so Pyro's own
    # guides work once their init strategy can read the module's weights.
    _, model = make_model()
    guide = AutoNormal(model, init_loc_fn=vd.init_to_module)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 1e-2}), pyro.infer.Trace_ELBO())
    x, y = torch.randn(50, 4), torch.randn(50, 3)
    losses = [svi.step(x, y) for _ in range(100)]
    assert all(math.isfinite(v) for v in losses)
    assert sum(losses[-10:]) < sum(losses[:10])
