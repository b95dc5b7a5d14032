import math

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


def test_kl_weight_scales_only_the_kl():
    bnn = vd.bayesianize(torch.nn.Linear(3, 2))
    x, y = torch.randn(4, 3), torch.randn(4, 2)

    def model(x, y):
        out = bnn(x)
        with pyro.plate("data", 4):
            pyro.sample("y", dist.Normal(out, 1.0).to_event(1), obs=y)

    guide = vd.AutoVariationalDropout(model)
    guide(x, y)
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
    ],
    ids=str,
)
def test_bad_options(options, match):
    _, model = make_model()
    with pytest.raises(ValueError, match=match):
        vd.AutoVariationalDropout(model, **options)


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
