"""Sparsity report and compression of a network fitted with variational dropout.

Reports use the layout both backends share, ``(out, in, *kernel)``: Flax kernels
``(*kernel, in, out)`` are transposed first, so the same network gives the same
:class:`~vdppl.sparsity.SparsityReport` numbers in Pyro and NumPyro.

:func:`compress` removes dead units from chains of Dense and Conv layers with the
backend-free rules of :func:`vdppl.sparsity.plan_dead_units` and
:func:`vdppl.sparsity.folded_bias`, and returns a :class:`CompressedNetwork` that the
Flax module runs (``small(x)``), or :func:`mlp_apply` for a Dense chain.

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
from vdppl.numpyro.nn import BayesianModule, _leaves, _linen
from vdppl.numpyro.nn import _subtree as _node
from vdppl.sparsity import SparsityReport, folded_bias, plan_dead_units, report_from_masks

__all__ = [
    "CompressedNetwork",
    "ConvLayer",
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
    guide,
    params: Mapping[str, Any],
    threshold: float = vdkl.DEFAULT_THRESHOLD,
    *,
    net: BayesianModule | None = None,
) -> SparsityReport:
    """Kept/total weights per layer, overall ``|W| / |W != 0|`` and dead units.

    Weights with ``log alpha >= threshold`` count as pruned (``log alpha > 3`` in [2]).
    ``str(report)`` is a table; ``report.to_dict()`` is JSON-ready. Shapes are reported
    as ``(out, in, *kernel)``, like the Pyro backend's.

    :param guide: a fitted :class:`~vdppl.numpyro.AutoVariationalDropout`.
    :param params: its parameters, ``svi.get_params(state)``.
    :param net: the network from :func:`~vdppl.numpyro.bayesianize`, to count the input
        channels of grouped convolutions (``feature_group_count > 1``) group by group.
    """
    masks = {name: to_out_in(m) for name, m in guide.mask(params, threshold).items()}
    if net is None:
        return report_from_masks(masks, threshold)
    groups = {
        layer.site: layer.settings["feature_group_count"]
        for layer in net.layers
        if layer.kind == "conv"
    }
    return report_from_masks(masks, threshold, groups=groups)


class DenseLayer(NamedTuple):
    """A dense layer of a compressed network: ``x @ kernel + bias``, kernel ``(in, out)``."""

    kernel: jax.Array
    bias: jax.Array | None


class ConvLayer(NamedTuple):
    """A convolution of a compressed network: kernel ``(*kernel_size, in / groups, out)``.

    Strides, padding, dilations and groups are the original Flax layer's.
    """

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

    A plain function (no NumPyro, no Flax) for a compressed chain of Dense layers
    (:func:`compress`); ``activation`` is one elementwise function for every gap, or one
    per gap. A network with convolutions runs as the compressed network itself,
    ``small(x)``.
    """
    fns = _activations(activation, len(layers))
    h = x
    for i, layer in enumerate(layers):
        if isinstance(layer, ConvLayer):
            raise TypeError(
                f"mlp_apply runs chains of Dense layers, and layer {i} is a convolution; call "
                "the compressed network itself, small(x), which runs the Flax module."
            )
        h = h @ layer.kernel
        if layer.bias is not None:
            h = h + layer.bias
        if i < len(fns):
            h = fns[i](h)
    return h


