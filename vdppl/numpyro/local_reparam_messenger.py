"""``local_reparam``: sample pre-activations instead of weights (Kingma et al. 2015).

How the guide's posterior reaches the model's layers
----------------------------------------------------
NumPyro runs the guide, then the model under :class:`~numpyro.handlers.replay`, which
copies each guide site's value *and its* ``infer`` *dict* to the model's site. Two
``infer`` keys say which sites take part:

* ``infer={"local_reparam": True}`` (:data:`LRT_FLAG`) on a **model** weight site: its
  value is consumed by :func:`~vdppl.numpyro.ops.dense` / :func:`~vdppl.numpyro.ops.conv`
  (:mod:`vdppl.numpyro.nn` and :func:`~vdppl.numpyro.bayesianize` set it);
* ``infer={"local_reparam": True, "vdppl_lrt_guide": True}`` (plus :data:`GUIDE_FLAG`) on
  the matching **guide** site, whose distribution is a (``.to_event``'d) Normal: the
  posterior. :class:`~vdppl.numpyro.AutoVariationalDropout` sets both; a guide written
  by hand sets them too.

Under this handler a guide site is not sampled: its value is the mean and its
distribution travels in ``infer["vdppl_lrt_posterior"]``. In the model, the primitive
called with that site's value returns a sample of the pre-activations. A model site is
never deferred, whatever its prior (a Normal prior is sampled as usual when nothing
replays the site), so it works whether one handler wraps both runs
(``LocalReparamELBO``, a ``with`` block) or each run is wrapped on its own
(``SVI(local_reparam(model), local_reparam(guide), ...)``): in the second form the
model's handler sees its weight sites before ``replay`` fills them in.

:class:`numpyro.infer.Predictive` substitutes the guide's values into the model instead
of replaying, and ``infer`` is lost. For it, the guide run also records each deferred
site's variance as a deterministic site ``"<site>$lrt_variance"``, which Predictive
substitutes back when the model's primitive asks for it; this needs one handler around
the whole call (``with local_reparam(): Predictive(...)(key, x)``).

State lives in the handler instance for one call (one ``with`` block, or one call of the
wrapped function) and is cleared when it ends, so no tracer outlives the trace that made
it. The noise key comes from ``numpyro.prng_key()`` (the model's ``seed``); without one
the primitive raises.

[1] Kingma, Salimans, Welling (2015) "Variational Dropout and the Local
    Reparameterization Trick", arXiv:1506.02557.
"""

from __future__ import annotations

from collections.abc import Callable

import numpyro
from numpyro.distributions import Normal
from numpyro.primitives import Messenger

from vdppl.numpyro import ops
from vdppl.numpyro.distributions import base_distribution
from vdppl.options import unused_sites_message

__all__ = [
    "GUIDE_FLAG",
    "LRT_FLAG",
    "POSTERIOR_KEY",
    "VARIANCE_SUFFIX",
    "LocalReparamMessenger",
    "local_reparam",
]

#: ``infer`` key that marks a weight site as consumed by :func:`vdppl.numpyro.ops.dense`
#: or :func:`vdppl.numpyro.ops.conv`. :mod:`vdppl.numpyro.nn` and
#: :func:`~vdppl.numpyro.bayesianize` set it on the model's weight sites and
#: :class:`~vdppl.numpyro.AutoVariationalDropout` sets it, with :data:`GUIDE_FLAG`, on
#: the guide's.
LRT_FLAG = "local_reparam"
#: ``infer`` key that marks a *guide* site as the posterior to defer (with
#: :data:`LRT_FLAG`). A model site with a Gaussian prior carries only :data:`LRT_FLAG`, so
#: the handler never mistakes it for the posterior.
GUIDE_FLAG = "vdppl_lrt_guide"
#: ``infer`` key carrying a deferred site's Normal from the guide to the model.
POSTERIOR_KEY = "vdppl_lrt_posterior"
#: Suffix of the deterministic site holding a deferred weight's variance.
VARIANCE_SUFFIX = "$lrt_variance"
_DEFERRED_HERE = "_vdppl_deferred"


def _gaussian_base(fn) -> Normal | None:
    """The Normal under ``.to_event()`` and ``.mask()`` wrappers, or None if there is none."""
    fn = base_distribution(fn)
    return fn if isinstance(fn, Normal) else None


_OPS = {"vdppl_dense": ops.lrt_dense, "vdppl_conv": ops.lrt_conv}


