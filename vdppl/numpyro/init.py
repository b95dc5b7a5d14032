"""Initialisation strategies for guides over models with improper priors."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from numpyro.infer.initialization import init_to_feasible

from vdppl.numpyro.distributions import ImproperPriorError, is_log_uniform

__all__ = ["INIT_KEY", "init_to_module"]

#: ``infer`` key under which a model's sample site offers its initial value: an array,
#: or a callable ``init(rng_key) -> array`` evaluated once, when the guide is set up.
#: :mod:`vdppl.numpyro.nn` and :func:`~vdppl.numpyro.bayesianize` store each layer's
#: initial (or pretrained) kernel there.
INIT_KEY = "vdppl_init"


def init_to_module(site: dict | None = None, fallback: Callable = init_to_feasible):
    """Initialise each site from the value its layer offers, else by ``fallback``.

    A site written by :mod:`vdppl.numpyro.nn` or :func:`~vdppl.numpyro.bayesianize`
    carries its initial kernel in ``site["infer"]["vdppl_init"]`` (an array, or a callable
    taking the site's PRNG key), so a guide starts from the network's own initialisation
    or from a pretrained network. A :class:`~vdppl.numpyro.LogUniform` site without such a
    value is an error (the prior is improper and cannot be sampled); any other site uses
    ``fallback`` (``init_to_feasible``, a NumPyro init strategy).

    Use it like NumPyro's strategies: ``AutoNormal(model, init_loc_fn=init_to_module)``.
    """
    if site is None:
        return partial(init_to_module, fallback=fallback)
    if site["type"] != "sample" or site["is_observed"]:
        return None
    value = site["infer"].get(INIT_KEY)
    if value is not None:
        if callable(value):
            key = site["kwargs"].get("rng_key")
            if key is None:
                raise ValueError(
                    f"site {site['name']!r} offers a lazy initial value that needs a PRNG key; "
                    "set up the guide under numpyro.handlers.seed (SVI.init does)."
                )
            value = value(key)
        return value
    if is_log_uniform(site["fn"]):
        raise ImproperPriorError(
            f"site {site['name']!r} has an improper LogUniform prior and no initial value. "
            "Write the layer with vdppl.numpyro.nn.dense/conv or vdppl.numpyro.bayesianize, "
            f"pass infer={{'{INIT_KEY}': array}} to its numpyro.sample, or give the guide "
            "init_loc_fn=numpyro.infer.init_to_value(values={...})."
        )
    return fallback(site)