class CompressedNetwork(Sequence):
    """The smaller deterministic network returned by :func:`compress`.

    A sequence of its layers in call order (:class:`DenseLayer` / :class:`ConvLayer`, so
    ``mlp_apply(small, x)`` runs a Dense chain), and callable: ``small(x, *args,
    **kwargs)`` runs the original Flax module with the smaller layers (keyword arguments
    default to :func:`compress`'s ``module_kwargs``); for layers written by hand it is
    ``mlp_apply`` with the activation given to :func:`compress`.

    Attributes: ``sites`` (the kernel site of each layer), ``features`` (site -> output
    features left), ``variables`` (Flax variables ``{"params": ..., **state}`` of the
    smaller network: kernels, biases and the point estimates between layers with the
    removed units' entries dropped; ``None`` for layers written by hand), ``module`` (the
    original Flax module). A module whose widths are arguments, rebuilt with the new
    ``features``, runs ``variables`` with a plain ``module.apply``.
    """

    def __init__(
        self, layers, sites, variables=None, net=None, activation=None, module_kwargs=None
    ) -> None:
        self._layers = tuple(layers)
        self._module_kwargs = dict(module_kwargs or {})
        self.sites: tuple[str, ...] = tuple(sites)
        self.variables: dict | None = variables
        self._net = net
        self._activation = activation

    @property
    def features(self) -> dict[str, int]:
        """Output features of each layer, by kernel site, in call order."""
        return {
            site: int(jnp.shape(layer.kernel)[-1])
            for site, layer in zip(self.sites, self._layers, strict=True)
        }

    @property
    def module(self):
        return None if self._net is None else self._net.module

    def __getitem__(self, index):
        return self._layers[index]

    def __len__(self) -> int:
        return len(self._layers)

    def __call__(self, x, *args, **kwargs):
        if self._net is None:
            return mlp_apply(self._layers, x, self._activation)
        kwargs = {**self._module_kwargs, **kwargs}
        layers = dict(zip(self.sites, self._layers, strict=True))
        return _run_smaller(self._net, self.variables, layers, x, *args, **kwargs)

    def __repr__(self) -> str:
        shapes = ", ".join(
            f"{site} {tuple(jnp.shape(layer.kernel))}"
            for site, layer in zip(self.sites, self._layers, strict=True)
        )
        return f"CompressedNetwork({shapes})"


def _run_smaller(net: BayesianModule, variables, layers: Mapping, x, *args, **kwargs):
    """``net.module`` with each converted layer computed from ``layers`` (any widths)."""
    by_path = {layer.path: (layer, layers[layer.site]) for layer in net.layers}

    def interceptor(next_fun, call_args, call_kwargs, context):
        entry = by_path.get(context.module.path) if context.method_name == "__call__" else None
        if entry is None:
            return next_fun(*call_args, **call_kwargs)
        layer, small = entry
        return layer.apply(call_args[0], small.kernel, small.bias)

    with _linen().intercept_methods(interceptor):
        return net.module.apply(variables, x, *args, **kwargs)


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


# ----------------------------------------------------------------- dead units
def _shrink_pair(prev: dict, nxt: dict, next_is_conv: bool, constants: Callable) -> Any:
    """Remove the dead units between two layers, editing their nodes in place.

    ``prev`` and ``nxt`` hold NumPy ``"kernel"`` and ``"bias"`` (Flax layouts). The next
    layer's input axis is ``(units, slots)``: a convolution's input channels, or a dense
    layer's inputs after a channels-last flatten (``slot * units + unit``).
    ``constants()`` gives the ``(units, slots)`` constant outputs of units whose incoming
    weights are all pruned. Returns the kept units' mask, or ``None`` if none is removed.
    """
    w_prev, w_next = prev["kernel"], nxt["kernel"]
    units = w_prev.shape[-1]
    if next_is_conv:
        if w_next.shape[-2] != units:
            return None
        outgoing = to_out_in(w_next).reshape(w_next.shape[-1], units, -1)
    else:
        if w_next.shape[0] % units:
            return None
        slots = w_next.shape[0] // units
        outgoing = np.transpose(w_next.reshape(slots, units, -1), (2, 1, 0))
    can_fold = not next_is_conv and nxt.get("bias") is not None
    plan = plan_dead_units(to_out_in(w_prev), outgoing, can_fold)
    if plan is None:
        return None
    if plan.fold.any():
        delta = folded_bias(outgoing, constants(), plan.fold)
        nxt["bias"] = (nxt["bias"] + delta).astype(nxt["bias"].dtype)
    keep = plan.keep
    prev["kernel"] = w_prev[..., keep]
    if prev.get("bias") is not None:
        prev["bias"] = prev["bias"][keep]
    if next_is_conv:
        nxt["kernel"] = w_next[..., keep, :]
    else:
        nxt["kernel"] = w_next.reshape(slots, units, -1)[:, keep].reshape(-1, w_next.shape[-1])
    return keep


