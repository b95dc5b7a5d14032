"""The gradient-regularised ELBO against known answers (Unlu & Aitchison 2020)."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import SVI
from pyro.infer.autoguide import AutoNormal

import vdppl.pyro as vd
from vdppl.pyro.gradreg import (
    GradientRegularizedELBO,
    _Layer,
    per_example_squared_norms,
    variance_lr,
)


@pytest.fixture(autouse=True)
def float64():
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(torch.float32)


def classifier(n_data=100):
    net = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    bnn = vd.bayesianize(net)

    def model(x, y=None):
        logits = bnn(x)
        with pyro.plate("data", n_data, subsample=torch.arange(len(x))):
            pyro.sample("y", dist.Categorical(logits=logits), obs=y)

    x, y = torch.randn(20, 3), torch.randint(0, 2, (20,))
    return model, x, y


def mc_expected_loglik(model, guide, x, y, draws):
    """E_q[sum_i scale * log p(y_i | x_i, w)] by local reparameterization, and its SE.

    Per example, LRT draws have the same distribution of the network output as sampled
    weights, so the expectation is the same with a far smaller variance. The draws are
    one run on ``draws`` stacked copies of the batch (each row gets its own noise); the
    log-densities are rescaled to the batch's own plate scale."""
    with torch.no_grad(), vd.local_reparam():
        stacked_x, stacked_y = x.repeat(draws, 1), y.repeat(draws)
        guide_trace = poutine.trace(guide).get_trace(stacked_x, stacked_y)
        replayed = poutine.replay(model, guide_trace)
        site = poutine.trace(replayed).get_trace(stacked_x, stacked_y).nodes["y"]
    scale = site["scale"] * draws  # plate size / len(x), as one batch has it
    values = (site["fn"].log_prob(site["value"]) * scale).reshape(draws, len(x)).sum(1)
    return values.mean().item(), values.std().item() / math.sqrt(draws)


def test_agrees_with_monte_carlo_for_small_variances():
    """Where the MC estimate resolves the variance effect (|E_q log p - log p(mu)| above 10
    standard errors), the deterministic value removes at least 2/3 of that gap at the
    smallest variance (there the expansion's error, third order in sigma, is ~1% of it),
    and its remaining gap grows with the variance, as a truncated expansion's must."""
    pyro.set_rng_seed(0)
    model, x, y = classifier()
    gaps = {"empirical_fisher": [], "ggn": []}
    for log_sigma2 in (-4.0, -3.0, -2.0):
        pyro.clear_param_store()
        guide = vd.AutoVariationalDropout(model, init_log_sigma2=log_sigma2)
        guide(x, y)
        mc, se = mc_expected_loglik(model, guide, x, y, draws=4000)
        for curvature, found in gaps.items():
            terms = GradientRegularizedELBO(curvature=curvature).terms(model, guide, x, y)
            plug_in_gap = abs(terms["data"].item() - mc)
            assert plug_in_gap > 10 * se
            found.append(abs((terms["data"] - terms["penalty"]).item() - mc))
            if log_sigma2 == -4.0:
                assert found[-1] <= plug_in_gap / 3, (curvature, found[-1], plug_in_gap, se)
    for curvature, found in gaps.items():
        assert found[0] < found[1] < found[2], (curvature, found)


def linear_gaussian(noise=0.7, d=4, n=30):
    bnn = vd.bayesianize(torch.nn.Linear(d, 1, bias=False))

    def model(x, y=None):
        mean = bnn(x).squeeze(-1)
        with pyro.plate("data", len(x)):
            pyro.sample("y", dist.Normal(mean, noise), obs=y)

    x = torch.randn(n, d)
    return model, x, x @ torch.randn(d) + noise * torch.randn(n), noise


