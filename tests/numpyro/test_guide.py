import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro.handlers import seed, substitute, trace
from numpyro.infer import SVI, Trace_ELBO, TraceMeanField_ELBO, init_to_value
from numpyro.infer.autoguide import AutoNormal

import vdppl.numpyro as vd
from vdppl import kl as vdkl
from vdppl.numpyro._checks import is_concrete
from vdppl.numpyro.distributions import ImproperPriorError

from .conftest import assert_close
from .helpers import mlp_model, normal, setup_guide, variables_like

X = normal(5, 4, seed=0)
Y = normal(5, 3, seed=1)


class MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = jnp.tanh(nn.Dense(6)(x))  # Dense_0 (flax names layers in construction order)
        return nn.Dense(3)(h)


def fit(svi, steps, *args):
    """Losses of ``steps`` jitted SVI updates from ``svi.init``."""
    state = svi.init(jax.random.key(6), *args)
    step = jax.jit(svi.update)
    losses = []
    for _ in range(steps):
        state, loss = step(state, *args)
        losses.append(loss)
    return jnp.stack(losses)


def make_model():
    bnn = vd.bayesianize(MLP(), X, variables=variables_like(MLP(), X))

    def model(x, y=None):
        logits = numpyro.deterministic("logits", bnn(x))
        noise = numpyro.sample("noise", dist.LogNormal(0.0, 1.0))  # a non-LogUniform site
        shift = numpyro.sample("shift", dist.Normal(jnp.zeros(3), 1.0).to_event(1))
        with numpyro.plate("data", x.shape[0]):
            numpyro.sample("y", dist.Normal(logits + shift, noise).to_event(1), obs=y)

    return bnn, model


def test_sites_and_shapes_match_autonormal():
    bnn, model = make_model()
    guide, _ = setup_guide(model, X, Y)
    ours = trace(seed(guide, 0)).get_trace(X, Y)
    shapes = {n: jnp.shape(s["value"]) for n, s in ours.items() if s["type"] == "sample"}
    assert shapes == {
        "Dense_0.kernel": (4, 6),
        "Dense_1.kernel": (6, 3),
        "noise": (),
        "shift": (3,),
    }
    assert guide.dropout_sites == ["Dense_0.kernel", "Dense_1.kernel"]
    assert ours["Dense_0.kernel"]["infer"] == {"local_reparam": True, "vdppl_lrt_guide": True}
    assert ours["shift"]["infer"] == {}  # not marked in the model


def test_initial_means_are_the_module_weights():
    bnn, model = make_model()
    guide, params = setup_guide(model, X, Y)
    kernel = bnn.layers[0].kernel_init
    assert_close(guide.median(params)["Dense_0.kernel"], kernel)
    assert_close(params["log_sigma2.Dense_0.kernel"], jnp.full((4, 6), -10.0))
    assert sorted(params) == sorted(
        [
            "Dense_0.bias",
            "Dense_1.bias",
            "log_sigma2.Dense_0.kernel",
            "log_sigma2.Dense_1.kernel",
            "loc.noise",
            "loc.shift",
            "scale.noise",
            "scale.shift",
            "theta.Dense_0.kernel",
            "theta.Dense_1.kernel",
        ]
    )


@pytest.mark.parametrize(
    "alpha_shape,expected", [("weight", (4, 6)), ("unit", (4, 1)), ("layer", (1, 1))], ids=str
)
def test_multiplicative_alpha_shapes(alpha_shape, expected):
    _, model = make_model()
    guide = vd.AutoVariationalDropout(model, noise="multiplicative", alpha_shape=alpha_shape)
    guide, params = setup_guide(model, X, Y, guide=guide)
    assert params["log_alpha.Dense_0.kernel"].shape == expected  # unit: one per input (axis -2)
    la = guide.log_alpha(params)["Dense_0.kernel"]
    assert la.shape == (4, 6) and la.max() <= 0.0  # alpha <= 1 by default
    assert guide.kl_approximation == "kingma"
    fn = guide.get_posterior(params, "Dense_0.kernel")
    assert_close(fn.scale**2, jnp.exp(la) * fn.loc**2, atol=1e-7)


CONV_X = normal(1, 5, 5, 4, seed=2)  # channels last: 4 input channels