def _numpy_tree(tree: Mapping) -> dict:
    """A nested plain-dict copy of a Flax variables tree with NumPy leaves."""
    return {k: _numpy_tree(v) if isinstance(v, Mapping) else np.asarray(v) for k, v in tree.items()}


def _record_run(net: BayesianModule, variables, x, module_kwargs: dict) -> tuple[list, dict]:
    """Module paths in call order, and each converted layer's input, of one run."""
    order: list[tuple[str, ...]] = []
    inputs: dict[tuple[str, ...], np.ndarray] = {}

    def record(next_fun, args, kwargs, context):
        if context.method_name == "__call__":
            order.append(context.module.path)
            if any(layer.path == context.module.path for layer in net.layers):
                inputs.setdefault(context.module.path, np.asarray(args[0]))
        return next_fun(*args, **kwargs)

    try:
        with _linen().intercept_methods(record):
            net.module.apply(variables, x, **module_kwargs)
    except Exception as err:  # the user's module: say what compress was doing
        raise ValueError(
            f"compress runs {type(net.module).__name__} on a random input of the example's "
            f"shape {tuple(jnp.shape(x))} with module_kwargs {module_kwargs}, and that "
            f"failed ({type(err).__name__}: {err}). Pass the keyword arguments of an "
            "evaluation call as compress(..., module_kwargs={...}), e.g. {'train': False}."
        ) from err
    return order, inputs


def _shrink_between_layers(tree: dict, prev, nxt, order: list, units: int, keep) -> None:
    """Drop the removed units from the point estimates of modules run between two layers
    (BatchNorm's scale, bias and statistics: every leaf whose last axis is the units)."""
    first, last = order.index(prev.path), order.index(nxt.path)
    between = set(order[first + 1 : last])
    for collection in tree.values():
        for path, leaf in list(_leaves(collection)):
            if path[:-1] in between and np.ndim(leaf) >= 1 and np.shape(leaf)[-1] == units:
                _node(collection, path[:-1])[path[-1]] = leaf[..., keep]


def _probe(net: BayesianModule, seed: int) -> jax.Array:
    return jax.random.normal(jax.random.key(seed), jnp.shape(net.example), jnp.float32)


def _same(expected, actual) -> bool:
    """Equal up to float32 rounding: folding constants into biases reorders sums."""
    leaves_e, leaves_a = jax.tree.leaves(expected), jax.tree.leaves(actual)
    if len(leaves_e) != len(leaves_a):
        return False
    for e, a in zip(leaves_e, leaves_a, strict=True):
        e, a = np.asarray(e), np.asarray(a)
        scale = 1.0 + (float(np.abs(e).max()) if e.size else 0.0)
        if e.shape != a.shape or not np.allclose(e, a, rtol=1e-4, atol=1e-4 * scale):
            return False
    return True


