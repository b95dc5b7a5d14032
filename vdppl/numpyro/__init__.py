"""vdppl's NumPyro backend: variational dropout as NumPyro SVI.

The same names as :mod:`vdppl.pyro`, shaped the NumPyro way: parameters passed
explicitly (``svi.get_params(state)``), PRNG keys explicit, everything ``jit``-able.
A user writes::

    import jax, jax.numpy as jnp, flax.linen as nn, numpyro, numpyro.distributions as dist
    from numpyro.infer import SVI, Predictive
    import vdppl.numpyro as vd

    bnn = vd.bayesianize(flax_mlp, (1, 784), rng_key=jax.random.key(0))  # LogUniform priors

    def model(x, y=None):
        logits = bnn(x)
        with numpyro.plate("data", N, subsample_size=x.shape[0]):
            numpyro.sample("y", dist.Categorical(logits=logits), obs=y)

    guide = vd.AutoVariationalDropout(model)            # sparse VD by default
    svi = SVI(model, guide, numpyro.optim.Adam(1e-3), vd.LocalReparamELBO())
    state = svi.init(jax.random.key(1), x[:100], y[:100])
    step = jax.jit(svi.update)
    state, loss = step(state, xb, yb, kl_weight=jnp.float32(beta))  # KL warm-up, no recompile
    params = svi.get_params(state)
    print(vd.sparsity_report(guide, params))
    small = vd.compress(bnn, guide, params)   # dead units removed; small(x) runs it

Networks:

* Flax **linen** modules through :func:`bayesianize`: ``nn.Dense`` and ``nn.Conv`` get
  priors (routed through vdppl's primitives with :func:`flax.linen.intercept_methods`, the
  module's code unchanged); normalisation layers and ``PReLU`` stay point estimates.
  Not supported, with an error that names them: the NNX API (``flax.nnx``),
  ``DenseGeneral``, ``Einsum``, ``ConvTranspose``, ``ConvLocal``, ``Embed``, RNN cells,
  attention, weight-reparameterising wrappers and non-float32 layers (the full list is
  in :mod:`vdppl.numpyro.nn`).
* Models written by hand use :func:`vdppl.numpyro.nn.dense` / :func:`vdppl.numpyro.nn.conv`;
  the effectful primitives themselves are :func:`dense` and :func:`conv` (Flax layouts).

:func:`compress` returns a :class:`~vdppl.numpyro.sparsity.CompressedNetwork` for MLPs
and convolutional chains (LeNet-5, BatchNorm between layers): ``small(x)`` runs the Flax
module with the smaller layers, ``small.variables`` / ``small.features`` feed a module
rebuilt with the smaller widths, and :func:`mlp_apply` is the plain function of a Dense
chain. Call ``svi.init`` eagerly (outside ``jax.jit``); jit ``svi.update``.

>>> import jax, flax.linen as nn, vdppl.numpyro as vd
>>> bnn = vd.bayesianize(nn.Dense(3), (1, 4), rng_key=jax.random.key(0))
>>> bnn.sites
['kernel']
"""

from vdppl._optional import require

require("jax", "numpyro")
require("numpyro", "numpyro")

from vdppl.numpyro import nn  # noqa: E402
from vdppl.numpyro.checkpoint import load, save  # noqa: E402
from vdppl.numpyro.diagnostics import to_inference_data  # noqa: E402
from vdppl.numpyro.distributions import DropoutNormal, LogUniform  # noqa: E402
from vdppl.numpyro.elbo import LocalReparamELBO  # noqa: E402
from vdppl.numpyro.gradreg import GradientRegularizedELBO, variance_lr  # noqa: E402
from vdppl.numpyro.guide import AutoVariationalDropout  # noqa: E402
from vdppl.numpyro.init import init_to_module  # noqa: E402
from vdppl.numpyro.kl_weight_messenger import KLWeightMessenger, kl_weight  # noqa: E402
from vdppl.numpyro.local_reparam_messenger import (  # noqa: E402
    LocalReparamMessenger,
    local_reparam,
)
from vdppl.numpyro.nn import BayesianModule, bayesianize  # noqa: E402
from vdppl.numpyro.ops import conv, dense  # noqa: E402
from vdppl.numpyro.predict import predict  # noqa: E402
from vdppl.numpyro.sparsity import (  # noqa: E402
    CompressedNetwork,
    SparsityReport,
    compress,
    mlp_apply,
    pruned_variables,
    sparsity_report,
)

__all__ = [
    "AutoVariationalDropout",
    "BayesianModule",
    "CompressedNetwork",
    "DropoutNormal",
    "GradientRegularizedELBO",
    "KLWeightMessenger",
    "LocalReparamELBO",
    "LocalReparamMessenger",
    "LogUniform",
    "SparsityReport",
    "bayesianize",
    "compress",
    "conv",
    "dense",
    "init_to_module",
    "kl_weight",
    "load",
    "local_reparam",
    "mlp_apply",
    "nn",
    "predict",
    "pruned_variables",
    "save",
    "sparsity_report",
    "to_inference_data",
    "variance_lr",
]
