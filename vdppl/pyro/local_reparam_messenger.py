"""``local_reparam``: sample pre-activations instead of weights (Kingma et al. 2015).

[1] Kingma, Salimans, Welling (2015) "Variational Dropout and the Local
    Reparameterization Trick", arXiv:1506.02557.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from pyro.poutine.messenger import Messenger

from vdppl.options import unused_sites_message
from vdppl.pyro import ops

__all__ = ["LRT_FLAG", "LocalReparamMessenger", "local_reparam"]

#: ``infer`` key that marks a weight site as consumed by :func:`vdppl.pyro.ops.linear` or
#: :func:`vdppl.pyro.ops.conv`. :func:`~vdppl.pyro.bayesianize` sets it on the model's
#: weight sites and :class:`~vdppl.pyro.AutoVariationalDropout` copies it to the guide's.
LRT_FLAG = "local_reparam"


def _gaussian_base(fn):
    """The Normal under ``.to_event()`` wrappers, or None if ``fn`` is not one."""
    while isinstance(fn, torch.distributions.Independent):
        fn = fn.base_dist
    return fn if isinstance(fn, torch.distributions.Normal) else None


class LocalReparamMessenger(Messenger):
    """Defers the guide's weight samples and samples pre-activations in their place.

    A sample site whose ``infer`` dict has ``local_reparam=True`` and whose distribution
    is a factorized Normal is not sampled: its value becomes the mean ``mu`` and its
    distribution is kept (other distributions are sampled as usual).
    In the model, :func:`~vdppl.pyro.ops.linear` / :func:`~vdppl.pyro.ops.conv` called
    with ``name=`` that site returns one sample of the pre-activations::

        x @ mu.T + b + sqrt(x**2 @ sigma2.T + 1e-8) * eps,   eps ~ N(0, 1)

    so no weight tensor is ever sampled. Wrap the guide and the model in the same handler
    (:class:`~vdppl.pyro.LocalReparamELBO` does). A deferred site that the model uses
    anywhere but in those primitives would silently see the mean; that is an error here.
    Use it as a context manager or a function wrapper, like every Pyro handler.

    [1] Kingma, Salimans, Welling (2015) arXiv:1506.02557.
    """

    def __init__(self) -> None:
        super().__init__()
        self._deferred: dict[str, torch.distributions.Normal] = {}
        self._unused: set[str] = set()

    def __enter__(self):
        self._deferred = {}
        self._unused = set()
        return super().__enter__()

    def __exit__(self, exc_type, exc_value, traceback):
        result = super().__exit__(exc_type, exc_value, traceback)
        if exc_type is None and self._unused:
            raise RuntimeError(
                unused_sites_message(
                    list(self._unused),
                    "vdppl.pyro.ops.linear/conv (with name=<site>)",
                    "(pyro.infer.Predictive runs the guide apart from the model, which local "
                    "reparameterization cannot follow: use vdppl.pyro.predict(..., mode='lrt').)",
                )
            )
        return result

    def _pyro_sample(self, msg) -> None:
        if msg["is_observed"] or msg["value"] is not None:
            return
        if not msg["infer"].get(LRT_FLAG, False):
            return
        base = _gaussian_base(msg["fn"])
        if base is None:  # not a factorized Gaussian: sample the weight as usual
            return
        self._deferred[msg["name"]] = base
        self._unused.add(msg["name"])
        msg["value"] = base.loc

    def _lookup(self, msg, weight_dims: int):
        name = msg["name"]
        base = self._deferred.get(name)
        if base is None:
            return None
        weight = msg["args"][1]
        if weight is not base.loc:
            raise RuntimeError(
                f"the weight passed to vdppl.pyro.ops for site {name!r} is not the value of "
                "that sample site in the latest guide run. Either it was transformed after "
                "pyro.sample (local_reparam needs the site's value itself), or the guide ran "
                "apart from the model, as in pyro.infer.Predictive, which draws all guide "
                "samples first: for LRT predictions use vdppl.pyro.predict(..., mode='lrt')."
            )
        if base.loc.dim() != weight_dims:
            raise RuntimeError(
                f"site {name!r} has shape {tuple(base.loc.shape)} but a {weight_dims}-d weight "
                "was expected; local_reparam does not support vectorized particles. Use "
                "num_particles=1 or vectorize_particles=False."
            )
        self._unused.discard(name)
        return base

    def _pyro_vdppl_linear(self, msg) -> None:
        base = self._lookup(msg, 2)
        if base is not None:
            x, _, *rest = msg["args"]
            bias = rest[0] if rest else msg["kwargs"].get("bias")
            msg["value"] = ops.lrt_linear(x, base.loc, base.variance, bias)
            msg["done"] = True

    def _pyro_vdppl_conv(self, msg) -> None:
        weight = msg["args"][1]
        base = self._lookup(msg, weight.dim())
        if base is not None:
            x, _loc, *rest = msg["args"]
            msg["value"] = ops.lrt_conv(x, base.loc, base.variance, *rest, **msg["kwargs"])
            msg["done"] = True


def local_reparam(
    fn: Callable[..., Any] | None = None,
) -> LocalReparamMessenger | Callable[..., Any]:
    """Handler form of :class:`LocalReparamMessenger` (``with local_reparam(): ...``, or
    ``local_reparam(fn)`` for ``fn`` run under it)."""
    msngr = LocalReparamMessenger()
    return msngr(fn) if fn is not None else msngr
