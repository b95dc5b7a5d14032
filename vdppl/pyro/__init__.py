"""vdppl's Pyro backend: variational dropout as Pyro SVI.

>>> import torch, vdppl.pyro as vd
>>> bnn = vd.bayesianize(torch.nn.Sequential(torch.nn.Linear(4, 3)))
>>> type(bnn[0]).__name__
'BayesLinear'
"""

from vdppl._optional import require

require("torch", "pyro")
require("pyro", "pyro")

from vdppl.pyro.checkpoint import load, save  # noqa: E402
from vdppl.pyro.diagnostics import to_inference_data  # noqa: E402
from vdppl.pyro.distributions import DropoutNormal, LogUniform  # noqa: E402
from vdppl.pyro.elbo import LocalReparamELBO  # noqa: E402
from vdppl.pyro.gradreg import GradientRegularizedELBO, variance_lr  # noqa: E402
from vdppl.pyro.guide import AutoVariationalDropout  # noqa: E402
from vdppl.pyro.init import init_to_module  # noqa: E402
from vdppl.pyro.kl_weight_messenger import KLWeightMessenger, kl_weight  # noqa: E402
from vdppl.pyro.local_reparam_messenger import LocalReparamMessenger, local_reparam  # noqa: E402
from vdppl.pyro.nn import BayesConv, BayesLinear, bayesianize  # noqa: E402
from vdppl.pyro.ops import conv, linear  # noqa: E402
from vdppl.pyro.predict import predict  # noqa: E402
from vdppl.pyro.sparsity import SparsityReport, compress, sparsity_report  # noqa: E402

__all__ = [
    "AutoVariationalDropout",
    "BayesConv",
    "BayesLinear",
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
    "init_to_module",
    "kl_weight",
    "linear",
    "load",
    "local_reparam",
    "predict",
    "save",
    "sparsity_report",
    "to_inference_data",
    "variance_lr",
]
