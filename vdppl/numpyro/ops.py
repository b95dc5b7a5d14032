"""Effectful dense and convolution primitives, and the local reparameterization maths.

Layers written with :mod:`vdppl.numpyro.nn` (and modules converted by
:func:`~vdppl.numpyro.bayesianize`) call :func:`dense` and :func:`conv` instead of
multiplying by their weights themselves. Layouts are Flax's: a dense kernel is
``(in, out)``; a convolution kernel is ``(*spatial, in / groups, out)`` applied to
channels-last inputs ``(batch, *spatial, in)`` as :class:`flax.linen.Conv` does.

Outside any handler the primitives are the plain computation (``x @ kernel + bias``,
``lax.conv_general_dilated``). Under :class:`~vdppl.numpyro.local_reparam` they return
one sample of the pre-activations instead of using a sampled weight (Kingma et al. 2015,
section 2.3)::

    mean = x @ mu + b
    var  = x**2 @ sigma2
    out  = mean + sqrt(var + 1e-8) * eps,     eps ~ N(0, 1) per example and unit

and the same with the convolution in place of the matrix product (same strides,
padding, dilations and groups). The ``1e-8`` (:data:`vdppl.kl.LRT_EPS`, shared with the
Pyro backend) keeps the gradient of the square root finite where a variance is exactly zero.

Each primitive sends a NumPyro message of type ``"vdppl_dense"`` / ``"vdppl_conv"``
through :func:`numpyro.primitives.apply_stack`. The message names its weight site under
the key ``"site"``, never ``"name"``: :class:`numpyro.handlers.trace` records every
message that has a name, and the op would overwrite the weight's sample site.

Shape errors are raised from static shapes (so also under ``jit``); values are never
inspected here.

[1] Kingma, Salimans, Welling (2015) "Variational Dropout and the Local
    Reparameterization Trick", arXiv:1506.02557.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax import lax
from numpyro.primitives import _PYRO_STACK, apply_stack

from vdppl.kl import LRT_EPS

__all__ = [
    "LRT_EPS",
    "OP_TYPES",
    "conv",
    "conv_padding",
    "dense",
    "lrt_conv",
    "lrt_dense",
    "plain_conv",
    "plain_dense",
]

#: Message types of the two primitives (what :class:`~vdppl.numpyro.local_reparam` handles).
OP_TYPES = ("vdppl_dense", "vdppl_conv")

Padding = str | int | Sequence[int | tuple[int, int]]


# ------------------------------------------------------------------ plain maths
def _check_dense(x, kernel, bias) -> None:
    if jnp.ndim(kernel) != 2:
        raise ValueError(
            f"dense expects a kernel of shape (in, out) (Flax layout); got {jnp.shape(kernel)}"
        )
    if jnp.ndim(x) < 1 or jnp.shape(x)[-1] != jnp.shape(kernel)[0]:
        raise ValueError(
            f"dense: the input's last dim must match the kernel's {jnp.shape(kernel)[0]} "
            f"input features; got input shape {jnp.shape(x)} and kernel {jnp.shape(kernel)}"
        )
    if bias is not None and jnp.shape(bias) != (jnp.shape(kernel)[1],):
        raise ValueError(
            f"dense: bias must have shape ({jnp.shape(kernel)[1]},); got {jnp.shape(bias)}"
        )


def plain_dense(x, kernel, bias=None):
    """``x @ kernel + bias`` over the last axis of ``x`` (any leading dims)."""
    _check_dense(x, kernel, bias)
    y = jnp.matmul(x, kernel)
    return y if bias is None else y + bias


def _tuple(value, n: int, what: str) -> tuple[int, ...]:
    if isinstance(value, int):
        return (value,) * n
    value = tuple(int(v) for v in value)
    if len(value) != n:
        raise ValueError(f"conv: {what} must be an int or {n} ints, got {value}")
    return value


def conv_padding(padding: Padding, n: int) -> str | tuple[tuple[int, int], ...]:
    """``padding`` as :func:`jax.lax.conv_general_dilated` takes it.

    ``"SAME"``/``"VALID"`` stay strings; an int pads every spatial dim by that much on
    both sides; a sequence gives per dim an int (both sides) or a ``(low, high)`` pair.
    """
    if isinstance(padding, str):
        if padding.upper() not in ("SAME", "VALID", "SAME_LOWER"):
            raise ValueError(
                f"conv supports padding 'SAME', 'VALID', ints or (low, high) pairs; got "
                f"{padding!r}. (vdppl.numpyro.bayesianize pads the input itself for Flax's "
                "'CIRCULAR', 'REFLECT' and 'CAUSAL'.)"
            )
        return padding.upper()
    if isinstance(padding, int):
        return ((padding, padding),) * n
    pads = tuple((p, p) if isinstance(p, int) else tuple(int(v) for v in p) for p in padding)
    if len(pads) != n or any(len(p) != 2 for p in pads):
        raise ValueError(f"conv: padding must give {n} ints or (low, high) pairs, got {padding}")
    return pads


def _conv_setup(x, kernel, strides, padding, dilation, feature_group_count, input_dilation):
    """Static checks and ``lax.conv_general_dilated`` keyword arguments."""
    n = jnp.ndim(kernel) - 2
    if n < 1:
        raise ValueError(
            "conv expects a kernel of shape (*spatial, in / groups, out) (Flax layout); got "
            f"{jnp.shape(kernel)}"
        )
    if jnp.ndim(x) != n + 2:
        raise ValueError(
            f"conv with a {n}-d kernel expects inputs (batch, *{n} spatial dims, channels) "
            f"(channels last, as flax.linen.Conv); got input shape {jnp.shape(x)}"
        )
    groups = int(feature_group_count)
    in_per_group, out = jnp.shape(kernel)[-2:]
    if jnp.shape(x)[-1] != in_per_group * groups or out % groups:
        raise ValueError(
            f"conv: input channels {jnp.shape(x)[-1]} must equal kernel in-features "
            f"{in_per_group} x feature_group_count {groups}, and out-features {out} must be "
            "divisible by the groups"
        )
    spec = (0, n + 1, *range(1, n + 1))  # (batch, channel, *spatial) positions, channels last
    dimension_numbers = lax.ConvDimensionNumbers(
        lhs_spec=spec, rhs_spec=(n + 1, n, *range(n)), out_spec=spec
    )
    return {
        "window_strides": _tuple(strides, n, "strides"),
        "padding": conv_padding(padding, n),
        "lhs_dilation": _tuple(input_dilation, n, "input_dilation"),
        "rhs_dilation": _tuple(dilation, n, "dilation"),
        "dimension_numbers": dimension_numbers,
        "feature_group_count": groups,
    }


def _bias_check(bias, kernel) -> None:
    if bias is not None and jnp.shape(bias) != (jnp.shape(kernel)[-1],):
        raise ValueError(
            f"conv: bias must have shape ({jnp.shape(kernel)[-1]},); got {jnp.shape(bias)}"
        )


def plain_conv(
    x,
    kernel,
    bias=None,
    strides: int | Sequence[int] = 1,
    padding: Padding = "SAME",
    dilation: int | Sequence[int] = 1,
    feature_group_count: int = 1,
    input_dilation: int | Sequence[int] = 1,
):
    """Channels-last convolution (cross-correlation, as ``flax.linen.Conv``) plus bias."""
    _bias_check(bias, kernel)
    kw = _conv_setup(x, kernel, strides, padding, dilation, feature_group_count, input_dilation)
    y = lax.conv_general_dilated(x, kernel, **kw)
    return y if bias is None else y + bias


# -------------------------------------------------------------- LRT sampling
#: Source of the standard normal noise (tests replace it to read the moments exactly).
_standard_normal = jax.random.normal


def _noise(key, mean, var):
    if key is None:
        raise ValueError(
            "local reparameterization needs a PRNG key for its noise and none is available: "
            "run the model under numpyro.handlers.seed (SVI, Predictive and "
            "vdppl.numpyro.predict do), or pass rng_key= to the primitive."
        )
    eps = _standard_normal(key, jnp.shape(mean), jnp.result_type(mean))
    return mean + jnp.sqrt(var + LRT_EPS) * eps


def lrt_dense(key, x, loc, var, bias=None):
    """One LRT sample of ``x @ W + b`` for ``W ~ N(loc, var)`` factorized::

    x @ loc + b + sqrt(x**2 @ var + 1e-8) * eps,   eps ~ N(0, 1)
    """
    _check_dense(x, loc, bias)
    mean = plain_dense(x, loc, bias)
    return _noise(key, mean, jnp.matmul(x * x, jnp.broadcast_to(var, jnp.shape(loc))))


def lrt_conv(
    key,
    x,
    loc,
    var,
    bias=None,
    strides: int | Sequence[int] = 1,
    padding: Padding = "SAME",
    dilation: int | Sequence[int] = 1,
    feature_group_count: int = 1,
    input_dilation: int | Sequence[int] = 1,
):
    """One LRT sample of ``conv(x, W) + b`` for ``W ~ N(loc, var)`` factorized::

    conv(x, loc) + b + sqrt(conv(x**2, var) + 1e-8) * eps,   eps ~ N(0, 1)
    """
    _bias_check(bias, loc)
    kw = _conv_setup(x, loc, strides, padding, dilation, feature_group_count, input_dilation)
    mean = lax.conv_general_dilated(x, loc, **kw)
    if bias is not None:
        mean = mean + bias
    var = lax.conv_general_dilated(x * x, jnp.broadcast_to(var, jnp.shape(loc)), **kw)
    return _noise(key, mean, var)


# ------------------------------------------------------------------ primitives
def _effectful(op_type: str, fn, args: tuple, kwargs: dict, site: str | None, rng_key):
    if not _PYRO_STACK:
        return fn(*args, **kwargs)
    msg = {
        "type": op_type,
        "fn": fn,
        "args": args,
        "kwargs": kwargs,
        "value": None,
        "site": site,  # the weight's sample site, for messages; never under "name"
        "rng_key": rng_key,
    }
    return apply_stack(msg)["value"]


def dense(x, kernel, bias=None, *, site: str | None = None, rng_key=None):
    """``x @ kernel + bias`` that :class:`~vdppl.numpyro.local_reparam` may override.

    :param kernel: ``(in, out)`` weight: pass the value of the weight's sample site
        itself (the handler recognises it by identity).
    :param site: the weight's site name, used in error messages.
    :param rng_key: key for the LRT noise; by default ``numpyro.prng_key()`` is drawn
        under the handler (so the model's ``seed`` handler provides it).
    """
    return _effectful("vdppl_dense", plain_dense, (x, kernel, bias), {}, site, rng_key)


def conv(
    x,
    kernel,
    bias=None,
    strides: int | Sequence[int] = 1,
    padding: Padding = "SAME",
    dilation: int | Sequence[int] = 1,
    feature_group_count: int = 1,
    *,
    input_dilation: int | Sequence[int] = 1,
    site: str | None = None,
    rng_key=None,
):
    """Channels-last convolution that :class:`~vdppl.numpyro.local_reparam` may override.

    ``x`` is ``(batch, *spatial, in)``, ``kernel`` is ``(*spatial, in / groups, out)``
    (Flax layout); ``dilation`` is the kernel dilation, ``input_dilation`` the input's.
    ``site`` and ``rng_key`` as for :func:`dense`.
    """
    args = (x, kernel, bias, strides, padding, dilation, feature_group_count, input_dilation)
    return _effectful("vdppl_conv", plain_conv, args, {}, site, rng_key)
