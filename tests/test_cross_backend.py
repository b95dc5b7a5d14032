"""Pyro and NumPyro backends agree on the same inputs and parameters.

Layouts are converted between the frameworks: a torch Linear weight ``(out, in)`` is the
transpose of a Flax Dense kernel ``(in, out)``; a torch conv weight ``(out, in/groups, *k)``
is a Flax kernel ``(*k, in/groups, out)``, and torch's ``(N, C, *spatial)`` inputs are
channels-last ``(N, *spatial, C)`` in JAX. Tolerances are float32 rounding of the two
libraries' kernels (different summation orders), stated where used.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("pyro")
jax = pytest.importorskip("jax")
pytest.importorskip("numpyro")

import flax.linen as fnn  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpyro.distributions as ndist  # noqa: E402
import pyro  # noqa: E402
import pyro.distributions as pdist  # noqa: E402
from numpyro.distributions.kl import kl_divergence as jax_kl  # noqa: E402
from numpyro.handlers import seed, substitute, trace  # noqa: E402
from torch.distributions import kl_divergence as torch_kl  # noqa: E402

import vdppl.numpyro as vdj  # noqa: E402
import vdppl.numpyro.ops as jops  # noqa: E402
import vdppl.pyro as vdt  # noqa: E402
import vdppl.pyro.ops as tops  # noqa: E402

RNG = np.random.default_rng(0)


def close(a, b, atol=1e-5, rtol=1e-5):
    np.testing.assert_allclose(
        np.asarray(a, np.float64), np.asarray(b, np.float64), atol=atol, rtol=rtol
    )


def to_flax(weight: np.ndarray) -> np.ndarray:
    """torch ``(out, in, *k)`` -> Flax ``(*k, in, out)``."""
    n = weight.ndim
    return np.transpose(weight, (*range(2, n), 1, 0))


def channels_last(x: np.ndarray) -> np.ndarray:
    return np.moveaxis(x, 1, -1)


@pytest.mark.parametrize("approximation", ["molchanov", "kingma"])
def test_same_kl_values(approximation):
    loc = RNG.normal(size=(4, 5)).astype(np.float32)
    log_alpha = RNG.uniform(-8, 0 if approximation == "kingma" else 8, size=(4, 5))
    log_alpha = log_alpha.astype(np.float32)
    var = np.exp(log_alpha) * loc**2
    q_t = vdt.DropoutNormal(
        torch.tensor(loc), torch.tensor(var), torch.tensor(log_alpha), approximation
    )
    q_j = vdj.DropoutNormal(
        jnp.asarray(loc), jnp.asarray(var), jnp.asarray(log_alpha), approximation
    )
    kl_t = torch_kl(q_t.to_event(2), vdt.LogUniform().expand([4, 5]).to_event(2))
    kl_j = jax_kl(q_j.to_event(2), vdj.LogUniform().expand([4, 5]).to_event(2))
    close(kl_t.item(), kl_j, rtol=1e-5)  # a sum of 20 terms in float32
    scale = np.sqrt(var) + 1e-3
    kl_t = torch_kl(
        pdist.Normal(torch.tensor(loc), torch.tensor(scale)), vdt.LogUniform().expand([4, 5])
    )
    kl_j = jax_kl(
        ndist.Normal(jnp.asarray(loc), jnp.asarray(scale)), vdj.LogUniform().expand([4, 5])
    )
    close(kl_t.numpy(), kl_j, atol=1e-6)


CONVS = {
    "linear": (None, (3, 5)),
    "conv1d-stride-padding": ({"stride": 2, "padding": 1, "dilation": 1, "groups": 1}, (2, 2, 9)),
    "conv2d-dilation-groups": (
        {"stride": 1, "padding": 2, "dilation": 2, "groups": 2},
        (2, 4, 6, 6),
    ),
    "conv3d": ({"stride": (1, 2, 1), "padding": 0, "dilation": 1, "groups": 1}, (1, 2, 4, 4, 3)),
}


@pytest.mark.parametrize("name", list(CONVS), ids=str)
def test_same_lrt_means_and_variances(name, monkeypatch):
    options, shape = CONVS[name]
    x = RNG.normal(size=shape).astype(np.float32)
    if options is None:  # torch Linear weight (out, in)
        w_shape = (6, shape[1])
    else:  # torch conv weight (out, in / groups, 3, ..., 3)
        w_shape = (6, shape[1] // options["groups"], *(3,) * (len(shape) - 2))
    loc = RNG.normal(size=w_shape).astype(np.float32)
    var = np.exp(RNG.uniform(-5, 0, size=w_shape)).astype(np.float32)
    bias = RNG.normal(size=6).astype(np.float32)

    def torch_run():
        args = (torch.tensor(x), torch.tensor(loc), torch.tensor(var), torch.tensor(bias))
        if options is None:
            return tops.lrt_linear(*args).numpy()
        o = options
        return tops.lrt_conv(*args, o["stride"], o["padding"], o["dilation"], o["groups"]).numpy()

    def jax_run():
        key = jax.random.key(0)
        if options is None:
            return np.asarray(jops.lrt_dense(key, x, loc.T, var.T, bias))
        o = options
        out = jops.lrt_conv(key, channels_last(x), to_flax(loc), to_flax(var), bias,
                            o["stride"], o["padding"], o["dilation"], o["groups"])  # fmt: skip
        return np.moveaxis(np.asarray(out), -1, 1)

    outputs = {}
    for fill in (0.0, 1.0):  # eps = 0 gives the mean, eps = 1 the mean + sqrt(var + 1e-8)
        monkeypatch.setattr(tops, "_standard_normal", lambda m, f=fill: torch.full_like(m, f))
        monkeypatch.setattr(jops, "_standard_normal", lambda k, s, d, f=fill: jnp.full(s, f, d))
        outputs[fill] = torch_run(), jax_run()
    (mean_t, mean_j), (one_t, one_j) = outputs[0.0], outputs[1.0]
    close(mean_t, mean_j, atol=1e-5)  # sums of <= 36 float32 products
    close((one_t - mean_t) ** 2, (one_j - mean_j) ** 2, atol=1e-5, rtol=1e-4)


def pyro_fit(net: torch.nn.Module, x: torch.Tensor, values: dict):
    """A Pyro guide over ``bayesianize(net)`` with the given theta / log sigma^2."""
    pyro.clear_param_store()
    bnn = vdt.bayesianize(net)
    guide = vdt.AutoVariationalDropout(lambda x: bnn(x))
    guide(x)
    with torch.no_grad():
        for name, (theta, log_sigma2) in values.items():
            pyro.param(f"AutoVariationalDropout.theta.{name}").copy_(torch.tensor(theta))
            pyro.param(f"AutoVariationalDropout.log_sigma2.{name}").copy_(torch.tensor(log_sigma2))
    return guide


def numpyro_fit(module, x, values: dict):
    """The NumPyro guide over ``bayesianize(module)`` with the same values, Flax layout."""
    bnn = vdj.bayesianize(module, x, rng_key=jax.random.key(0))
    guide = vdj.AutoVariationalDropout(lambda x: bnn(x))
    tr = trace(seed(guide, 0)).get_trace(x)
    params = {n: s["value"] for n, s in tr.items() if s["type"] == "param"}
    for name, (theta, log_sigma2) in values.items():
        params[f"theta.{name}"] = jnp.asarray(to_flax(theta))
        params[f"log_sigma2.{name}"] = jnp.asarray(to_flax(log_sigma2))
    return guide, params


def values_for(shapes: dict) -> dict:
    """theta ~ N(0, 0.3) and log sigma^2 ~ U(-8, 0): about a third of log alpha above 3."""
    return {
        name: (
            RNG.normal(scale=0.3, size=shape).astype(np.float32),
            RNG.uniform(-8, 0, size=shape).astype(np.float32),
        )
        for name, shape in shapes.items()
    }


class FlaxNet(fnn.Module):
    @fnn.compact
    def __call__(self, x):
        x = fnn.relu(fnn.Conv(4, (3, 3), padding="VALID")(x))
        x = x.reshape(x.shape[0], -1)
        x = fnn.relu(fnn.Dense(8)(x))
        return fnn.Dense(3)(x)


def torch_net() -> torch.nn.Module:
    """The torch twin of :class:`FlaxNet` (its weights named :data:`TORCH_NAMES`)."""
    return torch.nn.Sequential(
        torch.nn.Conv2d(2, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(),
        torch.nn.Linear(4 * 3 * 3, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3),
    )  # fmt: skip


TORCH_NAMES = ["0.weight", "3.weight", "5.weight"]
FLAX_NAMES = ["Conv_0.kernel", "Dense_0.kernel", "Dense_1.kernel"]


def test_same_masks_and_sparsity_report():
    torch_names, flax_names = TORCH_NAMES, FLAX_NAMES
    shapes = {"0.weight": (4, 2, 3, 3), "3.weight": (8, 36), "5.weight": (3, 8)}
    values = values_for(shapes)
    # make whole units dead, so the dead-unit counts are compared too
    values["3.weight"][1][2:4] = 5.0  # two units of the hidden layer lose all inputs
    values["5.weight"][1][:, 6] = 5.0  # one hidden unit loses all outputs
    x = RNG.normal(size=(1, 2, 5, 5)).astype(np.float32)
    pyro_guide = pyro_fit(torch_net(), torch.tensor(x), values)
    # flattening order differs (torch: C, H, W; Flax: H, W, C): the Dense layer sees the
    # same numbers when its input axis is permuted accordingly
    dense = values["3.weight"]
    perm = np.arange(36).reshape(4, 3, 3).transpose(1, 2, 0).reshape(-1)
    jax_values = dict(
        zip(flax_names, [values["0.weight"], tuple(v[:, perm] for v in dense), values["5.weight"]])
    )
    guide, params = numpyro_fit(FlaxNet(), jnp.asarray(channels_last(x)), jax_values)

    masks_t = pyro_guide.mask()
    masks_j = guide.mask(params)
    for t_name, j_name in zip(torch_names, flax_names):
        mask_t = masks_t[t_name].numpy()
        mask_j = vdj.sparsity.to_out_in(masks_j[j_name])
        if t_name == "3.weight":
            mask_j = mask_j[:, np.argsort(perm)]
        assert np.array_equal(mask_t, mask_j), t_name

    report_t = vdt.sparsity_report(pyro_guide)
    report_j = vdj.sparsity_report(guide, params)
    assert report_t.threshold == report_j.threshold
    assert report_t.compression == report_j.compression
    for lt, lj in zip(report_t.layers, report_j.layers):
        assert (lt.shape, lt.kept, lt.total, lt.dead_outputs, lt.dead_inputs) == (
            lj.shape, lj.kept, lj.total, lj.dead_outputs, lj.dead_inputs,
        )  # fmt: skip
    assert report_j.layers[1].dead_outputs == 2 and report_j.layers[2].dead_inputs == 1


@pytest.mark.parametrize("alpha_shape", ["weight", "unit", "layer"], ids=str)
def test_same_masks_in_multiplicative_mode(alpha_shape):
    """Learned log alpha (variational dropout [1]) set to the same values on both sides;
    masks and reports must match exactly (a comparison of float32 values with 3.0)."""
    torch_names, flax_names = TORCH_NAMES, FLAX_NAMES
    x = RNG.normal(size=(1, 2, 5, 5)).astype(np.float32)
    options = {"noise": "multiplicative", "alpha_shape": alpha_shape, "max_log_alpha": None}

    pyro.clear_param_store()
    bnn_t = vdt.bayesianize(torch_net())
    guide_t = vdt.AutoVariationalDropout(lambda x: bnn_t(x), **options)
    guide_t(torch.tensor(x))
    store = pyro.get_param_store()
    torch_params = {n: next(k for k in store.keys() if "log_alpha" in k and k.endswith(n))
                    for n in torch_names}  # fmt: skip
    # log alpha uniform in (-7, 7): about 30 % of the weights (or units, layers) above 3
    values = {n: RNG.uniform(-7, 7, size=tuple(store[k].shape)).astype(np.float32)
              for n, k in torch_params.items()}  # fmt: skip
    for name, key in torch_params.items():
        store[key] = torch.tensor(values[name])

    bnn_j = vdj.bayesianize(FlaxNet(), jnp.asarray(channels_last(x)), rng_key=jax.random.key(0))
    guide_j = vdj.AutoVariationalDropout(lambda x: bnn_j(x), **options)
    tr = trace(seed(guide_j, 0)).get_trace(jnp.asarray(channels_last(x)))
    params = {n: s["value"] for n, s in tr.items() if s["type"] == "param"}
    perm = np.arange(36).reshape(4, 3, 3).transpose(1, 2, 0).reshape(-1)  # see above
    for t_name, j_name in zip(torch_names, flax_names):
        value = values[t_name]
        if t_name == "3.weight" and value.shape[1] == 36:
            value = value[:, perm]
        params[f"log_alpha.{j_name}"] = jnp.asarray(to_flax(value))
        assert params[f"log_alpha.{j_name}"].shape == tr[f"log_alpha.{j_name}"]["value"].shape

    masks_t, masks_j = guide_t.mask(), guide_j.mask(params)
    for t_name, j_name in zip(torch_names, flax_names):
        mask_j = vdj.sparsity.to_out_in(masks_j[j_name])
        if t_name == "3.weight":
            mask_j = mask_j[:, np.argsort(perm)]
        assert np.array_equal(masks_t[t_name].numpy(), mask_j), t_name
    report_t, report_j = vdt.sparsity_report(guide_t), vdj.sparsity_report(guide_j, params)
    assert report_t.compression == report_j.compression
    for lt, lj in zip(report_t.layers, report_j.layers):
        assert (lt.shape, lt.kept, lt.dead_outputs, lt.dead_inputs) == (
            lj.shape, lj.kept, lj.dead_outputs, lj.dead_inputs,
        )  # fmt: skip


@pytest.mark.parametrize("max_log_alpha", [0.0, None], ids=["kingma", "molchanov"])
def test_same_unit_alpha_of_a_grouped_conv(max_log_alpha):
    """Variational dropout A on a grouped conv (4 -> 6 channels, 2 groups): the same rate
    per input channel on both sides gives the same per-weight log alpha, variance and KL."""
    x = RNG.normal(size=(1, 4, 5, 5)).astype(np.float32)
    options = {"noise": "multiplicative", "alpha_shape": "unit", "max_log_alpha": max_log_alpha}
    theta = RNG.normal(scale=0.3, size=(6, 2, 3, 3)).astype(np.float32)  # (out, in/g, kh, kw)
    rates = np.array([-1.5, -6.0, -0.5, -3.0], np.float32)  # rate of input channel c

    pyro.clear_param_store()
    bnn_t = vdt.bayesianize(torch.nn.Conv2d(4, 6, 3, groups=2))
    guide_t = vdt.AutoVariationalDropout(lambda x: bnn_t(x), **options)
    guide_t(torch.tensor(x))
    store = pyro.get_param_store()
    (key,) = [k for k in store.keys() if "log_alpha" in k]
    assert tuple(store[key].shape) == (2, 1, 2, 1, 1)  # [g, 0, j]: channel g * 2 + j
    store[key] = torch.tensor(rates.reshape(2, 1, 2, 1, 1))
    store["AutoVariationalDropout.theta.weight"] = torch.tensor(theta)

    def model_j(x):  # as flax.linen.Conv(6, (3, 3), feature_group_count=2)
        init = to_flax(theta)
        return vdj.nn.conv("conv", x, 6, (3, 3), padding="VALID", feature_group_count=2, init=init)

    x_j = jnp.asarray(channels_last(x))
    guide_j = vdj.AutoVariationalDropout(model_j, **options)
    tr = trace(seed(guide_j, 0)).get_trace(x_j)
    params = {n: s["value"] for n, s in tr.items() if s["type"] == "param"}
    assert params["log_alpha.conv.kernel"].shape == (1, 1, 2, 2, 1)  # [0, 0, j, g, 0]
    params["log_alpha.conv.kernel"] = jnp.asarray(rates.reshape(2, 2).T[None, None, :, :, None])
    assert np.array_equal(params["theta.conv.kernel"], to_flax(theta))

    channel = (np.arange(6) // 3)[:, None] * 2 + np.arange(2)  # torch weight [o, j]
    expected = np.broadcast_to(rates[channel][..., None, None], theta.shape)
    # Pyro stores an interval-constrained parameter through its logit: float32 round trip
    close(guide_t.log_alpha()["weight"], expected, atol=2e-6, rtol=0)
    close(guide_j.log_alpha(params)["conv.kernel"], to_flax(expected), atol=0, rtol=0)
    # the guides' sample sites: the distributions that sampling, the LRT and the KL use
    fn_t = pyro.poutine.trace(guide_t).get_trace(torch.tensor(x)).nodes["weight"]["fn"]
    fn_j = trace(seed(substitute(guide_j, data=params), 0)).get_trace(x_j)["conv.kernel"]["fn"]
    close(to_flax(fn_t.variance.detach().numpy()), fn_j.variance, atol=0, rtol=1e-5)
    kl_t = torch_kl(fn_t, vdt.LogUniform().expand(theta.shape).to_event(4)).item()
    kl_j = jax_kl(fn_j, vdj.LogUniform().expand(to_flax(theta).shape).to_event(4))
    close(kl_t, kl_j, rtol=1e-5)  # a sum of 108 float32 terms
