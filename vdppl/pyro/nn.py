"""Bayesian linear and convolution layers, and ``bayesianize`` to convert a network.

A converted layer samples its weight from the prior at a site named like the module's
parameter (``"0.weight"`` for ``nn.Sequential``'s first layer) and applies it through the
effectful primitives of :mod:`vdppl.pyro.ops`, so :class:`~vdppl.pyro.local_reparam`
can replace the weight sample by a sample of the pre-activations. Biases stay
point estimates (:class:`~pyro.nn.PyroParam`, read from Pyro's param store), fitted by SVI
as the sparse VD paper does.
"""

from __future__ import annotations

import copy

import pyro
import torch
from pyro.distributions import constraints
from pyro.infer.util import is_validation_enabled
from pyro.nn import PyroModule, PyroParam
from pyro.nn.module import to_pyro_module_
from torch import nn

from vdppl.pyro import ops
from vdppl.pyro.distributions import LogUniform
from vdppl.pyro.init import GROUPS_KEY, INIT_KEY
from vdppl.pyro.local_reparam_messenger import LRT_FLAG

__all__ = ["DETERMINISTIC", "UNSUPPORTED", "BayesConv", "BayesLinear", "bayesianize"]

#: Layers with weights that vdppl cannot give a prior; ``bayesianize`` refuses them
#: unless ``unsupported="deterministic"``.
UNSUPPORTED = (
    nn.modules.conv._ConvTransposeNd,
    nn.Embedding,
    nn.EmbeddingBag,
    nn.RNNBase,
    nn.RNNCellBase,
    nn.MultiheadAttention,
    nn.Bilinear,
)
#: Layers kept deterministic on purpose: their parameters are point estimates and their
#: running statistics (BatchNorm) update in training mode as usual.
DETERMINISTIC = (
    nn.modules.batchnorm._NormBase,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.PReLU,
)


def _check_prior(prior) -> None:
    if not isinstance(prior, torch.distributions.Distribution):
        raise TypeError(
            f"prior must be a torch/pyro Distribution such as vdppl.pyro.LogUniform(), "
            f"got {type(prior).__name__}"
        )
    if prior.batch_shape != () or prior.event_shape != ():
        raise ValueError(
            "prior must be scalar (batch_shape () and event_shape ()); it is expanded to "
            f"each weight's shape. Got batch_shape {tuple(prior.batch_shape)}, "
            f"event_shape {tuple(prior.event_shape)}."
        )


def _check_finite(x: torch.Tensor, layer: str) -> None:
    """Under Pyro validation: a clear error for NaN/inf in an input that carries no gradient.

    The check reads every element and turns the answer into a Python bool (a device sync
    on GPU), so on the training hot path it runs only where bad values come from outside:
    the data (an input that does not require grad, normally the first layer's). Hidden
    activations, which require grad during SVI, are checked only when no gradient is
    recorded (prediction, ``torch.no_grad()``); during training a divergence shows up in
    Pyro's validation of the likelihood's arguments, or as its NaN-loss warning.
    ``pyro.validation_enabled(False)`` skips the check entirely.
    """
    if x.requires_grad:
        return
    if not torch.isfinite(x).all():
        raise ValueError(
            f"the input of layer {layer!r} has NaN or inf entries. If this is the network's "
            "first layer, clean the data (torch.isfinite(x).all()); otherwise the "
            "parameters have diverged: lower the learning rate or resume from a checkpoint."
        )


class _BayesLayer(PyroModule):
    """Shared machinery: the prior, the initial weight and the weight site."""

    weight_init: torch.Tensor
    #: Convolution groups (1 for dense layers); offered to guides under ``GROUPS_KEY``.
    groups: int = 1

    def _init_common(self, weight: torch.Tensor, bias: torch.Tensor | None, prior) -> None:
        prior = LogUniform() if prior is None else prior
        _check_prior(prior)
        self.prior = prior
        self.register_buffer("weight_init", weight.detach().clone())
        self.bias = None if bias is None else PyroParam(bias.detach().clone(), constraints.real)

    def sample_weight(self) -> tuple[torch.Tensor, str]:
        """Sample the weight site (its value under a guide) and return it with its name."""
        name = self._pyro_get_fullname("weight")
        prior = self.prior.expand(self.weight_init.shape).to_event(self.weight_init.dim())
        infer = {INIT_KEY: self.weight_init, LRT_FLAG: True, GROUPS_KEY: self.groups}
        return pyro.sample(name, prior, infer=infer), name


