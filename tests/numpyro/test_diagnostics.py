"""InferenceData from a NumPyro fit: groups, dims, chunking, ArviZ functions, bad inputs."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro.infer.autoguide import AutoDelta

import vdppl.numpyro as vd
from tests.diagnostics.arviz_checks import assert_arviz_functions_work, assert_netcdf_round_trip

from .conftest import assert_close
from .helpers import normal, setup_guide, variables_like

matplotlib.use("Agg")


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
    """One InferenceData per mode (12 draws); "lrt" in chunks of 20 rows (30 = 20 + 10)
    and the default 10 draws (12 = 10 + 2), so both last chunks are padded."""
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
    for group in idata.groups():
        attrs = idata[group].attrs
        assert attrs["backend"] == "numpyro" and attrs["method"] == "sparse-vd"
        assert attrs["weight_layout"] == "kernel_in_out" and attrs["mode"] == mode
    logits = idata.posterior_predictive["logits"].values[0]
    if mode == "mean":
        assert np.ptp(logits, axis=0).max() == 0  # one deterministic network
        assert np.ptp(np.asarray(idata.posterior["Dense_1.kernel"]), axis=1).max() == 0
    else:
        assert logits.std(0).min() > 0
    # the log likelihood is the model's own: log softmax(logits)[y] per draw and example
    expected = jax.nn.log_softmax(logits)[..., np.arange(30), np.asarray(Y)]
    np.testing.assert_allclose(idata.log_likelihood["y"].values[0], expected, atol=1e-5)


def test_arviz_functions_work(idatas, tmp_path):
    assert_arviz_functions_work(idatas["lrt"], idatas["mc"], "Dense_1.kernel", tmp_path)


def test_netcdf_round_trip_loses_nothing(idatas, tmp_path):
    assert_netcdf_round_trip(idatas["lrt"], tmp_path)


def draws_of(idata):
    return {
        (g, v): idata[g][v].values
        for g, v in [
            ("posterior_predictive", "logits"),
            ("posterior_predictive", "y"),
            ("log_likelihood", "y"),
            ("posterior", "Dense_1.kernel"),
        ]
    }


def test_lrt_draws_do_not_depend_on_chunking(fitted, idatas):
    # Same key: each row's noise comes from (draw, row) alone, so one chunk of rows and
    # one of draws reproduces the fixture's 20 + 10 rows and 10 + 2 draws.
    guide, params = fitted
    whole = vd.to_inference_data(
        model, guide, params, jax.random.key(0), X, Y, num_samples=12, chunk_size=1000,
        draw_chunk_size=12,
    )  # fmt: skip
    chunked = draws_of(idatas["lrt"])
    for name, value in draws_of(whole).items():
        # float32 rounding: XLA may sum a different batch shape in a different order
        assert_close(value, chunked[name], atol=1e-5, msg=str(name))


def test_mc_draws_hold_the_weights_used_and_do_not_depend_on_chunking(fitted, idatas):
    guide, params = fitted
    idata = vd.to_inference_data(
        model, guide, params, jax.random.key(0), X, Y, num_samples=12, mode="mc",
        chunk_size=7, draw_chunk_size=5, weight_sites=["Dense_0.kernel", "Dense_1.kernel"],
    )  # fmt: skip
    whole = draws_of(idatas["mc"])
    for name, value in draws_of(idata).items():
        assert_close(value, whole[name], atol=1e-5, msg=str(name))  # float32 rounding
    # each draw's logits, recomputed from the stored kernels of both layers
    k0, k1 = (idata.posterior[n].values[0] for n in ("Dense_0.kernel", "Dense_1.kernel"))
    hidden = jax.nn.relu(np.asarray(X) @ k0 + params["Dense_0.bias"])
    logits = hidden @ k1 + params["Dense_1.bias"]
    assert_close(idata.posterior_predictive["logits"].values[0], logits, atol=1e-5)


def test_chunks_of_the_same_size_get_independent_noise(fitted):
    # Rows 0-9 twice, in two chunks of 10: the copies must not share LRT noise. Their
    # deviations from the draws' mean are uncorrelated in distribution; with 12 draws x
    # 10 rows x 3 classes the sample correlation has sd ~0.05 (-0.05 here; 0.3 is 6 sd),
    # while noise reused per chunk shape would make the copies identical (correlation 1).
    guide, params = fitted
    x2, y2 = jnp.concatenate([X[:10], X[:10]]), jnp.concatenate([Y[:10], Y[:10]])
    idata = vd.to_inference_data(
        model, guide, params, jax.random.key(0), x2, y2, num_samples=12, chunk_size=10
    )
    logits = idata.posterior_predictive["logits"].values[0]
    deviation = logits - logits.mean(0)
    corr = np.corrcoef(deviation[:, :10].ravel(), deviation[:, 10:].ravel())[0, 1]
    assert abs(corr) < 0.3


def test_regression_latent_sites_and_method_from_the_guide():
    def regression(x, y=None):
        mean = vd.nn.dense("fc", x, 1)[..., 0]
        sigma = numpyro.sample("sigma", dist.LogNormal(0.0, 1.0))
        with numpyro.plate("data", x.shape[0]):
            numpyro.sample("y", dist.Normal(mean, sigma), obs=y)

    x, y = normal(12, 2, seed=3), normal(12, seed=4)
    guide = vd.AutoVariationalDropout(regression, noise="multiplicative", alpha_shape="unit")
    guide, params = setup_guide(regression, x, y, guide=guide)
    idata = vd.to_inference_data(
        regression, guide, params, jax.random.key(1), x, y, num_samples=4, include_x=False
    )
    assert idata.posterior["sigma"].shape == (1, 4) and (idata.posterior["sigma"] > 0).all()
    assert idata.posterior["fc.kernel"].dims == ("chain", "draw", "fc.kernel_in", "fc.kernel_out")
    assert "constant_data" not in idata.groups()
    assert idata.posterior.attrs["method"] == "vd-a"  # multiplicative, one alpha per input


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
        ({"draw_chunk_size": 0}, ValueError, "draw_chunk_size must be a positive integer"),
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


def test_a_point_estimate_is_refused(fitted):
    guide, params = fitted
    with pytest.raises(TypeError, match="needs a fitted vdppl.numpyro.AutoVariationalDropout"):
        vd.to_inference_data(model, AutoDelta(model), params, jax.random.key(0), X, Y)


def test_a_global_deterministic_site_is_refused(fitted):
    def with_total(x, y=None):
        model(x, y)
        numpyro.deterministic("total", jnp.zeros(()))

    guide, params = fitted
    with pytest.raises(ValueError, match="deterministic site 'total' has shape"):
        vd.to_inference_data(with_total, guide, params, jax.random.key(0), X, Y, num_samples=2)
