"""The gradient-regularised ELBO (NumPyro) against known answers (Unlu & Aitchison 2020).

Penalties are checked against a brute-force ``jax.vmap(jax.grad)`` over examples of a
hand-written per-example log-likelihood: ``1/2 sum_i s_i sum_k sigma_k^2 g_ik^2``.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from jax import random
from numpyro.handlers import replay, seed, substitute, trace
from numpyro.infer import SVI
from numpyro.infer.autoguide import AutoNormal

import vdppl.numpyro as vd
from tests.numpyro.helpers import normal, setup_guide
from vdppl.numpyro.gradreg import (
    GradientRegularizedELBO,
    _Call,
    _squared_norms,
    is_variance_param,
    variance_lr,
)

KEY = random.key(0)
BATCH, SCALE = 200, 5  # minibatches of 200 from 1000 examples (one shape for all tests)


def classifier(offset=False, dtype=jnp.float32, n=BATCH, labels="random"):
    """3-8-2 tanh network, Categorical likelihood, minibatches of ``n`` from ``5 n``;
    optionally a latent offset of the logits (a Normal site that is not a layer weight).
    ``labels="model"`` draws them from the network's own predictive at its weights."""
    w1 = normal(3, 8, seed=1, scale=0.5).astype(dtype)
    w2 = normal(8, 2, seed=2, scale=0.5).astype(dtype)

    def model(x, y=None):
        h = jnp.tanh(vd.nn.dense("fc1", x, 8, init=w1))
        logits = vd.nn.dense("fc2", h, 2, init=w2)
        if offset:
            logits = logits + numpyro.sample(
                "offset", dist.Normal(0.0, 1.0).expand([2]).to_event(1)
            )
        with numpyro.plate("data", SCALE * x.shape[0], subsample_size=x.shape[0]):
            numpyro.sample("y", dist.Categorical(logits=logits), obs=y)

    x = normal(n, 3, seed=3).astype(dtype)
    rng = np.random.default_rng(4)
    if labels == "model":
        p = np.asarray(jax.nn.softmax(jnp.tanh(x @ w1) @ w2), np.float64)  # biases start at 0
        y = jnp.asarray((rng.uniform(size=(n, 1)) > np.cumsum(p, 1)).sum(1))
    else:
        y = jnp.asarray(rng.integers(0, 2, n))
    return model, x, y


def classifier_loglik(weights, params, xi, yi):
    """log p(y_i | x_i, w) of :func:`classifier`, for one example."""
    h = jnp.tanh(xi @ weights["fc1.kernel"] + params["fc1.bias"])
    logits = h @ weights["fc2.kernel"] + params["fc2.bias"] + weights.get("offset", 0.0)
    return jax.nn.log_softmax(logits)[yi]


@functools.partial(jax.jit, static_argnums=0)
def brute_penalty(loglik, weights, variances, params, x, y, scale):
    grads = jax.vmap(jax.grad(loglik), in_axes=(None, None, 0, 0))(weights, params, x, y)
    return 0.5 * scale * sum(jnp.sum(grads[k] ** 2 * variances[k]) for k in weights)


def posterior_moments(guide, params, sites):
    means = {s: guide.get_posterior(params, s).loc for s in sites}
    return means, {s: guide.get_posterior(params, s).variance for s in sites}


def jitted_terms(model, guide, curvature="empirical_fisher"):
    """``(params, *args) -> terms``, jitted: one compilation costs far less than eager
    execution of the second-order program op by op."""
    elbo = GradientRegularizedELBO(curvature=curvature)
    return jax.jit(lambda p, *a: elbo.terms(KEY, p, model, guide, *a))


def terms(params, model, guide, *args, curvature="empirical_fisher"):
    return jitted_terms(model, guide, curvature)(params, *args)