def test_linear_gaussian_ggn_is_the_exact_expected_loglik():
    # E_q log N(y; x w, s^2) = log N(y; x mu, s^2) - sum_k sigma_k^2 x_k^2 / (2 s^2), exactly.
    model, x, y, s = linear_gaussian()
    guide = vd.AutoVariationalDropout(model, init_log_sigma2=-2.0)
    guide(x, y)
    mu = guide.median()["weight"][0]
    var = guide.get_posterior("weight").variance[0].detach()
    exact = dist.Normal(x @ mu, s).log_prob(y).sum() - ((x**2) @ var).sum() / (2 * s**2)
    terms = GradientRegularizedELBO(curvature="ggn").terms(model, guide, x, y)
    assert (terms["data"] - terms["penalty"]).item() == pytest.approx(exact.item(), rel=1e-12)


def test_linear_gaussian_empirical_fisher_closed_form_and_its_expectation():
    # g_ik = r_i x_ik / s^2, so the penalty is sum_i r_i^2 (x_i^2 @ sigma^2) / (2 s^4); over
    # y ~ N(x mu, s^2), E[r_i^2] = s^2 and it becomes the exact (GGN) penalty.
    model, x, y, s = linear_gaussian()
    guide = vd.AutoVariationalDropout(model, init_log_sigma2=-2.0)
    guide(x, y)
    mu = guide.median()["weight"][0]
    var = guide.get_posterior("weight").variance[0].detach()
    elbo = GradientRegularizedELBO()
    r = y - x @ mu
    expected = (r**2 * ((x**2) @ var)).sum() / (2 * s**4)
    assert elbo.terms(model, guide, x, y)["penalty"].item() == pytest.approx(
        expected.item(), rel=1e-12
    )
    torch.manual_seed(1)
    # 4000 data sets y ~ N(x mu, s^2), stacked: one ELBO evaluation sums their penalties
    stacked_x = x.repeat(4000, 1)
    stacked_y = stacked_x @ mu + s * torch.randn(len(stacked_x))
    mean = elbo.terms(model, guide, stacked_x, stacked_y)["penalty"].detach() / 4000
    r = (stacked_y - stacked_x @ mu).reshape(4000, -1)  # each draw's closed form, for the SE
    draws = (r**2 * ((x**2) @ var)).sum(1) / (2 * s**4)
    exact = ((x**2) @ var).sum() / (2 * s**2)
    assert mean.item() == pytest.approx(draws.mean().item(), rel=1e-10)
    # 4000 draws: the mean's SE is std / sqrt(4000); allow 4 SE.
    assert abs(mean - exact) < 4 * draws.std() / math.sqrt(4000)


def test_deterministic_whatever_the_seed():
    model, x, y = classifier()
    guide = vd.AutoVariationalDropout(model, init_log_sigma2=-4.0)
    guide(x, y)
    elbo = GradientRegularizedELBO()
    values = []
    for seed in (0, 1):
        pyro.set_rng_seed(seed)
        values.append(elbo.loss(model, guide, x, y))
    assert values[0] == values[1]


