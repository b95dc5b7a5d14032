"""``LocalReparamELBO``: the mean-field ELBO with the local reparameterization trick.

[1] Kingma, Salimans, Welling (2015) arXiv:1506.02557.
[2] Molchanov, Ashukha, Vetrov (2017) arXiv:1701.05369.
"""

from __future__ import annotations

import contextlib

import torch
from pyro import poutine
from pyro.distributions.util import scale_and_mask
from pyro.infer import TraceMeanField_ELBO
from pyro.infer.util import is_validation_enabled
from pyro.util import check_model_guide_match, warn_if_nan
from torch.distributions import kl_divergence

from vdppl.pyro.kl_weight_messenger import KLWeightMessenger, check_kl_weight
from vdppl.pyro.local_reparam_messenger import LocalReparamMessenger

__all__ = ["LocalReparamELBO"]


def _log_prob_sum(site) -> torch.Tensor:
    log_p = site["fn"].log_prob(site["value"], *site["args"], **site["kwargs"])
    return scale_and_mask(log_p, site["scale"], site["mask"]).sum()


class LocalReparamELBO(TraceMeanField_ELBO):
    """:class:`~pyro.infer.TraceMeanField_ELBO` run under
    :class:`~vdppl.pyro.local_reparam`, with an optional KL weight::

        ELBO = sum_n scale * log p(y_n | x_n, w) - kl_weight * sum_sites KL(q || p)

    The data term is one local-reparameterization sample per example (no weight tensor is
    sampled); the KL is analytic wherever :func:`torch.distributions.kl_divergence` knows
    the pair (it does for :class:`~vdppl.pyro.LogUniform` and Normal priors) and the
    usual single-sample estimate elsewhere. Minibatch scaling comes from the model's
    ``pyro.plate(..., subsample=...)``: the ELBO, not the user, scales the data term
    against the KL.

    Log densities are computed only where they enter the estimate: the observed sites
    (not ``pyro.deterministic`` ones, whose masked log density is 0), and latent sites
    without an analytic KL. The weight sites of a variational dropout guide need neither
    (their KL depends on ``alpha`` alone).

    :param float kl_weight: ``beta`` in ``[0, inf)``; set ``elbo.kl_weight`` between epochs
        for warm-up (Molchanov et al. 2017 go from 0 to 1 over the first 20 epochs).
    :param bool local_reparam: set ``False`` to sample one weight tensor per minibatch
        instead (for comparisons; same maths, higher gradient variance).
    :param kwargs: passed to :class:`~pyro.infer.TraceMeanField_ELBO`.

    [1] Kingma, Salimans, Welling (2015) arXiv:1506.02557.
    """

    def __init__(self, *, kl_weight: float = 1.0, local_reparam: bool = True, **kwargs):
        if kwargs.get("vectorize_particles") and local_reparam:
            raise ValueError(
                "LocalReparamELBO does not vectorize particles: local reparameterization "
                "already draws one independent sample per example. Use num_particles=1, "
                "or vectorize_particles=False."
            )
        super().__init__(**kwargs)
        self.kl_weight = check_kl_weight(kl_weight)
        self.local_reparam = bool(local_reparam)

    def __setattr__(self, name, value):
        if name == "kl_weight":
            value = check_kl_weight(value)
        super().__setattr__(name, value)

    def _handlers(self):
        stack = contextlib.ExitStack()
        if self.local_reparam:
            stack.enter_context(LocalReparamMessenger())
        if self.kl_weight != 1.0:
            stack.enter_context(KLWeightMessenger(self.kl_weight))
        return stack

    def _get_trace(self, model, guide, args, kwargs):
        with self._handlers():
            guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
            model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(
                *args, **kwargs
            )
        if is_validation_enabled():
            check_model_guide_match(model_trace, guide_trace, self.max_plate_nesting)
        guide_trace = poutine.util.prune_subsample_sites(guide_trace)
        model_trace = poutine.util.prune_subsample_sites(model_trace)
        return model_trace, guide_trace

    def _differentiable_loss_particle(self, model_trace, guide_trace):
        elbo = 0.0
        for name, model_site in model_trace.nodes.items():
            if model_site["type"] != "sample":
                continue
            if model_site["infer"].get("_deterministic"):
                continue  # pyro.deterministic: "observed" by a masked Delta, log_prob 0
            if model_site["is_observed"]:
                elbo = elbo + _log_prob_sum(model_site)
                continue
            guide_site = guide_trace.nodes[name]
            try:
                kl = kl_divergence(guide_site["fn"], model_site["fn"])
            except NotImplementedError:
                # no closed form: single-sample estimate log p(w) - log q(w)
                elbo = elbo + _log_prob_sum(model_site) - _log_prob_sum(guide_site)
                continue
            elbo = elbo - scale_and_mask(kl, guide_site["scale"], guide_site["mask"]).sum()
        # auxiliary guide sites (e.g. AutoNormal's "_unconstrained" sites) enter as -log q
        for name, guide_site in guide_trace.nodes.items():
            if guide_site["type"] == "sample" and name not in model_trace.nodes:
                elbo = elbo - _log_prob_sum(guide_site)
        surrogate = -elbo
        loss = surrogate.detach() if torch._C._get_tracing_state() else float(surrogate.detach())
        warn_if_nan(loss, "loss")
        return loss, surrogate