# ------------------------------------------------------------ known answers
@pytest.mark.parametrize(
    "options",
    [
        {},
        {"noise": "multiplicative"},
        {"variance": "uniform"},
    ],
    ids=str,
)
def test_penalty_equals_per_example_gradients(options):
    model, x, y = classifier()
    guide = vd.AutoVariationalDropout(model, init_log_sigma2=-4.0, **options)
    guide, params = setup_guide(model, x, y, guide=guide)
    means, variances = posterior_moments(guide, params, ("fc1.kernel", "fc2.kernel"))
    expected = brute_penalty(classifier_loglik, means, variances, params, x, y, SCALE)
    found = terms(params, model, guide, x, y)
    # float32: both sides sum a few hundred products of O(1) numbers
    np.testing.assert_allclose(found["penalty"], expected, rtol=1e-5)
    if options.get("variance") == "uniform":
        assert jnp.shape(params["log_sigma2"]) == () and "log_sigma2.fc1.kernel" not in params


def test_non_layer_latent_site_gets_its_curvature():
    model, x, y = classifier(offset=True)
    guide, params = setup_guide(model, x, y, guide=vd.AutoVariationalDropout(model))
    sites = ("fc1.kernel", "fc2.kernel", "offset")
    means, variances = posterior_moments(guide, params, sites)
    expected = brute_penalty(classifier_loglik, means, variances, params, x, y, SCALE)
    np.testing.assert_allclose(terms(params, model, guide, x, y)["penalty"], expected, rtol=1e-5)
    # the offset's share in closed form: d log softmax(f)_y / d offset = e_y - p
    without = brute_penalty(
        classifier_loglik, means, {**variances, "offset": 0.0}, params, x, y, SCALE
    )
    logits = jax.vmap(lambda xi: jnp.tanh(xi @ means["fc1.kernel"] + params["fc1.bias"]))(x)
    logits = logits @ means["fc2.kernel"] + params["fc2.bias"] + means["offset"]
    g = jax.nn.one_hot(y, 2) - jax.nn.softmax(logits)
    share = 0.5 * SCALE * jnp.sum(g**2 * variances["offset"])
    # float32: the difference of two sums of ~0.3 loses ~1e-7 absolute
    np.testing.assert_allclose(expected - without, share, rtol=1e-4)


def test_observed_sites_with_different_scales():
    """Two observed sites in two plates (scales 5 and 3) through the same layer: each
    example's squared gradient gets its own site's scale."""
    w1 = normal(3, 1, seed=1, scale=0.5)

    def model(x, y, x2, z):
        kernel = vd.nn.weight_site("fc.kernel", (3, 1), vd.LogUniform(), w1)
        bias = numpyro.param("fc.bias", jnp.zeros(1))
        with numpyro.plate("a", 100, subsample_size=x.shape[0]):
            logits = vd.dense(x, kernel, bias)[:, 0]
            numpyro.sample("y", dist.Bernoulli(logits=logits), obs=y)
        with numpyro.plate("b", 30, subsample_size=x2.shape[0]):
            numpyro.sample("z", dist.Normal(vd.dense(x2, kernel, bias)[:, 0], 0.5), obs=z)

    x, x2 = normal(20, 3, seed=2), normal(10, 3, seed=3)
    y, z = (normal(20, seed=4) > 0).astype(jnp.float32), normal(10, seed=5)
    guide, params = setup_guide(
        model, x, y, x2, z, guide=vd.AutoVariationalDropout(model, init_log_sigma2=-3.0)
    )
    (mean,), (var,) = (v.values() for v in posterior_moments(guide, params, ("fc.kernel",)))
    bias = params["fc.bias"]

    def bernoulli(w, p, xi, yi):
        return dist.Bernoulli(logits=(xi @ w["k"] + bias)[0]).log_prob(yi)

    def gaussian(w, p, xi, zi):
        return dist.Normal((xi @ w["k"] + bias)[0], 0.5).log_prob(zi)

    expected = brute_penalty(bernoulli, {"k": mean}, {"k": var}, {}, x, y, 5.0) + brute_penalty(
        gaussian, {"k": mean}, {"k": var}, {}, x2, z, 3.0
    )
    found = terms(params, model, guide, x, y, x2, z)
    np.testing.assert_allclose(found["penalty"], expected, rtol=1e-5)