def grouped_conv_model(kind, groups):
    """A 3x3 conv with 4 inputs and 6 outputs, written functionally or with Flax."""
    if kind == "flax":
        conv = nn.Conv(6, (3, 3), feature_group_count=groups, padding="VALID")
        bnn = vd.bayesianize(conv, CONV_X, variables=variables_like(conv, CONV_X))
        return "kernel", lambda x: bnn(x)
    init = normal(3, 3, 4 // groups, 6, seed=3)
    return "c.kernel", lambda x: vd.nn.conv(
        "c", x, 6, (3, 3), feature_group_count=groups, init=init
    )


@pytest.mark.parametrize("kind", ["functional", "flax"])
def test_unit_alpha_of_a_grouped_conv_is_one_per_input_channel(kind):
    site, model = grouped_conv_model(kind, groups=2)  # kernel (3, 3, 2, 6): 3 outputs/group
    guide = vd.AutoVariationalDropout(
        model, noise="multiplicative", alpha_shape="unit", init_log_sigma2=-12.0
    )
    guide, params = setup_guide(model, CONV_X, guide=guide)
    assert guide.groups == {site: 2}
    assert guide.prototype_trace[site]["infer"][vd.nn.GROUPS_KEY] == 2
    # kernel [..., j, o] reads input channel (o // 3) * 2 + j
    channel = jnp.array([[(o // 3) * 2 + j for o in range(6)] for j in range(2)])
    channel = jnp.broadcast_to(channel, (3, 3, 2, 6))
    theta = params[f"theta.{site}"]
    per_weight = -12.0 - jnp.log(theta**2 + 1e-8)
    init = jnp.stack([per_weight[channel == c].mean() for c in range(4)])
    log_alpha = params[f"log_alpha.{site}"]
    assert log_alpha.shape == (1, 1, 2, 2, 1)  # entry [0, 0, j, g, 0]: channel g * 2 + j
    assert_close(log_alpha[0, 0, :, :, 0].T.reshape(4), jnp.clip(init, -8.0, 0.0), atol=1e-5)

    rates = jnp.array([-1.0, -2.0, -3.0, -4.0])  # rate of input channel c
    params[f"log_alpha.{site}"] = rates.reshape(2, 2).T[None, None, :, :, None]
    expected = rates[channel]
    assert_close(guide.log_alpha(params)[site], expected, atol=0)
    assert jnp.array_equal(guide.mask(params, threshold=-2.5)[site], channel >= 2)
    fn = guide.get_posterior(params, site)
    assert_close(fn.variance, jnp.exp(expected) * theta**2, rtol=1e-6)
    kl = dist.kl_divergence(fn, vd.LogUniform().expand(theta.shape))
    assert_close(kl, vdkl.kl_log_uniform(expected, "kingma"), rtol=1e-6)
    q = guide.quantiles(params, [0.5, 0.8413447])[site]
    assert_close(q[1] - q[0], jnp.exp(expected / 2) * jnp.abs(theta), rtol=1e-4)
    # what the local reparameterization reads: the deferred site's variance
    with vd.local_reparam():
        tr = trace(seed(substitute(guide, data=params), 0)).get_trace(CONV_X)
    assert_close(tr[f"{site}$lrt_variance"]["value"], fn.variance, atol=0)


def test_unit_alpha_of_an_ungrouped_conv_is_unchanged():
    site, model = grouped_conv_model("functional", groups=1)
    guide = vd.AutoVariationalDropout(model, noise="multiplicative", alpha_shape="unit")
    guide, params = setup_guide(model, CONV_X, guide=guide)
    assert guide.groups == {site: 1}
    assert vd.nn.GROUPS_KEY not in guide.prototype_trace[site]["infer"]
    assert params[f"log_alpha.{site}"].shape == (1, 1, 4, 1)


def test_unbounded_multiplicative_uses_molchanov():
    _, model = make_model()
    guide = vd.AutoVariationalDropout(model, noise="multiplicative", max_log_alpha=None)
    assert guide.kl_approximation == "molchanov"


def test_fixed_alpha_is_gaussian_dropout():
    _, model = make_model()
    guide, params = setup_guide(
        model, X, Y, guide=vd.AutoVariationalDropout(model, fixed_alpha=0.25)
    )
    assert guide.noise == "multiplicative"
    assert not any("log_alpha" in k or "log_sigma2" in k for k in params)
    assert_close(guide.log_alpha(params)["Dense_1.kernel"], jnp.full((6, 3), math.log(0.25)))


def test_additive_log_alpha_mask_and_pruned_median():
    _, model = make_model()
    guide, params = setup_guide(model, X, Y)
    theta = params["theta.Dense_0.kernel"]
    # huge noise on the first 3 input units: their outgoing weights get pruned
    params["log_sigma2.Dense_0.kernel"] = params["log_sigma2.Dense_0.kernel"].at[:3].set(5.0)
    expected = vdkl.log_alpha_from_sigma2(theta, params["log_sigma2.Dense_0.kernel"])
    assert_close(guide.log_alpha(params)["Dense_0.kernel"], expected)
    mask = guide.mask(params)["Dense_0.kernel"]
    assert jnp.array_equal(mask, expected < 3.0) and not mask[:3].any() and mask[3:].all()
    pruned = guide.pruned_median(params)["Dense_0.kernel"]
    assert (pruned[:3] == 0).all() and jnp.array_equal(pruned[3:], theta[3:])


def test_median_quantiles_and_sample_posterior():
    _, model = make_model()
    guide, params = setup_guide(model, X, Y)
    q = guide.quantiles(params, [0.1, 0.5, 0.9])
    med = guide.median(params)
    for name in med:
        assert_close(q[name][1], med[name], atol=1e-6)
        assert (q[name][0] <= q[name][2]).all()
    assert (med["noise"] > 0).all()  # constrained site, transformed back
    draws = guide.sample_posterior(jax.random.key(0), params, X, sample_shape=(7,))
    assert draws["Dense_0.kernel"].shape == (7, 4, 6) and draws["noise"].shape == (7,)
    assert (draws["noise"] > 0).all()
    assert draws["logits"].shape == (7, 5, 3)  # the model's deterministic sites, as AutoNormal
    assert "logits" not in guide.sample_posterior(jax.random.key(0), params)


def test_kl_is_analytic_for_dropout_sites():
    # ELBO with no data term equals sum KL computed from vdppl.kl directly.
    bnn = vd.bayesianize(
        nn.Dense(2), (1, 3), variables=variables_like(nn.Dense(2), jnp.ones((1, 3)))
    )

    def model(x):
        bnn(x)

    x = jnp.ones((1, 3))
    guide, params = setup_guide(model, x)
    loss = vd.LocalReparamELBO().loss(jax.random.key(1), params, model, guide, x)
    la = guide.log_alpha(params)["kernel"]
    assert_close(loss, vdkl.kl_molchanov(la).sum(), rtol=1e-6)
    mean_field = TraceMeanField_ELBO().loss(jax.random.key(1), params, model, guide, x)
    assert_close(mean_field, loss, rtol=1e-6)


def test_kl_weight_scales_only_the_kl():
    bnn = vd.bayesianize(nn.Dense(3), X, variables=variables_like(nn.Dense(3), X))

    def model(x, y):
        out = bnn(x)
        with numpyro.plate("data", 5):
            numpyro.sample("y", dist.Normal(out, 1.0).to_event(1), obs=y)

    guide, params = setup_guide(model, X, Y)
    key = jax.random.key(3)
    full = vd.LocalReparamELBO().loss(key, params, model, guide, X, Y)
    data_only = vd.LocalReparamELBO(kl_weight=0.0).loss(key, params, model, guide, X, Y)
    kl = vdkl.kl_molchanov(guide.log_alpha(params)["kernel"]).sum()
    # full - data_only cancels the shared data term: float32 rounding of a sum of ~100
    assert_close(full - data_only, kl, rtol=1e-4)
    # the per-call keyword, traced under jit, gives the same as the constructor value
    elbo = vd.LocalReparamELBO()
    traced = jax.jit(lambda b: elbo.loss(key, params, model, guide, X, Y, kl_weight=b))
    assert_close(traced(jnp.float32(0.0)), data_only, rtol=1e-6)
    assert_close(traced(jnp.float32(1.0)), full, rtol=1e-6)
    with pytest.raises(ValueError, match="Expected kl_weight >= 0"):
        vd.LocalReparamELBO(kl_weight=-1.0)
    with pytest.raises(ValueError, match="Expected kl_weight >= 0"):
        elbo.kl_weight = float("nan")
    with pytest.raises(TypeError, match="kl_weight must be a number"):
        vd.kl_weight(beta="warm")


def test_trains_with_svi():
    _, model = make_model()
    guide = vd.AutoVariationalDropout(model)
    svi = SVI(model, guide, numpyro.optim.Adam(1e-2), vd.LocalReparamELBO())
    x, y = normal(50, 4, seed=4), normal(50, 3, seed=5)
    losses = fit(svi, 300, x, y)
    assert jnp.isfinite(losses).all()
    assert losses[-20:].mean() < losses[:20].mean()


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
    with pytest.raises(ValueError, match=match):
        vd.AutoVariationalDropout(lambda: None, **options)


def test_bad_threshold_and_bad_params():
    _, model = make_model()
    guide, params = setup_guide(model, X, Y)
    with pytest.raises(ValueError, match="outside"):
        guide.mask(params, threshold=100.0)
    with pytest.raises(KeyError, match="pass the parameters of this guide"):
        guide.median({})


def test_model_without_log_uniform_sites():
    def model():
        numpyro.sample("z", dist.Normal(0.0, 1.0))

    with pytest.raises(ValueError, match="no latent site with a LogUniform prior"):
        seed(vd.AutoVariationalDropout(model), 0)()


def test_log_uniform_site_without_initial_value():
    def model():
        numpyro.sample("w", vd.LogUniform().expand([3]).to_event(1))

    with pytest.raises(ImproperPriorError, match="no initial value"):
        seed(vd.AutoVariationalDropout(model), 0)()
    with pytest.raises(ValueError, match="has NaN or inf"):
        nan = init_to_value(values={"w": jnp.array([1.0, jnp.nan, 2.0])})
        seed(vd.AutoVariationalDropout(model, init_loc_fn=nan), 0)()


def test_weights_inside_a_subsampled_plate():
    def model(x):
        with numpyro.plate("data", 100, subsample_size=x.shape[0]):
            vd.nn.dense("fc", x, 2)

    with pytest.raises(ValueError, match="inside the subsampled plate"):
        seed(vd.AutoVariationalDropout(model), 0)(jnp.ones((4, 3)))


def test_summaries_before_the_first_call_and_setup_without_a_key():
    _, model = make_model()
    with pytest.raises(RuntimeError, match="call it once"):
        vd.AutoVariationalDropout(model).log_alpha({})
    with pytest.raises(RuntimeError, match="needs a PRNG key"), numpyro.handlers.block():
        vd.AutoVariationalDropout(model)(X, Y)


def test_same_model_trains_with_autonormal_and_sampled_weights():
    # Without local_reparam the layers use sampled kernels, so NumPyro's own guides work
    # once their init strategy can read the initial kernels; AutoNormal also has the same
    # latent sites and shapes as AutoVariationalDropout.
    _, model = make_model()
    guide = AutoNormal(model, init_loc_fn=vd.init_to_module)
    svi = SVI(model, guide, numpyro.optim.Adam(1e-2), Trace_ELBO())
    x, y = normal(50, 4, seed=4), normal(50, 3, seed=5)
    losses = fit(svi, 200, x, y)
    assert jnp.isfinite(losses).all()
    assert losses[-10:].mean() < losses[:10].mean()
    theirs = trace(seed(guide, 0)).get_trace(x, y)
    shapes = {n: jnp.shape(s["value"]) for n, s in theirs.items() if s["type"] == "sample"}
    assert shapes == {
        "Dense_0.kernel": (4, 6),
        "Dense_1.kernel": (6, 3),
        "noise": (),
        "shift": (3,),
    }


def test_discrete_latent_sites_and_unknown_site_names():
    def model():
        vd.nn.dense("fc", jnp.ones((1, 2)), 2, init=jnp.ones((2, 2)))
        numpyro.sample("k", dist.Bernoulli(0.5))

    with pytest.raises(ValueError, match="cannot handle the discrete latent site 'k'"):
        seed(vd.AutoVariationalDropout(model), 0)()
    _, model = make_model()
    guide, params = setup_guide(model, X, Y)
    with pytest.raises(KeyError, match="no latent site named 'fc9.kernel'"):
        guide.get_posterior(params, "fc9.kernel")


def test_lazy_initial_values_need_a_key():
    site = {
        "type": "sample",
        "name": "w",
        "is_observed": False,
        "fn": vd.LogUniform().expand([2]).to_event(1),
        "infer": {"vdppl_init": lambda key: jnp.ones(2)},
        "kwargs": {"rng_key": None},
    }
    with pytest.raises(ValueError, match="lazy initial value that needs a PRNG key"):
        vd.init_to_module(site)
    site["kwargs"]["rng_key"] = jax.random.key(0)
    assert_close(vd.init_to_module(site), jnp.ones(2))


def test_setup_under_jit_is_refused_and_leaves_nothing_behind():
    # a jitted svi.init would cache traced initial values in the guide (a leaked tracer)
    model = mlp_model()
    svi = SVI(
        model, vd.AutoVariationalDropout(model), numpyro.optim.Adam(1e-2), vd.LocalReparamELBO()
    )
    with pytest.raises(RuntimeError, match=r"Call svi.init\(...\) outside jax.jit"):
        jax.jit(svi.init)(jax.random.key(0), X, Y)
    assert svi.guide.prototype_trace is None and svi.guide._specs == {}
    svi.init(jax.random.key(0), X, Y)  # eagerly it works (test_trains_with_svi jits steps)
    specs = svi.guide._specs.values()
    assert all(is_concrete(init) for s in specs for init, _ in s.values())