def test_gradients_match_finite_differences():
    model, x, y = classifier()
    guide = vd.AutoVariationalDropout(model, init_log_sigma2=-4.0)
    guide(x, y)
    elbo = GradientRegularizedELBO()
    params = [
        pyro.param(n)
        for n in (
            "AutoVariationalDropout.theta.0.weight",
            "AutoVariationalDropout.log_sigma2.0.weight",
            "AutoVariationalDropout.log_sigma2.2.weight",
            "0.bias",
        )
    ]
    loss = elbo.differentiable_loss(model, guide, x, y)
    grads = torch.autograd.grad(loss, [p.unconstrained() for p in params])
    eps = 1e-6
    for param, grad in zip(params, grads):
        raw = param.unconstrained()
        for index in [(0,) * raw.dim(), tuple(s - 1 for s in raw.shape)]:
            with torch.no_grad():
                raw[index] += eps
                up = elbo.loss(model, guide, x, y)
                raw[index] -= 2 * eps
                down = elbo.loss(model, guide, x, y)
                raw[index] += eps
            # central differences in float64: error O(eps^2) plus rounding ~1e-10 / eps
            assert (up - down) / (2 * eps) == pytest.approx(grad[index].item(), rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("kind", ["linear", "linear3d", "conv"])
def test_per_example_gradients_against_torch_func(kind):
    torch.manual_seed(0)
    if kind.startswith("linear"):  # linear3d: (batch, time, features), g_i sums over time
        weight = torch.randn(4, 5)
        x = torch.randn(6, 5) if kind == "linear" else torch.randn(6, 3, 5)

        def forward(w, xi):
            return torch.nn.functional.linear(xi, w)

        options = {}
    else:
        weight, x = torch.randn(3, 2, 3, 3), torch.randn(6, 2, 7, 7)
        options = {"stride": 2, "padding": 1}

        def forward(w, xi):
            return torch.nn.functional.conv2d(xi, w, **options)

    var = torch.rand_like(weight)
    targets = torch.randn_like(forward(weight, x))

    def loglik(w, xi, ti):  # one example
        return -((forward(w, xi[None])[0] - ti) ** 2).sum()

    per_example = torch.func.vmap(torch.func.grad(loglik), in_dims=(None, 0, 0))(weight, x, targets)
    expected = (per_example**2 * var).sum()
    out = forward(weight, x)
    delta = -2 * (out - targets)
    layer = _Layer("w", "linear" if kind.startswith("linear") else kind, x, out, var, options)
    assert per_example_squared_norms(layer, delta).item() == pytest.approx(
        expected.item(), rel=1e-10
    )


@pytest.mark.parametrize("options", [{"noise": "multiplicative"}, {"fixed_alpha": 0.5}], ids=str)
def test_multiplicative_noise_guides(options):
    model, x, y = classifier()
    guide = vd.AutoVariationalDropout(model, **options)
    guide(x, y)
    terms = GradientRegularizedELBO().terms(model, guide, x, y)
    assert all(torch.isfinite(v) for v in terms.values()) and terms["penalty"] > 0


def test_autonormal_with_normal_prior():
    bnn = vd.bayesianize(torch.nn.Linear(3, 2), prior=dist.Normal(0.0, 1.0))

    def model(x, y=None):
        logits = bnn(x)
        with pyro.plate("data", len(x)):
            pyro.sample("y", dist.Categorical(logits=logits), obs=y)

    x, y = torch.randn(10, 3), torch.randint(0, 2, (10,))
    guide = AutoNormal(model, init_loc_fn=vd.init_to_module)
    guide(x, y)
    terms = GradientRegularizedELBO().terms(model, guide, x, y)
    loc, scale = guide._get_loc_and_scale("weight")
    kl = torch.distributions.kl_divergence(dist.Normal(loc, scale), dist.Normal(0.0, 1.0)).sum()
    assert terms["kl"].item() == pytest.approx(kl.item(), rel=1e-12)
    assert terms["penalty"] > 0


def test_trains_with_svi_and_a_larger_variance_learning_rate():
    pyro.set_rng_seed(0)
    model, x, y = classifier()
    guide = vd.AutoVariationalDropout(model, init_log_sigma2=-6.0)
    optim = pyro.optim.Adam(variance_lr(1e-2, 5e-2))
    svi = SVI(model, guide, optim, GradientRegularizedELBO())
    losses = [svi.step(x, y) for _ in range(100)]
    assert losses[-1] < losses[0]
    assert variance_lr(1e-3, 1e-1)("AutoVariationalDropout.log_sigma2.0.weight") == {"lr": 1e-1}
    assert variance_lr(1e-3, 1e-1)("AutoVariationalDropout.theta.0.weight") == {"lr": 1e-3}


def test_errors():
    with pytest.raises(ValueError, match="curvature must be one of"):
        GradientRegularizedELBO(curvature="hessian")
    bnn = vd.bayesianize(torch.nn.Linear(2, 1))

    def model(x, y=None):
        sigma = pyro.sample("sigma", dist.HalfNormal(1.0))
        mean = bnn(x).squeeze(-1)
        with pyro.plate("data", len(x)):
            pyro.sample("y", dist.Normal(mean, sigma), obs=y)

    x, y = torch.randn(5, 2), torch.randn(5)
    guide = vd.AutoVariationalDropout(model)
    guide(x, y)
    with pytest.raises(ValueError, match="needs an analytic KL at site 'sigma'"):
        GradientRegularizedELBO().loss(model, guide, x, y)

    def bernoulli(x, y=None):
        logits = bnn(x).squeeze(-1)
        with pyro.plate("data", len(x)):
            pyro.sample("y", dist.Bernoulli(logits=logits), obs=y)

    pyro.clear_param_store()
    guide = vd.AutoVariationalDropout(bernoulli)
    guide(x, (y > 0).double())
    with pytest.raises(NotImplementedError, match="supports Normal and Categorical"):
        GradientRegularizedELBO(curvature="ggn").loss(bernoulli, guide, x, (y > 0).double())


def test_observed_sites_with_different_scales():
    """One layer call whose rows feed two observed sites in two plates (scales 5 and 3):
    each example's squared gradient gets its own site's scale."""
    bnn = vd.bayesianize(torch.nn.Linear(3, 1))

    def model(x, y, x2, z):
        out = bnn(torch.cat([x, x2]))[:, 0]
        with pyro.plate("a", 100, subsample=torch.arange(len(x))):
            pyro.sample("y", dist.Bernoulli(logits=out[: len(x)]), obs=y)
        with pyro.plate("b", 30, subsample=torch.arange(len(x2))):
            pyro.sample("z", dist.Normal(out[len(x) :], 0.5), obs=z)

    x, x2 = torch.randn(20, 3), torch.randn(10, 3)
    y, z = (torch.randn(20) > 0).double(), torch.randn(10)
    guide = vd.AutoVariationalDropout(model, init_log_sigma2=-3.0)
    guide(x, y, x2, z)
    posterior = guide.get_posterior("weight")
    mu, var, bias = posterior.loc.detach(), posterior.variance.detach(), pyro.param("bias").detach()

    def per_example(loglik, inputs, targets):
        grads = torch.func.vmap(torch.func.grad(loglik), in_dims=(None, 0, 0))(mu, inputs, targets)
        return (grads**2 * var).sum()

    def bernoulli(w, xi, yi):  # written out: distributions' validation cannot be vmapped
        logit = (w @ xi + bias)[0]
        return yi * logit - torch.nn.functional.softplus(logit)

    def gaussian(w, xi, zi):
        return -0.5 * (((w @ xi + bias)[0] - zi) / 0.5) ** 2 - math.log(
            0.5 * math.sqrt(2 * math.pi)
        )

    expected = 0.5 * (5 * per_example(bernoulli, x, y) + 3 * per_example(gaussian, x2, z))
    found = GradientRegularizedELBO().terms(model, guide, x, y, x2, z)["penalty"]
    assert found.item() == pytest.approx(expected.item(), rel=1e-10)  # float64 rounding


def test_non_layer_latent_site_gets_its_curvature():
    """A latent offset of the logits (Normal prior, not a layer weight) adds
    ``1/2 s sum_i sigma_c^2 (e_{y_i} - p_i)_c^2`` (``d log softmax(f)_y / d offset``);
    a ``pyro.deterministic`` site changes nothing, also with the GGN."""
    bnn = vd.bayesianize(torch.nn.Linear(3, 2))

    def model(x, y=None):
        logits = bnn(x) + pyro.sample("offset", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
        logits = pyro.deterministic("logits", logits)
        with pyro.plate("data", 100, subsample=torch.arange(len(x))):
            pyro.sample("y", dist.Categorical(logits=logits), obs=y)

    x, y = torch.randn(20, 3), torch.randint(0, 2, (20,))
    guide = vd.AutoVariationalDropout(model)
    guide(x, y)
    found = GradientRegularizedELBO().terms(model, guide, x, y)["penalty"]
    weight, offset = guide.get_posterior("weight"), guide.get_posterior("offset")
    mu, b, var = weight.loc.detach(), pyro.param("bias").detach(), weight.variance.detach()

    def loglik(w, xi, onehot):  # the weights' share by brute force
        return (torch.log_softmax(w @ xi + b + offset.loc.detach(), -1) * onehot).sum()

    onehot = torch.nn.functional.one_hot(y, 2).double()
    grads = torch.func.vmap(torch.func.grad(loglik), in_dims=(None, 0, 0))(mu, x, onehot)
    with torch.no_grad():
        p = torch.softmax(torch.nn.functional.linear(x, mu, b) + offset.loc, -1)
        share = ((onehot - p) ** 2 * offset.variance).sum()
    expected = 0.5 * 5 * ((grads**2 * var).sum() + share)
    assert found.item() == pytest.approx(expected.item(), rel=1e-10)  # float64 rounding
    # not a rounding error: variances 0.01 against e^-10 (220x) on 2 offsets against 6
    # weights with gradients of the same order, so about 70x the weights' share
    assert share > 10 * (grads**2 * var).sum()
    ggn = GradientRegularizedELBO(curvature="ggn").terms(model, guide, x, y)
    assert torch.isfinite(ggn["penalty"]) and ggn["penalty"] > 0


def test_uniform_variance():
    """One shared ``log_sigma2``: the same objective as per-weight variances all equal to
    it (the penalty by its shared-value shortcut ``sigma^2 sum_k g_ik^2``)."""
    model, x, y = classifier()
    uniform = vd.AutoVariationalDropout(model, variance="uniform", init_log_sigma2=-4.0)
    uniform(x, y)
    assert pyro.param("AutoVariationalDropout.log_sigma2").shape == ()
    assert "AutoVariationalDropout.log_sigma2.0.weight" not in pyro.get_param_store()
    shared = GradientRegularizedELBO().terms(model, uniform, x, y)
    per_weight = vd.AutoVariationalDropout(model, init_log_sigma2=-4.0)
    per_weight(x, y)
    for name in ("AutoVariationalDropout.theta.0.weight", "AutoVariationalDropout.theta.2.weight"):
        assert torch.equal(pyro.param(name), pyro.param(name))  # same store, same means
    separate = GradientRegularizedELBO().terms(model, per_weight, x, y)
    for key in ("data", "penalty", "kl"):
        assert shared[key].item() == pytest.approx(separate[key].item(), rel=1e-12), key
    with pytest.raises(ValueError, match="variance='uniform' .* needs noise='additive'"):
        vd.AutoVariationalDropout(model, noise="multiplicative", variance="uniform")
    with pytest.raises(ValueError, match="variance must be one of"):
        vd.AutoVariationalDropout(model, variance="layer")


def test_larger_variance_learning_rate_reaches_the_optimal_variance():
    """Linear-Gaussian model, Normal(0, 1) prior, AutoNormal, GGN (exact here): the
    optimal mean-field scale is ``1 / sqrt(sum_i x_ik^2 / s^2 + 1)`` whatever the mean.
    From scale 1 the optimum (~0.05) is ~3.5 away in the softplus-unconstrained space;
    Adam moves a parameter by at most about ``lr`` per step while its gradient keeps its
    sign, so 200 steps at 1e-2 cannot get there; ten times the rate covers ten times the
    distance, and we ask only for four times closer in ``log sigma``."""
    bnn = vd.bayesianize(torch.nn.Linear(4, 1, bias=False), prior=dist.Normal(0.0, 1.0))
    s = 0.7

    def model(x, y=None):
        mean = bnn(x).squeeze(-1)
        with pyro.plate("data", len(x)):
            pyro.sample("y", dist.Normal(mean, s), obs=y)

    x = torch.randn(200, 4)
    y = x @ torch.randn(4) + s * torch.randn(200)
    optimum = 1 / ((x**2).sum(0) / s**2 + 1.0).sqrt()
    error = {}
    for rate in (1e-2, 1e-1):
        pyro.clear_param_store()
        guide = AutoNormal(model, init_loc_fn=vd.init_to_module, init_scale=1.0)
        optim = pyro.optim.Adam(variance_lr(1e-2, rate))
        svi = SVI(model, guide, optim, GradientRegularizedELBO(curvature="ggn"))
        for _ in range(200):
            svi.step(x, y)
        scale = guide._get_loc_and_scale("weight")[1].detach()[0]
        error[rate] = (scale / optimum).log().abs()
    assert (error[1e-2] > math.log(2)).all()  # still far: the variances lag
    assert (error[1e-1] < error[1e-2] / 4).all()