def linear_gaussian(noise=0.7, d=4, n=30, prior=None):
    def model(x, y=None):
        mean = vd.nn.dense("lin", x, 1, use_bias=False, prior=prior, init=jnp.full((d, 1), 0.3))
        with numpyro.plate("data", x.shape[0]):
            numpyro.sample("y", dist.Normal(mean[:, 0], noise), obs=y)

    x = normal(n, d, seed=6)
    y = x @ normal(d, seed=7) + noise * normal(n, seed=8)
    return model, x, y, noise


def mc_expected_loglik(model, guide, x, y, draws, monkeypatch):
    """E_q[sum_i s log p(y_i | x_i, w)] by local reparameterization, and its SE (per
    example, an LRT draw has the network output's distribution under sampled weights).

    Antithetic pairs (each draw's noise and its negation, an unbiased estimate) cancel the
    first-order term of the noise, whose variance would otherwise swamp a gap of order
    sigma^2 at small sigma. Returns ``params -> (mean, SE)``, compiled once."""

    def one(params, key):
        k1, k2 = random.split(key)
        with vd.local_reparam():
            guide_trace = trace(seed(substitute(guide, data=params), k1)).get_trace(x, y)
            run = seed(substitute(replay(model, guide_trace), data=params), k2)
            site = trace(run).get_trace(x, y)["y"]
        return jnp.sum(site["fn"].log_prob(site["value"]) * site["scale"])

    keys = random.split(random.key(1), draws)
    plain, antithetic = jax.jit(jax.vmap(one, (None, 0))), jax.jit(jax.vmap(one, (None, 0)))

    def estimate(params):
        values = np.asarray(plain(params, keys), np.float64)
        with monkeypatch.context() as patch:  # traced (once) with the noise negated
            patch.setattr(vd.ops, "_standard_normal", lambda *a: -random.normal(*a))
            values = (values + np.asarray(antithetic(params, keys), np.float64)) / 2
        return values.mean(), values.std() / math.sqrt(draws)

    return estimate


def test_agrees_with_monte_carlo_for_small_variances(monkeypatch):
    """Where the MC estimate resolves the variance effect (|E_q log p - log p(mu)| above 10
    standard errors), the deterministic value removes at least 2/3 of that gap at the
    smallest variance (there the expansion's error, third order in sigma, is ~1% of it),
    and its remaining gap grows with the variance, as a truncated expansion's must.

    Labels are drawn from the network's own predictive, where ``E_y[H_i] = -Fisher_i``:
    the regime (near a fit) the squared-gradient curvature is meant for. With arbitrary
    labels on an untrained network the true Hessian can have the other sign (noise raises
    the likelihood of misclassified points), which no positive curvature captures; 200
    examples average the empirical Fisher's label noise."""
    model, x, y = classifier(labels="model")
    guide, params = setup_guide(model, x, y)
    mc_estimate = mc_expected_loglik(model, guide, x, y, 2000, monkeypatch)
    elbo_terms = {c: jitted_terms(model, guide, c) for c in ("empirical_fisher", "ggn")}
    gaps = {"empirical_fisher": [], "ggn": []}
    for log_sigma2 in (-4.0, -3.0, -2.0):
        params = {
            k: jnp.full_like(v, log_sigma2) if k.startswith("log_sigma2") else v
            for k, v in params.items()
        }
        mc, se = mc_estimate(params)
        for curvature, found in gaps.items():
            t = elbo_terms[curvature](params, x, y)
            plug_in_gap = abs(float(t["data"]) - mc)
            assert plug_in_gap > 10 * se
            found.append(abs(float(t["data"] - t["penalty"]) - mc))
            if log_sigma2 == -4.0:
                assert found[-1] <= plug_in_gap / 3, (curvature, found[-1], plug_in_gap, se)
    for curvature, found in gaps.items():
        assert found[0] < found[1] < found[2], (curvature, found)


def test_deterministic_whatever_the_seed_and_jit():
    model, x, y = classifier()
    guide, params = setup_guide(
        model, x, y, guide=vd.AutoVariationalDropout(model, init_log_sigma2=-4.0)
    )
    elbo = GradientRegularizedELBO()
    loss = jax.jit(lambda key: elbo.loss(key, params, model, guide, x, y))
    assert float(loss(random.key(0))) == float(loss(random.key(1)))