class local_reparam(Messenger):
    """Defers the guide's weight samples and samples pre-activations in their place.

    In the guide, a sample site whose ``infer`` dict has ``local_reparam=True`` and
    ``vdppl_lrt_guide=True`` and whose distribution is a factorized Normal (possibly
    ``.to_event``'d) is not sampled: its value becomes the mean ``mu`` and its
    distribution is kept (other distributions are sampled as usual). In the model,
    :func:`~vdppl.numpyro.ops.dense` / :func:`~vdppl.numpyro.ops.conv` called with that
    site's value returns one sample of the pre-activations::

        x @ mu + b + sqrt(x**2 @ sigma2 + 1e-8) * eps,   eps ~ N(0, 1)

    so no weight tensor is ever sampled. A deferred site that the model uses anywhere but
    in those primitives (or transforms before passing it) would silently hold the mean;
    that is an error when the call ends. Weights the guide sampled (no handler around the
    guide) pass through the primitives unchanged, so wrapping only the model is harmless.

    NumPyro style: use it as ``local_reparam(fn)`` or ``with local_reparam(): ...``.
    :class:`~vdppl.numpyro.LocalReparamELBO` applies it for SVI. Pair it only with an
    ELBO whose weight KL is analytic (``LocalReparamELBO``, ``TraceMeanField_ELBO``): an
    estimator that scores the weight's value (``Trace_ELBO``) would score the mean.

    [1] Kingma, Salimans, Welling (2015) arXiv:1506.02557.
    """

    def __init__(self, fn: Callable | None = None) -> None:
        super().__init__(fn)
        self._clear()

    def _clear(self) -> None:
        #: names of the guide sites this handler deferred (strings only)
        self._deferred: set[str] = set()
        #: model side: site name -> (value, posterior or None), for this call only
        self._weights: dict = {}
        self._consumed: set[str] = set()

    def __enter__(self):
        self._clear()
        return super().__enter__()

    def __exit__(self, exc_type, exc_value, traceback) -> None:
        unused = sorted(
            name
            for name, (_, base) in self._weights.items()
            if (base is not None or name in self._deferred) and name not in self._consumed
        )
        self._clear()
        super().__exit__(exc_type, exc_value, traceback)
        if exc_type is None and unused:
            raise RuntimeError(
                unused_sites_message(
                    unused,
                    "vdppl.numpyro.ops.dense/conv",
                    "(For numpyro.infer.Predictive, open one local_reparam() block around the "
                    "whole call, or use vdppl.numpyro.predict(..., mode='lrt').)",
                )
            )

    # ---------------------------------------------------------------- sample sites
    def process_message(self, msg) -> None:
        if msg["type"] == "sample":
            self._defer(msg)
        elif msg["type"] in _OPS:
            self._apply(msg)

    def _defer(self, msg) -> None:
        """Guide side: hold back a flagged Normal site, its value the mean.

        Only guide sites (:data:`GUIDE_FLAG`): a model site with a Gaussian prior, seen
        here before ``replay`` gives it the guide's value, must not be replaced by its
        prior mean.
        """
        if msg["is_observed"] or msg["value"] is not None or msg["kwargs"].get("sample_shape"):
            return
        if not (msg["infer"].get(LRT_FLAG, False) and msg["infer"].get(GUIDE_FLAG, False)):
            return
        base = _gaussian_base(msg["fn"])
        if base is None:  # not a factorized Gaussian: sample the weight as usual
            return
        msg["value"] = base.loc
        msg["infer"] = {**msg["infer"], POSTERIOR_KEY: base}
        msg[_DEFERRED_HERE] = True
        self._deferred.add(msg["name"])
        numpyro.deterministic(msg["name"] + VARIANCE_SUFFIX, base.variance)

    def postprocess_message(self, msg) -> None:
        """Model side: remember each flagged weight's value and replayed posterior."""
        if msg["type"] != "sample" or msg["is_observed"] or msg.get(_DEFERRED_HERE):
            return
        if msg["infer"].get(LRT_FLAG, False):
            self._weights[msg["name"]] = (msg["value"], msg["infer"].get(POSTERIOR_KEY))

    # ------------------------------------------------------------------ primitives
    def _apply(self, msg) -> None:
        if msg["value"] is not None:  # an inner local_reparam already sampled it
            return
        weight = msg["args"][1]
        found = next(
            ((name, base) for name, (value, base) in self._weights.items() if value is weight),
            None,
        )
        if found is None:
            return  # a weight this handler knows nothing about: plain computation
        name, base = found
        if base is not None:
            loc, variance = base.loc, base.variance
        elif name in self._deferred:
            loc, variance = weight, self._substituted_variance(name)
        else:
            return  # the guide sampled this weight: plain computation
        self._consumed.add(name)
        key = msg["rng_key"] if msg["rng_key"] is not None else numpyro.prng_key()
        x, _, *rest = msg["args"]
        msg["value"] = _OPS[msg["type"]](key, x, loc, variance, *rest)

    @staticmethod
    def _substituted_variance(name: str):
        """The deferred site's variance, substituted by ``Predictive`` from the guide run."""
        variance = numpyro.param(name + VARIANCE_SUFFIX)
        if variance is None:
            raise RuntimeError(
                f"local_reparam deferred the guide's weight site {name!r} (its value is the "
                "posterior mean), but the model got that value without its distribution: it "
                "was substituted rather than replayed, and no variance came with it. Run the "
                "model with numpyro.handlers.replay(model, guide_trace), or use "
                "numpyro.infer.Predictive or vdppl.numpyro.predict(..., mode='lrt') under "
                "one handler."
            )
        return variance


#: The Pyro backend's name for the same handler.
LocalReparamMessenger = local_reparam
