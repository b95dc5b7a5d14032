"""Bayesian layers for NumPyro models, and ``bayesianize`` for Flax linen modules.

Two ways to put priors on a network's weights:

* **Functional layers** for models written by hand: :func:`dense` and :func:`conv` sample
  a kernel site ``"<name>.kernel"`` (prior expanded to the kernel's shape, the initial
  kernel offered to the guide under ``infer["vdppl_init"]``, marked
  ``infer["local_reparam"]``), read the bias from ``numpyro.param("<name>.bias")`` and
  apply the effectful primitives of :mod:`vdppl.numpyro.ops`.
* :func:`bayesianize` converts a **Flax linen** module. Its ``flax.linen.Dense`` and
  ``flax.linen.Conv`` layers are routed through the same primitives with
  :func:`flax.linen.intercept_methods` while the module runs, so the module's own code is
  unchanged. Kernel sites are named by the layer's path in the module's variables,
  ``"Dense_0.kernel"`` (``"<name>.Dense_0.kernel"`` with ``name=``); the layer's bias and
  every parameter of the layers kept deterministic become ``numpyro.param`` point
  estimates named by their path (``"Dense_0.bias"``), fitted by SVI, as
  :func:`numpyro.contrib.module.flax_module` does for all parameters. Other variable
  collections (``BatchNorm``'s ``batch_stats``) are one ``numpyro.mutable`` site
  ``"<name>$state"`` updated at each training call (pass ``mutable`` state back with
  ``{**params, **svi_state.mutable_state}`` when predicting).

Supported Flax API (``bayesianize``):

* ``flax.linen.Module`` subclasses, written with ``@nn.compact`` or ``setup``, including
  ``nn.Sequential`` and nested modules; extra ``__call__`` arguments pass through.
* Bayesian: ``nn.Dense`` and ``nn.Conv`` (1-, 2-, 3-d; strides; padding ``"SAME"``,
  ``"VALID"``, ints, ``(low, high)`` pairs, ``"CIRCULAR"``, ``"REFLECT"``, ``"CAUSAL"``;
  ``kernel_dilation``, ``input_dilation``, ``feature_group_count``; with or without bias),
  in float32, each called once per forward pass.
* Point estimates: ``nn.LayerNorm``, ``GroupNorm``, ``RMSNorm``, ``BatchNorm``,
  ``InstanceNorm``, ``PReLU``, and with ``unsupported="deterministic"`` any other layer.
* Refused with a ``ValueError`` that names the layer (or a ``TypeError`` for the
  object): the NNX API (``flax.nnx.Module``), ``nn.DenseGeneral``, ``nn.Einsum``,
  ``nn.ConvTranspose``, ``nn.ConvLocal``, ``nn.Embed``, RNN cells, attention,
  ``nn.SpectralNorm`` / ``nn.WeightNorm``, unknown modules with their own parameters,
  Dense/Conv with a custom ``dot_general`` / ``conv_general_dilated``, a ``mask``, or a
  dtype other than float32, and a layer shared between calls.

Layouts are Flax's throughout: a Dense kernel is ``(in, out)``, a Conv kernel is
``(*kernel_size, in / groups, out)`` on channels-last inputs.

Where inputs are checked: shapes statically in the primitives (so also under ``jit``);
NaN/inf only on concrete arrays, i.e. in :func:`bayesianize` (the example input, the
initial weights), in :func:`dense` / :func:`conv` and when a converted network is called
eagerly; inside a jitted step the values are tracers and are not inspected.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
from numpyro.distributions import Distribution
from numpyro.primitives import mutable

from vdppl.numpyro import ops
from vdppl.numpyro._checks import check_finite
from vdppl.numpyro.distributions import LogUniform
from vdppl.numpyro.init import INIT_KEY
from vdppl.numpyro.local_reparam_messenger import LRT_FLAG

__all__ = ["GROUPS_KEY", "BayesianModule", "bayesianize", "conv", "dense", "weight_site"]

#: ``infer`` key under which a grouped convolution's kernel site gives the layer's
#: ``feature_group_count`` (set when it is above 1), so that a guide can tell which input
#: channel each weight of the ``(*kernel, in / groups, out)`` kernel reads (as
#: :data:`vdppl.pyro.init.GROUPS_KEY` does for the Pyro backend).
GROUPS_KEY = "vdppl_groups"


def _check_prior(prior: Any) -> Distribution:
    prior = LogUniform() if prior is None else prior
    if not isinstance(prior, Distribution):
        raise TypeError(
            "prior must be a numpyro Distribution such as vdppl.numpyro.LogUniform(), "
            f"got {type(prior).__name__}"
        )
    if prior.batch_shape != () or prior.event_shape != ():
        raise ValueError(
            "prior must be scalar (batch_shape () and event_shape ()); it is expanded to "
            f"each kernel's shape. Got batch_shape {prior.batch_shape}, "
            f"event_shape {prior.event_shape}."
        )
    return prior


def _kernel_init(init: Any, shape: tuple[int, ...], where: str):
    """The ``vdppl_init`` value: an array of ``shape``, or ``key -> array`` for initializers."""
    if init is None:
        init = jax.nn.initializers.lecun_normal()  # Flax's default for Dense and Conv
    if callable(init):
        return lambda key: init(key, shape, jnp.float32)
    init = jnp.asarray(init)
    if init.shape != shape:
        raise ValueError(f"{where}: init has shape {init.shape}, expected kernel shape {shape}")
    check_finite(init, f"{where}: init")
    return init


def weight_site(name: str, shape: tuple[int, ...], prior: Distribution, init: Any, groups: int = 1):
    """Sample a kernel site with ``prior`` expanded to ``shape``, marked for the LRT.

    ``groups``: a convolution's ``feature_group_count``, recorded under
    :data:`GROUPS_KEY` when above 1.
    """
    fn = prior.expand(shape).to_event(len(shape))
    infer = {INIT_KEY: init, LRT_FLAG: True}
    if int(groups) != 1:
        infer[GROUPS_KEY] = int(groups)
    return numpyro.sample(name, fn, infer=infer)


def dense(
    name: str,
    x,
    features: int,
    *,
    prior: Distribution | None = None,
    init: Any = None,
    use_bias: bool = True,
    bias_init: Any = None,
):
    """A Bayesian dense layer: ``x @ W + b`` with ``W ~ prior`` of shape ``(in, features)``.

    Samples the site ``"<name>.kernel"`` and reads ``numpyro.param("<name>.bias")``; under
    :class:`~vdppl.numpyro.local_reparam` it returns one sample of the pre-activations
    (``x @ mu + b + sqrt(x**2 @ sigma2 + 1e-8) * eps``, [1]).

    :param prior: scalar prior expanded to the kernel; default
        :class:`~vdppl.numpyro.LogUniform`.
    :param init: initial kernel for the guide: an ``(in, features)`` array (e.g.
        pretrained) or a JAX initializer ``init(key, shape, dtype)``; default LeCun
        normal, as ``flax.linen.Dense``.
    :param bias_init: initial bias (default zeros).

    [1] Kingma, Salimans, Welling (2015) arXiv:1506.02557.
    """
    prior = _check_prior(prior)
    check_finite(x, f"the input of layer {name!r}")
    shape = (int(jnp.shape(x)[-1]), int(features))
    kernel = weight_site(f"{name}.kernel", shape, prior, _kernel_init(init, shape, name))
    bias = _bias_param(name, features, use_bias, bias_init)
    return ops.dense(x, kernel, bias, site=f"{name}.kernel")


def _bias_param(name: str, features: int, use_bias: bool, bias_init: Any):
    if not use_bias:
        return None
    init = jnp.zeros((features,)) if bias_init is None else jnp.asarray(bias_init)
    return numpyro.param(f"{name}.bias", init)


def conv(
    name: str,
    x,
    features: int,
    kernel_size: int | Sequence[int],
    *,
    strides: int | Sequence[int] = 1,
    padding: ops.Padding = "SAME",
    dilation: int | Sequence[int] = 1,
    feature_group_count: int = 1,
    input_dilation: int | Sequence[int] = 1,
    prior: Distribution | None = None,
    init: Any = None,
    use_bias: bool = True,
    bias_init: Any = None,
):
    """A Bayesian convolution on channels-last inputs ``(batch, *spatial, in)``.

    Kernel site ``"<name>.kernel"`` of shape ``(*kernel_size, in / groups, features)``,
    bias ``numpyro.param("<name>.bias")``; options as for :func:`dense` and
    :func:`vdppl.numpyro.ops.conv` (``dilation`` is the kernel's, ``input_dilation`` the
    input's, as ``flax.linen.Conv``'s ``kernel_dilation`` / ``input_dilation``). Under
    :class:`~vdppl.numpyro.local_reparam`::

        conv(x, mu) + b + sqrt(conv(x**2, sigma2) + 1e-8) * eps,   eps ~ N(0, 1)

    [1] Kingma, Salimans, Welling (2015) arXiv:1506.02557.
    """
    prior = _check_prior(prior)
    check_finite(x, f"the input of layer {name!r}")
    in_features = int(jnp.shape(x)[-1])
    if in_features % feature_group_count:
        raise ValueError(
            f"{name}: {in_features} input channels are not divisible by "
            f"feature_group_count={feature_group_count}"
        )
    size = (kernel_size,) if isinstance(kernel_size, int) else tuple(kernel_size)
    shape = (*size, in_features // feature_group_count, int(features))
    init = _kernel_init(init, shape, name)
    kernel = weight_site(f"{name}.kernel", shape, prior, init, feature_group_count)
    bias = _bias_param(name, features, use_bias, bias_init)
    return ops.conv(
        x,
        kernel,
        bias,
        strides,
        padding,
        dilation,
        feature_group_count,
        input_dilation=input_dilation,
        site=f"{name}.kernel",
    )


# ------------------------------------------------------------------ bayesianize
def _linen():
    import flax.linen as nn

    return nn


def _layer_classes():
    nn = _linen()
    unsupported = (
        nn.DenseGeneral,
        nn.Einsum,
        nn.ConvTranspose,
        nn.ConvLocal,
        nn.Embed,
        nn.RNNCellBase,
        nn.MultiHeadDotProductAttention,
        nn.SpectralNorm,
        nn.WeightNorm,
    )
    deterministic = (
        nn.LayerNorm,
        nn.GroupNorm,
        nn.RMSNorm,
        nn.BatchNorm,
        nn.InstanceNorm,
        nn.PReLU,
    )
    return unsupported, deterministic


@dataclass
class _Layer:
    """One converted Dense or Conv layer: its sites, initial values and settings."""

    path: tuple[str, ...]
    kind: str  # "dense" or "conv"
    site: str
    bias: str | None
    kernel_init: Any
    bias_init: Any
    settings: dict = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.kernel_init.shape)

    def __call__(self, x, prior: Distribution):
        groups = self.settings.get("feature_group_count", 1)
        kernel = weight_site(self.site, self.shape, prior, self.kernel_init, groups)
        bias = None if self.bias is None else numpyro.param(self.bias, self.bias_init)
        return self.apply(x, kernel, bias)

    def apply(self, x, kernel, bias):
        """The layer's computation with the given kernel and bias (the effectful primitive).

        The kernel may have fewer features than :attr:`shape` (a compressed network).
        """
        if self.kind == "dense":
            return ops.dense(x, kernel, bias, site=self.site)
        return self._conv(x, kernel, bias)

    def _conv(self, x, kernel, bias):
        s = self.settings
        n = jnp.ndim(kernel) - 2
        batch_shape = jnp.shape(x)[: jnp.ndim(x) - (n + 1)]
        if len(batch_shape) != 1:  # no batch dim, or several: flatten as flax.linen.Conv
            x = jnp.reshape(x, (-1, *jnp.shape(x)[len(batch_shape) :]))
        padding = s["padding"]
        if isinstance(padding, str) and padding in ("CIRCULAR", "REFLECT", "CAUSAL"):
            x, padding = _pad_input(x, padding, jnp.shape(kernel)[:n], s["kernel_dilation"])
        y = ops.conv(
            x,
            kernel,
            bias,
            s["strides"],
            padding,
            s["kernel_dilation"],
            s["feature_group_count"],
            input_dilation=s["input_dilation"],
            site=self.site,
        )
        if len(batch_shape) != 1:
            y = jnp.reshape(y, (*batch_shape, *jnp.shape(y)[1:]))
        return y


def _pad_input(x, mode: str, kernel_size, dilation):
    """Flax's ``'CIRCULAR'``, ``'REFLECT'`` and ``'CAUSAL'`` paddings, done on the input."""
    n = len(kernel_size)
    dilation = (dilation,) * n if isinstance(dilation, int) else tuple(dilation)
    if mode == "CAUSAL":  # 1-d only; flax.linen.Conv refuses it for more dims at init
        return jnp.pad(x, [(0, 0), (dilation[0] * (kernel_size[0] - 1), 0), (0, 0)]), "VALID"
    spans = [(k - 1) * d + 1 for k, d in zip(kernel_size, dilation, strict=True)]
    pads = [(0, 0), *[((s - 1) // 2, s // 2) for s in spans], (0, 0)]
    return jnp.pad(x, pads, mode={"CIRCULAR": "wrap", "REFLECT": "reflect"}[mode]), "VALID"


def _check_float32(module, path) -> None:
    where = ".".join(path) or "the root module"
    dtypes = (module.dtype, module.param_dtype)
    if any(d is not None and jnp.dtype(d) != jnp.float32 for d in dtypes):
        raise ValueError(
            f"bayesianize supports float32 layers; {type(module).__name__} at {where!r} has "
            f"dtype={module.dtype}, param_dtype={module.param_dtype}."
        )


def _dense_layer(module, path, params, site, bias) -> _Layer:
    _check_float32(module, path)
    if module.dot_general is not None or module.dot_general_cls is not None:
        raise ValueError(
            f"bayesianize does not support a custom dot_general (Dense at {'.'.join(path)!r})"
        )
    return _Layer(path, "dense", site, bias, params["kernel"], params.get("bias"))


def _conv_layer(module, path, params, site, bias) -> _Layer:
    where = ".".join(path) or "the root module"
    _check_float32(module, path)
    if module.mask is not None:
        raise ValueError(f"bayesianize does not support masked convolutions (Conv at {where!r})")
    if module.conv_general_dilated is not None or module.conv_general_dilated_cls is not None:
        raise ValueError(f"bayesianize does not support a custom convolution (Conv at {where!r})")
    n = params["kernel"].ndim - 2

    def broadcast(v):  # flax.linen.Conv's convention: None or an int for every dim
        v = 1 if v is None else v
        return (v,) * n if isinstance(v, int) else tuple(v)

    padding = module.padding
    padding = padding.upper() if isinstance(padding, str) else ops.conv_padding(padding, n)
    settings = {
        "strides": broadcast(module.strides),
        "padding": padding,
        "input_dilation": broadcast(module.input_dilation),
        "kernel_dilation": broadcast(module.kernel_dilation),
        "feature_group_count": module.feature_group_count,
    }
    return _Layer(path, "conv", site, bias, params["kernel"], params.get("bias"), settings)


def _subtree(tree: Mapping, path: tuple[str, ...]) -> Mapping:
    for key in path:
        tree = tree[key]
    return tree


def _leaves(tree: Mapping, prefix: tuple[str, ...] = ()):
    for key, value in tree.items():
        if isinstance(value, Mapping):
            yield from _leaves(value, (*prefix, key))
        else:
            yield (*prefix, key), value


def _under(path: tuple[str, ...], roots) -> bool:
    return any(path[: len(r)] == r for r in roots)


class BayesianModule:
    """A Flax linen module whose Dense and Conv kernels are NumPyro sample sites.

    Returned by :func:`bayesianize`; call it inside a model like the module itself:
    ``logits = bnn(x)`` (extra arguments go to ``module.apply``, e.g. ``train=True`` or
    ``rngs={"dropout": numpyro.prng_key()}``).

    Attributes: ``module`` (the Flax module), ``layers`` (converted layers in call order,
    each with ``site``, ``bias``, ``kind``, ``shape``, ``kernel_init``, ``bias_init``),
    ``sites`` (kernel site names), ``deterministic`` (path in the module's ``params`` ->
    initial value, for every parameter kept as a point estimate; its ``numpyro.param``
    name is :meth:`param_name` of the path), ``state`` (initial non-``params``
    collections), ``prior``, ``example`` (the example input), ``module_kwargs`` (the
    keyword arguments of the initialising run, reused when :func:`~vdppl.numpyro.compress`
    runs the module).
    """

    def __init__(
        self, module, layers, deterministic, state, prior, name, example, module_kwargs=None
    ):
        self.module = module
        self.module_kwargs: dict = dict(module_kwargs or {})
        self.layers: list[_Layer] = layers
        self.deterministic: dict[tuple[str, ...], Any] = deterministic
        self.state: dict = state
        self.prior = prior
        self.name = name
        self.example = example
        self._by_path = {layer.path: layer for layer in layers}

    @property
    def sites(self) -> list[str]:
        return [layer.site for layer in self.layers]

    def param_name(self, path: tuple[str, ...]) -> str:
        """``numpyro.param`` / sample-site name of a variable at ``path`` in ``params``."""
        return ".".join((self.name, *path) if self.name else path)

    def _param_tree(self, values: Mapping[str, Any] | None = None) -> dict:
        tree: dict = {}
        for path, init in self.deterministic.items():
            name = self.param_name(path)
            if values is None:
                value = numpyro.param(name, init)
            else:
                value = values.get(name, init)
            node = tree
            for key in path[:-1]:
                node = node.setdefault(key, {})
            node[path[-1]] = value
        return tree

    def _interceptor(self, next_fun, args, kwargs, context):
        layer = None
        if context.method_name == "__call__":
            layer = self._by_path.get(context.module.path)
        if layer is None:
            return next_fun(*args, **kwargs)
        return layer(args[0], self.prior)

    def __call__(self, x, *args, **kwargs):
        if isinstance(x, (jax.Array, np.ndarray)):
            check_finite(x, "the network's input")
        variables = {"params": self._param_tree()}
        nn = _linen()
        with nn.intercept_methods(self._interceptor):
            if not self.state:
                return self.module.apply(variables, x, *args, **kwargs)
            # a fresh top-level dict: the update below replaces its entries, never self.state's
            state = mutable(f"{self.name}$state", dict(self.state))
            out, new_state = self.module.apply(
                {**variables, **state}, x, *args, mutable=list(state), **kwargs
            )
        state.update(jax.lax.stop_gradient(dict(new_state)))
        return out

    def variables(self, params: Mapping[str, Any], kernels: Mapping[str, Any]) -> dict:
        """Flax variables ``{"params": ...}`` for a plain ``module.apply`` (no NumPyro).

        :param params: fitted ``numpyro.param`` values (``svi.get_params(state)``).
        :param kernels: kernel per site, e.g. ``guide.pruned_median(params)``.
        """
        tree = self._param_tree(params)
        for layer in self.layers:
            node = tree
            for key in layer.path:
                node = node.setdefault(key, {})
            node["kernel"] = kernels[layer.site]
            if layer.bias is not None:
                node["bias"] = params.get(layer.bias, layer.bias_init)
        state = params.get(f"{self.name}$state", self.state)
        return {"params": tree, **state}

    def __repr__(self) -> str:
        layers = ", ".join(f"{layer.site} {layer.shape}" for layer in self.layers)
        return f"BayesianModule({type(self.module).__name__}: {layers})"


def _example_input(example: Any):
    if isinstance(example, tuple) and all(isinstance(d, (int, np.integer)) for d in example):
        return jnp.ones(example, jnp.float32)
    if isinstance(example, (jax.Array, np.ndarray)):
        check_finite(example, "the example input")
        return jnp.asarray(example)
    raise TypeError(
        "bayesianize needs an input shape (a tuple of ints) or an example input array, "
        f"got {type(example).__name__}"
    )


def bayesianize(
    module,
    example_input: Any,
    *,
    prior: Distribution | None = None,
    rng_key=None,
    variables: Mapping | None = None,
    name: str = "",
    unsupported: str = "error",
    module_kwargs: Mapping[str, Any] | None = None,
) -> BayesianModule:
    """Make a Flax linen module's Dense and Conv kernels NumPyro sample sites.

    The module is initialised with ``rng_key`` on ``example_input`` (an array, or its
    shape), or taken as is from pretrained ``variables``; each ``flax.linen.Dense`` and
    ``flax.linen.Conv`` kernel becomes a site ``"<path>.kernel"`` with ``prior`` (default
    :class:`~vdppl.numpyro.LogUniform`) expanded to its shape, its current value recorded
    as the guide's initial mean (so a pretrained network starts where it is). Biases and
    the parameters of normalisation layers become ``numpyro.param`` point estimates; other
    variable collections (``batch_stats``) one ``numpyro.mutable`` site. See the module
    docstring for names.

    :param unsupported: ``"error"`` (default) refuses layers that have weights but no
        Bayesian counterpart (``DenseGeneral``, ``Einsum``, ``ConvTranspose``,
        ``ConvLocal``, ``Embed``, RNN cells, attention, and unknown modules with
        parameters); ``"deterministic"`` keeps them (and every layer inside them) as
        point estimates.
    :param module_kwargs: extra keyword arguments of the module's ``__call__`` for the
        initialising run (e.g. ``{"train": False}``).
    :raises ValueError: if the module has no Dense or Conv layer to convert, or one is
        called more than once per forward pass (shared weights).
    """
    nn = _linen()
    if not isinstance(module, nn.Module):
        if type(module).__module__.startswith("flax.nnx"):
            raise TypeError(
                f"bayesianize converts flax.linen modules; {type(module).__name__} is a "
                "flax.nnx module, which is not supported. Write the network with "
                "flax.linen (nn.Dense, nn.Conv), or by hand with vdppl.numpyro.nn.dense/conv."
            )
        raise TypeError(f"bayesianize expects a flax.linen.Module, got {type(module).__name__}")
    if unsupported not in ("error", "deterministic"):
        raise ValueError(f"unsupported must be 'error' or 'deterministic', got {unsupported!r}")
    prior = _check_prior(prior)
    x = _example_input(example_input)
    calls: dict[tuple[str, ...], dict] = {}  # path -> {"module", "calls"}, in call order

    def record(next_fun, args, kwargs, context):
        entry = calls.setdefault(context.module.path, {"module": context.module, "calls": 0})
        entry["calls"] += context.method_name == "__call__"
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
        if variables is None:
            if rng_key is None:
                raise ValueError(
                    "bayesianize needs rng_key= to initialise the module (randomness is "
                    "explicit in JAX), or the pretrained variables= to start from."
                )
            variables = module.init(rng_key, x, **(module_kwargs or {}))
        else:
            module.apply(variables, x, **(module_kwargs or {}))
    variables = dict(variables)
    params = variables.pop("params", {})
    for path, value in _leaves(params):
        check_finite(value, f"parameter {'.'.join(path)!r}")
    kept_det, layers = _classify(calls, unsupported)
    converted = {}
    for path, module_ in layers.items():
        site = ".".join((name, *path, "kernel") if name else (*path, "kernel"))
        bias = ".".join((name, *path, "bias") if name else (*path, "bias"))
        own = _subtree(params, path)
        bias = bias if "bias" in own else None
        make = _dense_layer if isinstance(module_, nn.Dense) else _conv_layer
        converted[path] = make(module_, path, own, site, bias)
    if not converted:
        raise ValueError(
            f"{type(module).__name__} has no flax.linen.Dense or flax.linen.Conv layer for "
            "bayesianize to put a prior on."
        )
    deterministic = {}
    for path, value in _leaves(params):
        owner = path[:-1]
        if owner in converted:
            continue
        if unsupported == "error" and not _under(owner, kept_det):
            kind = type(calls[owner]["module"]).__name__ if owner in calls else "module"
            raise ValueError(
                f"bayesianize does not know the layer {kind} (at {'.'.join(owner)!r}) and it "
                "has parameters. Pass unsupported='deterministic' to keep it as a point "
                "estimate."
            )
        deterministic[path] = value
    order = list(calls)
    ordered = sorted(converted.values(), key=lambda layer: order.index(layer.path))
    state = jax.tree.map(jnp.asarray, variables)
    return BayesianModule(module, ordered, deterministic, state, prior, name, x, module_kwargs)


def _classify(calls: dict, unsupported: str):
    """Roots of the subtrees kept as point estimates, and the Dense/Conv modules to convert."""
    nn = _linen()
    unsupported_types, deterministic_types = _layer_classes()
    kept = set()
    for path, entry in calls.items():
        if isinstance(entry["module"], unsupported_types):
            if unsupported == "error":
                raise ValueError(
                    f"bayesianize does not support {type(entry['module']).__name__} (at "
                    f"{'.'.join(path)!r}); it converts flax.linen.Dense and flax.linen.Conv. "
                    "Pass unsupported='deterministic' to keep such layers as point estimates."
                )
            kept.add(path)
        elif isinstance(entry["module"], deterministic_types):
            kept.add(path)
    layers = {}
    for path, entry in calls.items():
        module = entry["module"]
        if not isinstance(module, (nn.Dense, nn.Conv)) or _under(path, kept):
            continue
        if entry["calls"] > 1:
            raise ValueError(
                f"the {type(module).__name__} at {'.'.join(path)!r} is called "
                f"{entry['calls']} times per forward pass (shared weights); bayesianize "
                "gives each layer one weight site sampled once, so write the shared layer "
                "with vdppl.numpyro.nn.dense/conv and reuse its sampled kernel instead."
            )
        layers[path] = module
    return kept, layers
