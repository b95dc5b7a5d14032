"""InferenceData from a Pyro fit: groups, dims, ArviZ functions, netCDF round trip."""

import warnings

import arviz as az
import matplotlib
import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI
from pyro.infer.autoguide import AutoDelta

import vdppl.pyro as vd
from tests.diagnostics.arviz_checks import assert_arviz_functions_work, assert_netcdf_round_trip
from vdppl.datasets import load_digits
from vdppl.diagnostics.loo import UnreliableLOOWarning, elpd_loo

matplotlib.use("Agg")


@pytest.fixture(scope="module")
def fitted():
    """A 64-32-10 sparse-VD classifier fitted for 15 epochs on digits (seed 0)."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    data = load_digits()
    x, y = torch.as_tensor(data.x_train), torch.as_tensor(data.y_train)
    bnn = vd.bayesianize(
        torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
    )

    def model(x, y=None):
        logits = pyro.deterministic("logits", bnn(x))
        with pyro.plate("data", len(data.x_train), subsample=torch.arange(len(x))):
            pyro.sample("y", dist.Categorical(logits=logits), obs=y)

    guide = vd.AutoVariationalDropout(model)
    elbo = vd.LocalReparamELBO()
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 1e-2}), elbo)
    for epoch in range(15):
        elbo.kl_weight = min(1.0, epoch / 5)
        for batch in torch.randperm(len(x)).split(100):
            svi.step(x[batch], y[batch])
    store = pyro.get_param_store().get_state()
    x_test, y_test = torch.as_tensor(data.x_test[:120]), torch.as_tensor(data.y_test[:120])
    return model, guide, store, x_test, y_test


@pytest.fixture
def idata(fitted):
    model, guide, store, x, y = fitted
    pyro.get_param_store().set_state(store)
    pyro.set_rng_seed(1)
    return vd.to_inference_data(
        model, guide, x, y, num_samples=40, weight_sites=["2.weight"], chunk_size=50
    )


def test_groups_dims_and_attrs(idata):
    assert set(idata.groups()) == {
        "posterior",
        "posterior_predictive",
        "log_likelihood",
        "observed_data",
        "constant_data",
        "log_alpha",
    }
    assert idata.posterior["2.weight"].dims == ("chain", "draw", "2.weight_out", "2.weight_in")
    assert idata.posterior["2.weight"].shape == (1, 40, 10, 32)
    assert "0.weight" not in idata.posterior  # weights only when asked for
    assert idata.posterior_predictive["y"].dims == ("chain", "draw", "obs_id")
    assert idata.posterior_predictive["logits"].dims == ("chain", "draw", "obs_id", "class")
    assert idata.log_likelihood["y"].shape == (1, 40, 120)
    assert idata.observed_data["y"].dims == ("obs_id",)
    assert idata.constant_data["x"].dims == ("obs_id", "x_dim_0")
    assert idata.log_alpha["0.weight"].dims == ("0.weight_out", "0.weight_in")
    for group in idata.groups():
        attrs = idata[group].attrs
        assert attrs["backend"] == "pyro" and attrs["noise"] == "additive"
        assert attrs["method"] == "sparse-vd" and attrs["weight_layout"] == "out_in"
        assert attrs["threshold"] == 3.0 and "torch_version" in attrs


def test_log_likelihood_is_the_categorical_log_prob(idata):
    logits = torch.as_tensor(idata.posterior_predictive["logits"].values[0])
    y = torch.as_tensor(idata.observed_data["y"].values)
    expected = torch.log_softmax(logits, -1).gather(-1, y.expand(len(logits), -1)[..., None])[
        ..., 0
    ]
    np.testing.assert_allclose(
        idata.log_likelihood["y"].values[0], expected.numpy(), rtol=1e-5, atol=1e-5
    )


def test_arviz_functions_work(idata, fitted, tmp_path):
    model, guide, store, x, y = fitted
    pyro.set_rng_seed(2)
    other = vd.to_inference_data(model, guide, x, y, num_samples=40, mode="mc")
    assert_arviz_functions_work(idata, other, "2.weight", tmp_path)


def test_netcdf_round_trip_loses_nothing(idata, tmp_path):
    assert_netcdf_round_trip(idata, tmp_path)


def test_elpd_loo_reports_pareto_k(idata):
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        result = elpd_loo(idata)
    assert np.isfinite(result["elpd_loo"]) and result["n"] == 120
    assert 0.0 <= result["pareto_k_share_above_0.7"] <= 1.0


def test_unreliable_loo_warns():
    # A point whose log-likelihood is extreme in one draw has a heavy importance-weight tail.
    rng = np.random.default_rng(0)
    ll = rng.normal(-1.0, 0.1, size=(50, 20))
    ll[:, 0] = rng.standard_cauchy(50) * 50 - 60
    idata = az.from_dict(log_likelihood={"y": ll[None]}, posterior={"a": rng.normal(size=(1, 50))})
    with pytest.warns(UnreliableLOOWarning, match="Pareto k > 0.7"):
        result = elpd_loo(idata)
    assert result["pareto_k_share_above_0.7"] > 0


def test_default_posterior_is_the_smallest_layer(fitted):
    model, guide, store, x, y = fitted
    pyro.get_param_store().set_state(store)
    idata = vd.to_inference_data(model, guide, x, y, num_samples=3)
    assert list(idata.posterior.data_vars) == ["2.weight"]


def test_chunks_share_the_draws_weights(fitted):
    model, guide, store, x, y = fitted
    pyro.get_param_store().set_state(store)
    out = {}
    for chunk in (7, 1000):
        pyro.set_rng_seed(3)
        out[chunk] = vd.to_inference_data(
            model, guide, x, y, num_samples=2, mode="mc", chunk_size=chunk
        )
    first = [out[c].posterior_predictive["logits"].values[0, 0] for c in (7, 1000)]
    np.testing.assert_allclose(first[0], first[1], rtol=1e-5, atol=1e-5)
    mean = vd.to_inference_data(model, guide, x, y, num_samples=2, mode="mean", chunk_size=13)
    logits = mean.posterior_predictive["logits"].values[0]
    np.testing.assert_array_equal(logits[0], logits[1])  # the pruned mean network


def test_mc_posterior_holds_the_weights_the_model_used(fitted):
    # Recomputing each draw's logits from the stored weights of both layers gives the
    # stored logits: the posterior group holds the weights behind the predictions.
    model, guide, store, x, y = fitted
    pyro.get_param_store().set_state(store)
    idata = vd.to_inference_data(
        model, guide, x, y, num_samples=3, mode="mc", weight_sites=["0.weight", "2.weight"]
    )
    w0, w2 = (torch.as_tensor(idata.posterior[n].values[0]) for n in ("0.weight", "2.weight"))
    b0, b2 = (pyro.param(n).detach() for n in ("0.bias", "2.bias"))
    logits = torch.relu(x @ w0.mT + b0) @ w2.mT + b2
    # float32 rounding of two 64- and 32-term dot products
    np.testing.assert_allclose(
        idata.posterior_predictive["logits"].values[0], logits.numpy(), rtol=1e-5, atol=1e-5
    )


def test_regression_latent_sites_in_posterior():
    bnn = vd.bayesianize(torch.nn.Linear(2, 1))

    def model(x, y=None):
        mean = bnn(x).squeeze(-1)
        sigma = pyro.sample("sigma", dist.LogNormal(0.0, 1.0))
        with pyro.plate("data", len(x)):
            pyro.sample("y", dist.Normal(mean, sigma), obs=y)

    x, y = torch.randn(30, 2), torch.randn(30)
    guide = vd.AutoVariationalDropout(model, fixed_alpha=1.0)  # Gaussian dropout, p = 0.5
    guide(x, y)
    idata = vd.to_inference_data(model, guide, x, y, num_samples=5, include_x=False)
    assert idata.posterior["sigma"].shape == (1, 5) and (idata.posterior["sigma"] > 0).all()
    assert "constant_data" not in idata.groups()
    assert idata.posterior.attrs["method"] == "gaussian-dropout"  # read from the guide
    named = vd.to_inference_data(model, guide, x, y, num_samples=2, method="gradreg")
    assert named.posterior.attrs["method"] == "gradreg"  # an explicit method wins


def test_bad_inputs(fitted):
    model, guide, store, x, y = fitted
    with pytest.raises(ValueError, match="x has 120 rows but y has 119"):
        vd.to_inference_data(model, guide, x, y[:-1])
    with pytest.raises(ValueError, match="the data set is empty"):
        vd.to_inference_data(model, guide, x[:0], y[:0])
    with pytest.raises(ValueError, match="unknown weight site"):
        vd.to_inference_data(model, guide, x, y, weight_sites=["fc.weight"])
    with pytest.raises(ValueError, match="mode must be one of"):
        vd.to_inference_data(model, guide, x, y, mode="map")
    with pytest.raises(ValueError, match="chunk_size must be a positive int"):
        vd.to_inference_data(model, guide, x, y, chunk_size=0)
    with pytest.raises(TypeError, match="must be torch tensors"):
        vd.to_inference_data(model, guide, x.numpy(), y)
    with pytest.raises(ValueError, match=r"threshold=12.0 is outside \(-8.0, 8.0\)"):
        vd.to_inference_data(model, guide, x, y, threshold=12.0)


def test_a_point_estimate_is_refused(fitted):
    model, guide, store, x, y = fitted
    with pytest.raises(TypeError, match="needs a fitted vdppl.pyro.AutoVariationalDropout"):
        vd.to_inference_data(model, AutoDelta(model), x, y)