class BayesLinear(_BayesLayer):
    """``nn.Linear`` with a prior on its weight (shape ``(out_features, in_features)``).

    :param weight: initial weight (default: ``nn.Linear``'s initialisation).
    :param prior: scalar prior, expanded to the weight's shape; default ``LogUniform()``.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        prior=None,
        *,
        weight: torch.Tensor | None = None,
        bias_init: torch.Tensor | None = None,
    ):
        super().__init__()
        if weight is None:
            ref = nn.Linear(in_features, out_features, bias=bias)
            weight, bias_init = ref.weight, ref.bias
        if tuple(weight.shape) != (out_features, in_features):
            raise ValueError(
                f"weight has shape {tuple(weight.shape)}, expected ({out_features}, {in_features})"
            )
        self.in_features, self.out_features = in_features, out_features
        self._init_common(weight, bias_init if bias else None, prior)

    @classmethod
    def from_module(cls, module: nn.Linear, prior=None) -> BayesLinear:
        """Convert an ``nn.Linear``, starting from its current weight and bias."""
        return cls(
            module.in_features,
            module.out_features,
            module.bias is not None,
            prior,
            weight=module.weight,
            bias_init=module.bias,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if is_validation_enabled():
            if x.dim() < 1 or x.shape[-1] != self.in_features:
                raise ValueError(
                    f"layer {self._pyro_get_fullname('weight')!r} expects inputs whose last "
                    f"dim is {self.in_features}; got shape {tuple(x.shape)}"
                )
            _check_finite(x, self._pyro_get_fullname("weight"))
        weight, name = self.sample_weight()
        return ops.linear(x, weight, self.bias, name=name)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, prior={self.prior}"
        )


class BayesConv(_BayesLayer):
    """``nn.Conv1d/2d/3d`` with a prior on its weight, converted from such a module.

    Stride, padding (numbers or ``"same"``/``"valid"``), dilation and groups are kept;
    only ``padding_mode="zeros"`` is supported.
    """

    def __init__(self, module: nn.modules.conv._ConvNd, prior=None):
        super().__init__()
        if module.padding_mode != "zeros":
            raise ValueError(
                f"BayesConv supports padding_mode='zeros' only, got {module.padding_mode!r}; "
                "pad the input explicitly (F.pad) before the layer instead."
            )
        self.in_channels, self.out_channels = module.in_channels, module.out_channels
        self.kernel_size = module.kernel_size
        self.stride, self.padding = module.stride, module.padding
        self.dilation, self.groups = module.dilation, module.groups
        self._init_common(module.weight, module.bias, prior)

    @classmethod
    def from_module(cls, module: nn.modules.conv._ConvNd, prior=None) -> BayesConv:
        """Convert an ``nn.ConvNd``, starting from its current weight and bias."""
        return cls(module, prior)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if is_validation_enabled():
            n = len(self.kernel_size)
            if x.dim() not in (n + 1, n + 2) or x.shape[-n - 1] != self.in_channels:
                raise ValueError(
                    f"layer {self._pyro_get_fullname('weight')!r} expects inputs of shape "
                    f"(batch, {self.in_channels}, *{n} spatial dims); got {tuple(x.shape)}"
                )
            _check_finite(x, self._pyro_get_fullname("weight"))
        weight, name = self.sample_weight()
        return ops.conv(
            x, weight, self.bias, self.stride, self.padding, self.dilation, self.groups, name=name
        )

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, prior={self.prior}"
        )


def _bayesian_layer(module: nn.Module, prior):
    if isinstance(module, nn.Linear) and not isinstance(module, UNSUPPORTED):
        return BayesLinear.from_module(module, prior)
    if isinstance(module, nn.modules.conv._ConvNd) and not module.transposed:
        return BayesConv.from_module(module, prior)
    return None


def _convert(module: nn.Module, prior, unsupported: str, path: str) -> int:
    """Replace supported layers below ``module`` in place; return how many."""
    count = 0
    for name, child in list(module._modules.items()):
        if child is None:
            continue
        where = f"{path}.{name}" if path else name
        layer = _bayesian_layer(child, prior)
        if layer is not None:
            module._modules[name] = layer
            count += 1
        elif isinstance(child, UNSUPPORTED):
            if unsupported == "error":
                raise ValueError(
                    f"bayesianize does not support {type(child).__name__} (at {where!r}); it "
                    "converts Linear and Conv1d/2d/3d. Pass unsupported='deterministic' to "
                    "keep such layers as point estimates."
                )
        elif isinstance(child, DETERMINISTIC):
            pass
        else:
            if unsupported == "error" and any(True for _ in child.parameters(recurse=False)):
                raise ValueError(
                    f"bayesianize does not know the layer {type(child).__name__} (at {where!r}) "
                    "and it has parameters. Pass unsupported='deterministic' to keep it as a "
                    "point estimate."
                )
            count += _convert(child, prior, unsupported, where)
    return count


def _parameters_to_pyro_params(net: PyroModule) -> None:
    """Turn every ``nn.Parameter`` into a :class:`~pyro.nn.PyroParam`.

    A PyroParam reads its value from Pyro's param store whenever the module runs, so
    parameters restored by :func:`vdppl.pyro.load` (or set with ``pyro.param``) are the
    ones the network uses; a plain ``nn.Parameter`` would keep its own stale tensor.
    """
    for module in net.modules():
        for name, value in list(module._parameters.items()):
            if value is None or name.endswith("_unconstrained"):
                continue
            delattr(module, name)
            setattr(module, name, PyroParam(value.detach().clone(), constraints.real))


def point_estimate(module: PyroModule, name: str) -> torch.Tensor | None:
    """Current value of a module's parameter ``name``: the param store's if it has one."""
    store = pyro.get_param_store()
    fullname = module._pyro_get_fullname(name)
    if fullname in store:
        return store[fullname].detach()
    value = getattr(module, name)
    return None if value is None else value.detach()


def bayesianize(module: nn.Module, prior=None, *, unsupported: str = "error") -> PyroModule:
    """A copy of ``module`` whose Linear and Conv weights are Pyro sample sites.

    Each ``nn.Linear`` becomes :class:`BayesLinear` and each ``nn.Conv1d/2d/3d`` becomes
    :class:`BayesConv`, with ``prior`` (default :class:`~vdppl.pyro.LogUniform`) expanded to
    the weight's shape and the current weight recorded as the site's initial value (so a
    pretrained network starts where it is). The copy is a :class:`~pyro.nn.PyroModule`;
    its other parameters (biases, norm layers' affine parameters) are fitted by SVI as
    point estimates, and BatchNorm's running statistics update in training mode as
    usual (call ``.eval()`` to predict). ``module`` itself is not changed.

    :param unsupported: ``"error"`` (default) refuses layers that have weights but no
        Bayesian counterpart (transposed convs, embeddings, RNNs, attention, bilinear);
        ``"deterministic"`` keeps them as point estimates.
    :raises ValueError: if the module has no Linear or Conv layer.
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"bayesianize expects a torch.nn.Module, got {type(module).__name__}")
    if unsupported not in ("error", "deterministic"):
        raise ValueError(f"unsupported must be 'error' or 'deterministic', got {unsupported!r}")
    prior = LogUniform() if prior is None else prior
    _check_prior(prior)
    template = copy.deepcopy(module)
    net = _bayesian_layer(module, prior)
    if net is None:
        net = copy.deepcopy(module)
        if _convert(net, prior, unsupported, "") == 0:
            raise ValueError(
                f"{type(module).__name__} has no Linear or Conv1d/2d/3d layer for "
                "bayesianize to put a prior on."
            )
    to_pyro_module_(net)
    _parameters_to_pyro_params(net)
    # The plain architecture, kept out of the module tree, for vdppl.pyro.compress.
    object.__setattr__(net, "_vdppl_template", template)
    return net
