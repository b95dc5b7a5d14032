"""Initialisation strategies for guides over models with improper priors."""

from __future__ import annotations

from pyro.infer.autoguide.initialization import init_to_feasible

from vdppl.pyro.distributions import ImproperPriorError, is_log_uniform

__all__ = ["GROUPS_KEY", "INIT_KEY", "init_to_module"]

#: ``infer`` key under which a model's sample site offers its initial value.
#: :func:`~vdppl.pyro.bayesianize` stores each layer's current weight there.
INIT_KEY = "vdppl_init"
#: ``infer`` key under which a convolution's weight site gives the layer's ``groups``, so
#: that a guide can tell which input channel each weight of ``(out, in/groups, *kernel)``
#: reads (``alpha_shape="unit"``, dead-input counts). Absent means 1.
GROUPS_KEY = "vdppl_groups"


def init_to_module(site=None, fallback=init_to_feasible):
    """Initialise each site from the value its module offers, else by ``fallback``.

    A site written by :func:`~vdppl.pyro.bayesianize` carries the layer's current weight
    in ``site["infer"]["vdppl_init"]``, so a guide starts from the network's own
    initialisation or from a pretrained network. A :class:`~vdppl.pyro.LogUniform` site
    without such a value is an error (the prior is improper and cannot be sampled); any
    other continuous site uses ``fallback`` (``init_to_feasible``, as ``AutoNormal`` does)
    and a discrete one is sampled from its distribution.

    Use it like Pyro's strategies: ``AutoNormal(model, init_loc_fn=init_to_module)``.
    """
    if site is None:
        return lambda site: init_to_module(site, fallback=fallback)
    value = site["infer"].get(INIT_KEY)
    if value is not None:
        return value.detach().clone()
    if is_log_uniform(site["fn"]):
        raise ImproperPriorError(
            f"site {site['name']!r} has an improper LogUniform prior and no initial value. "
            "Write the layer with vdppl.pyro.bayesianize, pass "
            f"infer={{'{INIT_KEY}': tensor}} to its pyro.sample, or give the guide "
            "init_loc_fn=pyro.infer.autoguide.init_to_value(values={...})."
        )
    if site["fn"].support.is_discrete:
        # Not a guide's business (autoguides refuse discrete sites with their own message),
        # but lets pyro.infer.Predictive(guide.model, ...) sample unobserved labels.
        return site["fn"]()
    return fallback(site)
