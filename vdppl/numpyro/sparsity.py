"""Sparsity report and compression of a network fitted with variational dropout.

Reports use the layout both backends share, ``(out, in, *kernel)``: Flax kernels
``(*kernel, in, out)`` are transposed first, so the same network gives the same
:class:`~vdppl.sparsity.SparsityReport` numbers in Pyro and NumPyro.

[2] Molchanov, Ashukha, Vetrov (2017) "Variational Dropout Sparsifies Deep Neural
    Networks", arXiv:1701.05369.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from vdppl import kl as vdkl
from vdppl.numpyro.nn import BayesianModule
from vdppl.sparsity import SparsityReport, report_from_masks

__all__ = [
    "DenseLayer",
    "SparsityReport",
    "compress",
    "mlp_apply",
    "pruned_variables",
    "sparsity_report",
    "to_out_in",
]


def to_out_in(kernel: Any) -> np.ndarray:
    """A Flax-layout kernel ``(*kernel, in, out)`` as ``(out, in, *kernel)`` (1-d as is).

    >>> to_out_in(np.zeros((3, 3, 2, 8))).shape
    (8, 2, 3, 3)
    """
    kernel = np.asarray(kernel)
    n = kernel.ndim
    if n < 2:
        return kernel
    return np.transpose(kernel, (n - 1, n - 2, *range(n - 2)))


def sparsity_report(
    guide, params: Mapping[str, Any], threshold: float = vdkl.DEFAULT_THRESHOLD
) -> SparsityReport:
    """Kept/total weights per layer, overall ``|W| / |W != 0|`` and dead units.

    Weights with ``log alpha >= threshold`` count as pruned (``log alpha > 3`` in [2]).
    ``str(report)`` is a table; ``report.to_dict()`` is JSON-ready. Shapes are reported
    as ``(out, in, *kernel)``, like the Pyro backend's.

    :param guide: a fitted :class:`~vdppl.numpyro.AutoVariationalDropout`.
    :param params: its parameters, ``svi.get_params(state)``.
    """
    masks = {name: to_out_in(m) for name, m in guide.mask(params, threshold).items()}
    return report_from_masks(masks, threshold)


class DenseLayer(NamedTuple):
    """One layer of a plain MLP: ``x @ kernel + bias`` (Flax layout ``(in, out)``)."""

    kernel: jax.Array
    bias: jax.Array | None


Activation = Callable | Sequence[Callable]


def _activations(activation: Activation, n_layers: int) -> list[Callable]:
    """One elementwise activation per gap between consecutive layers."""
    if callable(activation):
        return [activation] * (n_layers - 1)
    activation = list(activation)
    if len(activation) != n_layers - 1 or not all(callable(f) for f in activation):
        raise ValueError(
            f"activation must be a callable or {n_layers - 1} callables (one between each "
            f"pair of the {n_layers} layers), got {activation!r}"
        )
    return activation


def mlp_apply(layers: Sequence[DenseLayer], x, activation: Activation = jax.nn.relu) -> jax.Array:
    """Run a plain MLP: ``h = f_i(h @ W_i + b_i)`` between layers, nothing after the last.

    The deterministic network that :func:`compress` returns; no NumPyro involved.
    ``activation`` is one elementwise function for every gap, or one per gap.
    """
    fns = _activations(activation, len(layers))
    h = x
    for i, layer in enumerate(layers):
        h = h @ layer.kernel
        if layer.bias is not None:
            h = h + layer.bias
        if i < len(fns):
            h = fns[i](h)
    return h


def pruned_variables(
    net: BayesianModule,
    guide,
    params: Mapping[str, Any],
    threshold: float = vdkl.DEFAULT_THRESHOLD,
) -> dict:
    """Flax variables of the masked mean network, for a plain ``net.module.apply``.

    Kernels are ``theta * (log_alpha < threshold)`` (the deterministic predictor of [2]);
    biases and other parameters are their fitted point estimates (merge
    ``svi_state.mutable_state`` into ``params`` for ``batch_stats``).
    """
    if not isinstance(net, BayesianModule):
        raise TypeError(
            "pruned_variables needs the network returned by vdppl.numpyro.bayesianize; got "
            f"{type(net).__name__}"
        )
    return net.variables(params, guide.pruned_median(params, threshold))


def _dense_chain(net, guide, params, threshold) -> list[DenseLayer]:
    pruned = guide.pruned_median(params, threshold)
    if isinstance(net, BayesianModule):
        if any(layer.kind != "dense" for layer in net.layers) or net.deterministic or net.state:
            raise ValueError(
                "compress removes units only from a plain chain of Dense layers; this "
                "network has other layers or parameters. Use pruned_variables(net, guide, "
                "params) with net.module.apply for the masked network instead."
            )
        return [
            DenseLayer(pruned[layer.site], None if layer.bias is None else params[layer.bias])
            for layer in net.layers
        ]
    names = list(net)
    missing = [n for n in names if f"{n}.kernel" not in pruned]
    if missing or not names:
        raise ValueError(
            f"compress: no kernel site for layer(s) {missing} among the guide's sites "
            f"{guide.dropout_sites}; pass the names given to vdppl.numpyro.nn.dense, or the "
            "network returned by vdppl.numpyro.bayesianize."
        )
    return [DenseLayer(pruned[f"{n}.kernel"], params.get(f"{n}.bias")) for n in names]


def _check_is_chain(net: BayesianModule, masked: list[DenseLayer], params, activation) -> None:
    """The plain MLP must compute what the Flax module computes with the same weights."""
    x = jax.random.normal(jax.random.key(0), jnp.shape(net.example))
    kernels = {layer.site: m.kernel for layer, m in zip(net.layers, masked, strict=True)}
    expected = net.module.apply(net.variables(params, kernels), x)
    actual = mlp_apply(masked, x, activation)
    # same products in float32; 1e-4 leaves room for a different summation order
    if jnp.shape(expected) != jnp.shape(actual) or not np.allclose(
        expected, actual, rtol=1e-4, atol=1e-4
    ):
        raise ValueError(
            f"compress: {type(net.module).__name__} does not compute the plain chain "
            "h = activation(h @ W + b) of its Dense layers with the given activation; dead "
            "units can only be removed from such a chain. Pass the activation it uses, or "
            "use pruned_variables(net, guide, params) with net.module.apply."
        )


def compress(
    net: BayesianModule | Sequence[str],
    guide,
    params: Mapping[str, Any],
    threshold: float = vdkl.DEFAULT_THRESHOLD,
    activation: Activation = jax.nn.relu,
) -> list[DenseLayer]:
    """A smaller deterministic MLP: pruned mean weights, dead units removed.

    Kernels are ``theta * (log_alpha < threshold)`` [2], biases the fitted point
    estimates. Between two consecutive Dense layers (``activation`` between them), a unit
    is removed when

    * all its outgoing weights are pruned (its value is never used), or
    * all its incoming weights are pruned: it then outputs the constant
      ``activation(b)``, which is folded into the next layer's bias.

    ``mlp_apply(compress(...), x, activation)`` equals the masked mean network's output
    up to float rounding.

    :param net: the :class:`~vdppl.numpyro.nn.BayesianModule` of a Flax MLP (checked
        numerically to be a plain chain with ``activation``), or the layer names given to
        :func:`vdppl.numpyro.nn.dense`, in order.
    :param guide: the fitted :class:`~vdppl.numpyro.AutoVariationalDropout`.
    :param params: ``svi.get_params(state)``.
    :param activation: the elementwise activation between layers, or one per gap.
    """
    layers = _dense_chain(net, guide, params, threshold)
    if isinstance(net, BayesianModule):
        _check_is_chain(net, layers, params, activation)
    layers = [
        DenseLayer(np.asarray(layer.kernel), None if layer.bias is None else np.asarray(layer.bias))
        for layer in layers
    ]
    fns = _activations(activation, len(layers))
    for i, j in itertools.pairwise(range(len(layers))):
        layers[i], layers[j] = _shrink_pair(layers[i], layers[j], fns[i])
    return [DenseLayer(jnp.asarray(k), None if b is None else jnp.asarray(b)) for k, b in layers]


def _shrink_pair(prev: DenseLayer, nxt: DenseLayer, activation: Callable):
    """Remove the units between ``prev`` and ``nxt`` that are dead (NumPy arrays in/out)."""
    outgoing_dead = ~(nxt.kernel != 0).any(axis=1)  # row j of the next kernel (in, out)
    incoming_dead = ~(prev.kernel != 0).any(axis=0)  # column j of this kernel
    fold = incoming_dead & ~outgoing_dead if nxt.bias is not None else np.zeros_like(incoming_dead)
    remove = outgoing_dead | fold
    if not remove.any() or remove.all():
        return prev, nxt
    next_bias = nxt.bias
    if fold.any():
        prev_bias = (
            np.zeros(prev.kernel.shape[1], prev.kernel.dtype) if prev.bias is None else prev.bias
        )
        constant = np.asarray(activation(jnp.asarray(prev_bias[fold])))
        next_bias = nxt.bias + constant @ nxt.kernel[fold]
    keep = ~remove
    new_prev = DenseLayer(prev.kernel[:, keep], None if prev.bias is None else prev.bias[keep])
    return new_prev, DenseLayer(nxt.kernel[keep], next_bias)
