"""Effectful linear and convolution primitives, and the local reparameterization maths.

Layers converted by :func:`~vdppl.pyro.bayesianize` call :func:`linear` and :func:`conv`
instead of ``torch.nn.functional``. Outside any handler they are exactly
``F.linear`` / ``F.conv{1,2,3}d``. Under :class:`~vdppl.pyro.local_reparam` they sample
the pre-activations instead of the weights (Kingma et al. 2015, section 2.3)::

    mean = x @ mu.T + b                      # F.linear(x, mu, b)
    var  = x**2 @ sigma2.T                   # F.linear(x**2, sigma2)
    out  = mean + sqrt(var + 1e-8) * eps,    eps ~ N(0, 1) per example and unit

and the same with ``conv`` in place of the matrix product (same stride, padding, dilation
and groups). The ``1e-8`` keeps the gradient of the square root finite where a variance is
exactly zero; it adds a variance of ``1e-8`` to each pre-activation.

[1] Kingma, Salimans, Welling (2015) "Variational Dropout and the Local
    Reparameterization Trick", arXiv:1506.02557.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from pyro.poutine.runtime import effectful

_Size = int | tuple[int, ...]
_Padding = int | tuple[int, ...] | str

__all__ = ["LRT_EPS", "conv", "linear", "lrt_conv", "lrt_linear"]

LRT_EPS = 1e-8

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def _conv_fn(weight: torch.Tensor) -> Callable[..., torch.Tensor]:
    n = weight.dim() - 2
    if n not in _CONV:
        raise ValueError(
            f"conv expects a weight of shape (out, in/groups, *kernel) with 1 to 3 spatial "
            f"dims; got shape {tuple(weight.shape)}"
        )
    return _CONV[n]


def _linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    return F.linear(x, weight, bias)


def _conv(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: _Size = 1,
    padding: _Padding = 0,
    dilation: _Size = 1,
    groups: int = 1,
) -> torch.Tensor:
    return _conv_fn(weight)(x, weight, bias, stride, padding, dilation, groups)


#: ``linear(x, weight, bias=None, *, name=site)``: ``F.linear`` that handlers may override.
linear: Callable[..., torch.Tensor] = effectful(_linear, type="vdppl_linear")
#: ``conv(x, weight, bias=None, stride, padding, dilation, groups, *, name=site)``.
conv: Callable[..., torch.Tensor] = effectful(_conv, type="vdppl_conv")


#: Source of the standard normal noise (tests replace it to read the moments exactly).
_standard_normal: Callable[[torch.Tensor], torch.Tensor] = torch.randn_like


def _noise(mean: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    return mean + torch.sqrt(var + LRT_EPS) * _standard_normal(mean)


def lrt_linear(
    x: torch.Tensor, loc: torch.Tensor, var: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """One LRT sample of ``x @ W.T + b`` for ``W ~ N(loc, var)`` factorized::

    F.linear(x, loc, bias) + sqrt(F.linear(x**2, var) + 1e-8) * eps
    """
    return _noise(F.linear(x, loc, bias), F.linear(x * x, var))


def lrt_conv(
    x: torch.Tensor,
    loc: torch.Tensor,
    var: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: _Size = 1,
    padding: _Padding = 0,
    dilation: _Size = 1,
    groups: int = 1,
) -> torch.Tensor:
    """One LRT sample of ``conv(x, W) + b`` for ``W ~ N(loc, var)`` factorized::

    conv(x, loc, bias) + sqrt(conv(x**2, var) + 1e-8) * eps
    """
    fn = _conv_fn(loc)
    mean = fn(x, loc, bias, stride, padding, dilation, groups)
    return _noise(mean, fn(x * x, var, None, stride, padding, dilation, groups))