def _compress_module(net: BayesianModule, guide, params, threshold, activation, module_kwargs):
    if activation is not None and any(layer.kind != "dense" for layer in net.layers):
        raise ValueError(
            "activation= describes the plain chain that mlp_apply runs, and "
            f"{type(net.module).__name__} has convolutions; leave activation unset and "
            "call the compressed network itself, small(x)."
        )
    masked = net.variables(params, guide.pruned_median(params, threshold))
    order, inputs = _record_run(net, masked, _probe(net, 0), module_kwargs)
    tree = _numpy_tree(masked)
    for prev, nxt in itertools.pairwise(net.layers):
        if prev.kind == "conv" and prev.settings["feature_group_count"] != 1:
            continue  # removing an output channel would break the groups
        if nxt.kind == "conv" and nxt.settings["feature_group_count"] != 1:
            continue
        prev_node, next_node = _node(tree["params"], prev.path), _node(tree["params"], nxt.path)
        units, n_in = prev_node["kernel"].shape[-1], next_node["kernel"].shape[0]

        def constants(nxt=nxt, units=units, n_in=n_in):
            # one example's input to the next layer; a unit with no incoming weight is the
            # same constant for every example (checked below on a second random input)
            seen = inputs[nxt.path].reshape(-1, n_in)[0]
            return seen.reshape(-1, units).T

        keep = _shrink_pair(prev_node, next_node, nxt.kind == "conv", constants)
        if keep is not None:
            _shrink_between_layers(tree, prev, nxt, order, units, keep)
    layers = [
        (DenseLayer if layer.kind == "dense" else ConvLayer)(
            jnp.asarray(_node(tree["params"], layer.path)["kernel"]),
            None if layer.bias is None else jnp.asarray(_node(tree["params"], layer.path)["bias"]),
        )
        for layer in net.layers
    ]
    variables = jax.tree.map(jnp.asarray, tree)
    small = CompressedNetwork(layers, net.sites, variables, net, module_kwargs=module_kwargs)
    _check_outputs(net, masked, small, activation)
    return small


def _check_outputs(net: BayesianModule, masked, small: CompressedNetwork, activation) -> None:
    """The compressed network must compute what the masked one does, on a fresh input."""
    x = _probe(net, 1)
    expected = net.module.apply(masked, x, **small._module_kwargs)
    name = type(net.module).__name__
    try:
        actual = small(x)
    except Exception as err:  # a shape that the module's own code fixes
        actual = err
    if isinstance(actual, Exception) or not _same(expected, actual):
        raise ValueError(
            f"compress: removing the dead units of {name} changes its output, so its layers "
            "are not a chain in which each Dense/Conv layer feeds only the next one through "
            "elementwise functions, pooling, a channels-last flatten or BatchNorm. Use "
            "pruned_variables(net, guide, params) with net.module.apply for the masked "
            "network instead (same outputs, original shapes)."
        ) from (actual if isinstance(actual, Exception) else None)
    if activation is not None and not _same(expected, mlp_apply(small, x, activation)):
        raise ValueError(
            f"compress: {name} does not compute the plain chain h = activation(h @ W + b) "
            "of its Dense layers with the given activation, so mlp_apply cannot run it. "
            "Pass the activation it uses, or leave activation unset and call the "
            "compressed network itself, small(x)."
        )


def _compress_named(names, guide, params, threshold, activation):
    if isinstance(names, str) or not (
        isinstance(names, Sequence) and all(isinstance(n, str) for n in names)
    ):
        raise TypeError(
            "compress needs the network returned by vdppl.numpyro.bayesianize, or the names "
            f"given to vdppl.numpyro.nn.dense in order (a list of str); got {names!r}"
        )
    pruned = guide.pruned_median(params, threshold)
    missing = [n for n in names if f"{n}.kernel" not in pruned]
    if missing or not names:
        raise ValueError(
            f"compress: no kernel site for layer(s) {missing} among the guide's sites "
            f"{guide.dropout_sites}; pass the names given to vdppl.numpyro.nn.dense, or the "
            "network returned by vdppl.numpyro.bayesianize."
        )
    nodes = []
    for n in names:
        kernel, bias = np.asarray(pruned[f"{n}.kernel"]), params.get(f"{n}.bias")
        if kernel.ndim != 2:
            raise ValueError(
                f"compress: layer {n!r} has a kernel of shape {kernel.shape}, not a dense "
                "(in, out) one; layers written by hand are compressed as chains of "
                "vdppl.numpyro.nn.dense only. Convert a Flax module with "
                "vdppl.numpyro.bayesianize to compress convolutions."
            )
        nodes.append({"kernel": kernel, "bias": None if bias is None else np.asarray(bias)})
    activation = jax.nn.relu if activation is None else activation
    fns = _activations(activation, len(nodes))
    for i, (prev, nxt) in enumerate(itertools.pairwise(nodes)):

        def constants(prev=prev, f=fns[i]):  # a unit with no input outputs f(b)
            bias = prev["bias"]
            bias = np.zeros(prev["kernel"].shape[1], prev["kernel"].dtype) if bias is None else bias
            return np.asarray(f(jnp.asarray(bias)))[:, None]

        _shrink_pair(prev, nxt, False, constants)
    layers = [
        DenseLayer(jnp.asarray(n["kernel"]), None if n["bias"] is None else jnp.asarray(n["bias"]))
        for n in nodes
    ]
    return CompressedNetwork(layers, [f"{n}.kernel" for n in names], activation=activation)