def test_gradients_match_finite_differences():
    with jax.enable_x64(True):
        model, x, y = classifier(offset=True, dtype=jnp.float64)
        guide, params = setup_guide(
            model, x, y, guide=vd.AutoVariationalDropout(model, init_log_sigma2=-4.0)
        )
        elbo = GradientRegularizedELBO()

        def loss(p):
            return elbo.loss(KEY, p, model, guide, x, y, kl_weight=0.5)

        grad = jax.jit(jax.grad(loss))(params)
        loss = jax.jit(loss)
        rng = np.random.default_rng(9)
        for _ in range(2):  # random directions through every parameter at once
            d = {k: jnp.asarray(rng.normal(size=jnp.shape(v))) for k, v in params.items()}
            eps = 1e-5
            up = loss({k: v + eps * d[k] for k, v in params.items()})
            down = loss({k: v - eps * d[k] for k, v in params.items()})
            directional = sum(jnp.sum(grad[k] * d[k]) for k in params)
            # central differences in float64: error O(eps^2) plus rounding ~1e-13 / eps
            np.testing.assert_allclose((up - down) / (2 * eps), directional, rtol=1e-6)


@pytest.mark.parametrize("case", ["dense3d", "conv", "conv_grouped"])
def test_per_example_squared_norms_against_vmap_grad(case):
    if case == "dense3d":  # dense over (batch, time, features): g_i sums over time
        kernel, x = normal(5, 4, seed=1), normal(6, 3, 5, seed=2)
        call = _Call("w", "vdppl_dense", ())

        def forward(k, xi):
            return xi @ k
    else:
        groups = 2 if case == "conv_grouped" else 1
        kernel, x = normal(3, 3, 4 // groups, 6, seed=1), normal(6, 7, 7, 4, seed=2)
        options = (2, "SAME", 1, groups, 1)  # strides, padding, dilation, groups, input dil.
        call = _Call("w", "vdppl_conv", options)

        def forward(k, xi):
            return vd.ops.plain_conv(xi[None], k, None, *options)[0]

    var = jnp.abs(normal(*kernel.shape, seed=3))
    targets = normal(*jax.vmap(forward, (None, 0))(kernel, x).shape, seed=4)

    def loglik(k, xi, ti):
        return -jnp.sum((forward(k, xi) - ti) ** 2)

    per_example = jax.vmap(jax.grad(loglik), in_axes=(None, 0, 0))(kernel, x, targets)
    expected = jnp.sum(per_example**2 * var)
    delta = -2 * (jax.vmap(forward, (None, 0))(kernel, x) - targets)
    # float32 sums of a few thousand terms
    np.testing.assert_allclose(_squared_norms(call, x, kernel, var, delta), expected, rtol=1e-5)


# ------------------------------------------------------------------- training
def test_trains_with_jitted_svi_and_kl_weight_per_step():
    model, x, y = classifier()
    guide = vd.AutoVariationalDropout(model, init_log_sigma2=-6.0)
    elbo = GradientRegularizedELBO()
    svi = SVI(model, guide, variance_lr(1e-2, 5e-2), elbo)
    state = svi.init(random.key(0), x, y)
    params = svi.get_params(state)
    t = terms(params, model, guide, x, y)
    beta = 0.25
    loss_at_beta = jax.jit(lambda p: elbo.loss(KEY, p, model, guide, x, y, kl_weight=beta))(params)
    # the ELBO owns the KL weight: -(data - penalty - beta kl); float32 sums of ~100
    np.testing.assert_allclose(
        loss_at_beta, -(t["data"] - t["penalty"] - beta * t["kl"]), rtol=1e-6
    )
    step = jax.jit(svi.update)
    losses = []
    for _ in range(30):
        state, loss = step(state, x, y, kl_weight=jnp.float32(1.0))
        losses.append(float(loss))
    assert losses[-1] < losses[0]


def test_variance_lr_labels():
    assert is_variance_param("log_sigma2")  # the uniform form's one parameter
    assert is_variance_param("log_alpha.Dense_0.kernel") and is_variance_param("scale.offset")
    assert not is_variance_param("theta.Dense_0.kernel")
    assert not is_variance_param("LayerNorm_0.scale")  # a model parameter named scale


def test_autonormal_with_normal_prior_and_the_variance_learning_rate():
    """Linear-Gaussian model, Normal(0, 1) prior, AutoNormal. The expansion is exact for
    a model linear in ``w``: with the GGN, data - penalty is the analytic expected
    log-likelihood; the empirical Fisher's penalty has its closed form; the KL is the
    analytic Normal-Normal one.

    Training: the optimal mean-field scale is ``1 / sqrt(sum_i x_ik^2 / s^2 + 1)`` (GGN
    is exact here) whatever the mean. From scale 1 the optimum (~0.05) is ~3.5 away in
    the softplus-unconstrained space; Adam moves a parameter by at most about ``lr`` per
    step while its gradient keeps its sign (less once its second-moment estimate
    remembers the large early gradients), so 200 steps at 1e-2 cannot get there; ten
    times the rate covers ten times the distance, and we ask only for four times closer
    in ``log sigma``."""
    model, x, y, s = linear_gaussian(n=200, prior=dist.Normal(0.0, 1.0))
    guide = AutoNormal(model, init_loc_fn=vd.init_to_module, init_scale=1.0)
    guide, params = setup_guide(model, x, y, guide=guide)
    loc, scale = params["lin.kernel_auto_loc"], params["lin.kernel_auto_scale"]
    found = terms(params, model, guide, x, y, curvature="ggn")
    kl = dist.kl_divergence(dist.Normal(loc, scale), dist.Normal(0.0, 1.0)).sum()
    np.testing.assert_allclose(found["kl"], kl, rtol=1e-6)  # float32, 4 terms
    # E_q log N(y; x w, s^2) = log N(y; x mu, s^2) - sum_k sigma_k^2 x_k^2 / (2 s^2), exactly
    mu, var = loc[:, 0], scale[:, 0] ** 2
    exact = dist.Normal(x @ mu, s).log_prob(y).sum() - ((x**2) @ var).sum() / (2 * s**2)
    # float32: sums of 200 terms of O(1), the data term ~ -300
    np.testing.assert_allclose(found["data"] - found["penalty"], exact, rtol=1e-5)
    # empirical Fisher: g_ik = r_i x_ik / s^2, penalty sum_i r_i^2 (x_i^2 @ var) / (2 s^4)
    r = y - x @ mu
    expected = (r**2 * ((x**2) @ var)).sum() / (2 * s**4)
    np.testing.assert_allclose(terms(params, model, guide, x, y)["penalty"], expected, rtol=1e-5)

    optimum = 1 / jnp.sqrt((x**2).sum(0) / s**2 + 1.0)
    error = {}
    for rate in (1e-2, 1e-1):  # the guide, set up once, serves both runs
        svi = SVI(model, guide, variance_lr(1e-2, rate), GradientRegularizedELBO(curvature="ggn"))
        result = svi.run(random.key(0), 200, x, y, progress_bar=False)
        error[rate] = jnp.abs(jnp.log(result.params["lin.kernel_auto_scale"][:, 0] / optimum))
    assert jnp.all(error[1e-2] > math.log(2))  # still far: the variances lag
    assert jnp.all(error[1e-1] < error[1e-2] / 4)


# --------------------------------------------------------------------- errors
def test_errors():
    with pytest.raises(ValueError, match="curvature must be one of"):
        GradientRegularizedELBO(curvature="hessian")
    with pytest.raises(ValueError, match="kl_weight"):
        GradientRegularizedELBO(kl_weight=-1.0)
    model, x, y = classifier()
    with pytest.raises(ValueError, match="variance='uniform' .* needs noise='additive'"):
        vd.AutoVariationalDropout(model, noise="multiplicative", variance="uniform")
    with pytest.raises(ValueError, match="variance='uniform' .* needs noise='additive'"):
        vd.AutoVariationalDropout(model, fixed_alpha=0.5, variance="uniform")
    with pytest.raises(ValueError, match="variance must be one of"):
        vd.AutoVariationalDropout(model, variance="layer")

    def noisy(x, y=None):
        sigma = numpyro.sample("sigma", dist.HalfNormal(1.0))
        mean = vd.nn.dense("fc", x, 1, init=jnp.ones((3, 1)))[:, 0]
        with numpyro.plate("data", x.shape[0]):
            numpyro.sample("y", dist.Normal(mean, sigma), obs=y)

    x, y = normal(5, 3), normal(5, seed=1)
    guide, params = setup_guide(noisy, x, y)
    with pytest.raises(ValueError, match="needs an analytic KL at site 'sigma'"):
        terms(params, noisy, guide, x, y)

    def bernoulli(x, y=None):
        logits = vd.nn.dense("fc", x, 1, init=jnp.ones((3, 1)))[:, 0]
        with numpyro.plate("data", x.shape[0]):
            numpyro.sample("y", dist.Bernoulli(logits=logits), obs=y)

    guide, params = setup_guide(bernoulli, x, (y > 0).astype(jnp.float32))
    with pytest.raises(NotImplementedError, match="supports Normal and Categorical"):
        terms(params, bernoulli, guide, x, (y > 0).astype(jnp.float32), curvature="ggn")


# --------------------------------------------------------------- cross-backend
@pytest.mark.slow  # ~4 s: both backends' compilation and set-up
def test_pyro_and_numpyro_objectives_agree():
    """The same 3-8-2 network, weights and variances in both backends (torch's weights are
    the transposed Flax kernels): data, penalty and KL agree to float64 rounding."""
    torch = pytest.importorskip("torch")
    import pyro
    import pyro.distributions as pdist

    import vdppl.pyro as pvd
    from vdppl.pyro.gradreg import GradientRegularizedELBO as PyroELBO

    with jax.enable_x64(True):
        model, x, y = classifier(dtype=jnp.float64)
        guide = vd.AutoVariationalDropout(model, init_log_sigma2=-3.0)
        guide, params = setup_guide(model, x, y, guide=guide)
        params = {
            **params,
            "log_sigma2.fc1.kernel": params["log_sigma2.fc1.kernel"] + normal(3, 8, seed=5),
        }
        ours = {
            c: terms(params, model, guide, x, y, curvature=c) for c in ("empirical_fisher", "ggn")
        }

    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        pyro.clear_param_store()
        net = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
        with torch.no_grad():
            for layer, name in ((net[0], "fc1"), (net[2], "fc2")):
                layer.weight.copy_(torch.as_tensor(np.asarray(params[f"theta.{name}.kernel"]).T))
                layer.bias.copy_(torch.as_tensor(np.asarray(params[f"{name}.bias"])))
        bnn = pvd.bayesianize(net)

        def pyro_model(x, y=None):
            logits = bnn(x)
            with pyro.plate("data", SCALE * len(x), subsample=torch.arange(len(x))):
                pyro.sample("y", pdist.Categorical(logits=logits), obs=y)

        tx, ty = torch.as_tensor(np.asarray(x)), torch.as_tensor(np.asarray(y))
        pyro_guide = pvd.AutoVariationalDropout(pyro_model, init_log_sigma2=-3.0)
        pyro_guide(tx, ty)
        with torch.no_grad():
            for index, name in ((0, "fc1"), (2, "fc2")):
                value = torch.as_tensor(np.asarray(params[f"log_sigma2.{name}.kernel"]).T)
                pyro.param(f"AutoVariationalDropout.log_sigma2.{index}.weight").copy_(value)
        for curvature, expected in ours.items():
            found = PyroELBO(curvature=curvature).terms(pyro_model, pyro_guide, tx, ty)
            for key in ("data", "penalty", "kl"):
                np.testing.assert_allclose(
                    found[key].item(), expected[key], rtol=1e-10, err_msg=key
                )
    finally:
        torch.set_default_dtype(previous)
        pyro.clear_param_store()
