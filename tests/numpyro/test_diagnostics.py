"""InferenceData from a NumPyro fit: groups, dims, chunking, ArviZ functions, bad inputs."""

import warnings

import arviz as az
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

import vdppl.numpyro as vd

from .helpers import normal, setup_guide, variables_like


class MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = nn.relu(nn.Dense(10)(x))  # Dense_0: Flax names layers as they are built
        return nn.Dense(3)(h)


X = normal(30, 8, seed=0)
Y = jnp.asarray(np.random.default_rng(1).integers(0, 3, 30))
BNN = vd.bayesianize(MLP(), X, variables=variables_like(MLP(), X))


def model(x, y=None):
    logits = numpyro.deterministic("logits", BNN(x))
    with numpyro.plate("data", x.shape[0]):
        numpyro.sample("y", dist.Categorical(logits=logits), obs=y)


@pytest.fixture(scope="module")
def fitted():
    guide = vd.AutoVariationalDropout(model, init_log_sigma2=-3.0)  # visibly noisy draws
    return setup_guide(model, X, Y, guide=guide)


@pytest.fixture(scope="module")
def idatas(fitted):
    """One InferenceData per mode (12 draws); "lrt" in chunks of 20 rows (30 = 20 + 10)."""
    guide, params = fitted
    out = {}
    for mode in ("lrt", "mc", "mean"):
        chunk_size = 20 if mode == "lrt" else 1000
        out[mode] = vd.to_inference_data(
            model, guide, params, jax.random.key(0), X, Y, num_samples=12, mode=mode,
            chunk_size=chunk_size,
        )  # fmt: skip
    return out


@pytest.mark.parametrize("mode", ["lrt", "mc", "mean"])
def test_groups_dims_and_attrs(idatas, mode):
    idata = idatas[mode]
    assert set(idata.groups()) == {
        "posterior", "posterior_predictive", "log_likelihood", "observed_data",
        "constant_data", "log_alpha",
    }  # fmt: skip
    kernel = idata.posterior["Dense_1.kernel"]  # the smallest weight site, Flax layout
    assert kernel.dims == ("chain", "draw", "Dense_1.kernel_in", "Dense_1.kernel_out")
    assert kernel.shape == (1, 12, 10, 3) and "Dense_0.kernel" not in idata.posterior
    assert idata.posterior_predictive["logits"].dims == ("chain", "draw", "obs_id", "class")
    assert idata.posterior_predictive["y"].shape == (1, 12, 30)
    assert idata.log_likelihood["y"].shape == (1, 12, 30)
    assert idata.observed_data["y"].dims == ("obs_id",)
    assert idata.constant_data["x"].dims == ("obs_id", "x_dim_0")
    assert idata.log_alpha["Dense_0.kernel"].dims == ("Dense_0.kernel_in", "Dense_0.kernel_out")
    assert all(idata[g].attrs["backend"] == "numpyro" for g in idata.groups())
    logits = idata.posterior_predictive["logits"].values[0]
    if mode == "mean":
        assert np.ptp(logits, axis=0).max() == 0  # one deterministic network
        assert np.ptp(np.asarray(idata.posterior["Dense_1.kernel"]), axis=1).max() == 0
    else:
        assert logits.std(0).min() > 0
    # the log likelihood is the model's own: log softmax(logits)[y] per draw and example
    expected = jax.nn.log_softmax(logits)[..., np.arange(30), np.asarray(Y)]
    np.testing.assert_allclose(idata.log_likelihood["y"].values[0], expected, atol=1e-5)


def test_loo_runs_and_netcdf_round_trip(idatas, tmp_path):
    idata = idatas["lrt"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # few draws: Pareto k warnings are expected here
        loo = az.loo(idata)
    assert np.isfinite(loo.elpd_loo)
    path = tmp_path / "idata.nc"
    idata.to_netcdf(path)
    assert az.from_netcdf(path).posterior_predictive["logits"].shape == (1, 12, 30, 3)


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        ({"mode": "median"}, ValueError, "mode must be one of"),
        ({"num_samples": 0}, ValueError, "num_samples must be a positive int"),
        ({"chunk_size": -1}, ValueError, "chunk_size must be a positive int"),
        ({"x": [[1.0] * 8]}, TypeError, "x and y must be arrays"),
        ({"x": X[:0], "y": Y[:0]}, ValueError, "the data set is empty"),
        ({"y": Y[:5]}, ValueError, "x has 30 rows but y has 5"),
        ({"weight_sites": ["fc9.kernel"]}, ValueError, "unknown weight site"),
        ({"rng_key": None}, ValueError, "needs an explicit rng_key"),
        ({"threshold": 12.0}, ValueError, "outside"),
    ],
    ids=str,
)
def test_bad_inputs(fitted, kwargs, error, match):
    guide, params = fitted
    options = {"x": X, "y": Y, "rng_key": jax.random.key(0), **kwargs}
    x, y, key = options.pop("x"), options.pop("y"), options.pop("rng_key")
    with pytest.raises(error, match=match):
        vd.to_inference_data(model, guide, params, key, x, y, **options)


def test_guide_not_set_up():
    with pytest.raises(RuntimeError, match="fit the guide first"):
        vd.to_inference_data(
            model, vd.AutoVariationalDropout(model), {}, jax.random.key(0), X, Y, weight_sites=[]
        )