def compress(
    net: BayesianModule | Sequence[str],
    guide,
    params: Mapping[str, Any],
    threshold: float = vdkl.DEFAULT_THRESHOLD,
    activation: Activation | None = None,
    *,
    module_kwargs: Mapping[str, Any] | None = None,
) -> CompressedNetwork:
    """A smaller deterministic network: pruned mean weights, dead units removed.

    Kernels are ``theta * (log_alpha < threshold)`` [2], biases and other parameters the
    fitted point estimates. Between two consecutive Dense/Conv layers (in call order),
    a unit (a feature, or a convolution's channel) is removed when

    * all its outgoing weights are pruned (its value is never used), or
    * all its incoming weights are pruned and the next layer is Dense with a bias: it
      then outputs a constant (its bias through what lies between, read off a run of the
      network), folded into the next bias as
      ``b_next += sum_slots W_next[slot, unit] * constant[slot, unit]``.

    Between the layers may lie elementwise functions, pooling, a channels-last flatten
    (``x.reshape(len(x), -1)``, as Flax's NHWC layout gives) and BatchNorm in evaluation
    mode (its entries for removed units are dropped too); grouped convolutions keep
    their channels. LeNet-5 (Conv -> pool -> Conv -> pool -> flatten -> Dense -> Dense)
    and MLPs qualify. The result is checked on a random input of the example's shape:
    it equals the masked mean network's output up to float32 rounding, or compress
    raises and points to :func:`pruned_variables` (masking only).

    :param net: the :class:`~vdppl.numpyro.nn.BayesianModule` of a Flax module, or the
        layer names given to :func:`vdppl.numpyro.nn.dense`, in order (a plain MLP).
    :param guide: the fitted :class:`~vdppl.numpyro.AutoVariationalDropout`.
    :param params: ``svi.get_params(state)`` (with ``svi_state.mutable_state`` merged in
        for ``batch_stats``).
    :param activation: for layer names, the elementwise activation between layers (or
        one per gap; default ReLU). For a Flax MLP, optional: when given, compress also
        checks that ``mlp_apply(small, x, activation)`` computes the network.
    :param module_kwargs: keyword arguments of an evaluation call of the Flax module
        (``{"train": False}``), used by the check runs and as ``small(x)``'s defaults;
        default ``bayesianize``'s ``module_kwargs``.
    :return: a :class:`CompressedNetwork`: ``small(x)`` runs it; ``small.variables`` and
        ``small.features`` feed a module rebuilt with the smaller widths.
    """
    threshold = vdkl.check_threshold(threshold)
    if isinstance(net, BayesianModule):
        kwargs = net.module_kwargs if module_kwargs is None else dict(module_kwargs)
        return _compress_module(net, guide, params, threshold, activation, kwargs)
    return _compress_named(net, guide, params, threshold, activation)
