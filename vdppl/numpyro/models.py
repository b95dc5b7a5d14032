"""Build Flax linen networks from :mod:`vdppl.models` specs (the NumPyro side of ``--arch``).

The same layer lists as :mod:`vdppl.pyro.models`, in Flax's conventions: channels-last
images, Dense kernels ``(in, out)``, Conv kernels ``(k, k, in, out)``. Datasets hold images
channels-first ``(n, C, H, W)``; :attr:`FlaxNetwork.prepare` converts them:

* a spec that starts with ``Flatten()`` (``mlp``, ``lenet300``) flattens the inputs in
  the model, in the dataset's (torch's) order, and the Flax module is the chain of Dense
  layers after it, so :func:`vdppl.numpyro.compress` can remove dead units from it and
  the first layer's inputs are the same pixels in both backends;
* otherwise 4-d inputs are transposed to ``(n, H, W, C)``.

``BatchNorm()`` is ``flax.linen.BatchNorm`` over the last (feature or channel) axis with
torch's momentum and epsilon (running averages updated with weight 0.1, ``epsilon=1e-5``;
the running variance is Flax's biased batch variance); it uses batch statistics when the
module is called with ``train=True`` and the running averages otherwise. :func:`vdppl.numpyro.bayesianize` keeps its scale and offset as point estimates
and its running averages as the mutable site ``"$state"``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from vdppl import models as specs

__all__ = ["FlaxNetwork", "Network", "build"]


def _fits(spec, shape: tuple[int, ...]) -> str | None:
    """Why ``spec`` cannot take inputs of ``shape`` (one example, channels last), or None."""
    if isinstance(spec, (specs.Conv, specs.MaxPool)):
        if len(shape) != 3:
            return "it needs image inputs (height, width, channels)"
        size = spec.kernel if isinstance(spec, specs.Conv) else spec.size
        pad = spec.padding if isinstance(spec, specs.Conv) else 0
        if min(shape[:2]) + 2 * pad < size:
            return f"its window {size}x{size} is larger than the padded image"
    return None


class Network(nn.Module):
    """A Flax module applying the layer specs in order (see :mod:`vdppl.models`).

    :param layers: the specs, e.g. ``vdppl.models.architecture("lenet5", 10)``.
    """

    layers: tuple

    @nn.compact
    def __call__(self, x, train: bool = False):
        for spec in self.layers:
            problem = _fits(spec, tuple(x.shape[1:]))
            if problem:
                raise ValueError(
                    f"layer {spec} does not fit inputs of shape {tuple(x.shape[1:])}: {problem}"
                )
            if isinstance(spec, specs.Dense):
                x = nn.Dense(spec.features)(x)
            elif isinstance(spec, specs.Conv):
                pad = ((spec.padding, spec.padding),) * 2
                x = nn.Conv(spec.features, (spec.kernel,) * 2, spec.stride, padding=pad)(x)
            elif isinstance(spec, specs.ReLU):
                x = nn.relu(x)
            elif isinstance(spec, specs.MaxPool):
                x = nn.max_pool(x, (spec.size,) * 2, strides=(spec.size,) * 2)
            elif isinstance(spec, specs.Flatten):
                x = x.reshape(x.shape[0], -1)
            elif isinstance(spec, specs.BatchNorm):
                x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5)(x)
            else:
                raise TypeError(f"unknown layer spec {spec!r}")
        return x


class FlaxNetwork(NamedTuple):
    """What :func:`build` returns.

    :param module: the :class:`Network` to pass to :func:`vdppl.numpyro.bayesianize`.
    :param input_shape: the shape of one prepared example (the module's input).
    :param prepare: dataset inputs ``(n, *input_shape_of_the_dataset)`` to module inputs
        (jit-compatible).
    """

    module: Network
    input_shape: tuple[int, ...]
    prepare: Callable


def _flatten(x):
    return jnp.reshape(x, (jnp.shape(x)[0], -1))


def _channels_last(x):
    return jnp.transpose(x, (0, 2, 3, 1)) if jnp.ndim(x) == 4 else x


def build(layers: list, input_shape: tuple[int, ...]) -> FlaxNetwork:
    """A Flax network for ``layers`` taking dataset inputs of shape ``(n, *input_shape)``.

    Sizes are inferred by Flax from the example input; a layer that does not fit the
    shape it receives is a ``ValueError`` naming it (checked abstractly, no compute).

    >>> from vdppl import models
    >>> net = build(models.architecture("mlp", 10, (32,)), (1, 8, 8))
    >>> net.input_shape
    (64,)
    """
    layers = list(layers)
    if layers and isinstance(layers[0], specs.Flatten):
        prepare, layers = _flatten, layers[1:]
    else:
        prepare = _channels_last
    example = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)
    shape = tuple(jax.eval_shape(prepare, example).shape[1:])
    module = Network(tuple(layers))
    jax.eval_shape(module.init, jax.random.key(0), jax.ShapeDtypeStruct((1, *shape), jnp.float32))
    return FlaxNetwork(module, shape, prepare)
