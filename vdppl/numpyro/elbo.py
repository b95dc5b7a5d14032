"""``LocalReparamELBO``: the mean-field ELBO with the local reparameterization trick.

[1] Kingma, Salimans, Welling (2015) arXiv:1506.02557.
[2] Molchanov, Ashukha, Vetrov (2017) arXiv:1701.05369.
"""

from __future__ import annotations

import warnings
from contextlib import ExitStack
from typing import Any

import jax
import jax.numpy as jnp
from jax import random
from numpyro.distributions.kl import kl_divergence
from numpyro.distributions.util import scale_and_mask
from numpyro.handlers import replay, seed, substitute, trace
from numpyro.infer import TraceMeanField_ELBO
from numpyro.util import check_model_guide_match

from vdppl.numpyro._checks import check_kl_weight, is_concrete
from vdppl.numpyro.kl_weight_messenger import kl_weight as kl_weight_handler
from vdppl.numpyro.local_reparam_messenger import local_reparam as local_reparam_handler

__all__ = ["KL_WEIGHT_KWARG", "LocalReparamELBO"]

#: Keyword that :meth:`LocalReparamELBO.loss` takes out of the model's kwargs: pass
#: ``svi.update(state, x, y, kl_weight=beta)`` to vary beta without recompiling.
KL_WEIGHT_KWARG = "kl_weight"


def _log_prob_sum(site: dict) -> jax.Array:
    if site["intermediates"]:
        log_p = site["fn"].log_prob(site["value"], site["intermediates"])
    else:
        log_p = site["fn"].log_prob(site["value"])
    return jnp.sum(scale_and_mask(log_p, scale=site["scale"]))


def elbo_terms(model_trace: dict, guide_trace: dict) -> jax.Array:
    """One particle's ELBO from a model trace replayed against a guide trace::

        sum_observed scale * log p(y | ...) - sum_latent scale * KL(q || p)

    with the analytic KL wherever :func:`numpyro.distributions.kl.kl_divergence` knows the
    pair, ``log p(z) - log q(z)`` at the sampled value elsewhere, and ``-log q`` for
    auxiliary guide sites. Log densities are computed only where they enter: the weight
    sites of a variational dropout guide need none (their KL depends on alpha alone).
    """
    elbo = jnp.zeros(())
    for name, site in model_trace.items():
        if site["type"] != "sample":
            continue
        if site["is_observed"]:
            elbo = elbo + _log_prob_sum(site)
            continue
        guide_site = guide_trace[name]
        try:
            kl = kl_divergence(guide_site["fn"], site["fn"])
        except NotImplementedError:
            elbo = elbo + _log_prob_sum(site) - _log_prob_sum(guide_site)
            continue
        elbo = elbo - jnp.sum(scale_and_mask(kl, scale=guide_site["scale"]))
    for name, site in guide_trace.items():
        if site["type"] == "sample" and name not in model_trace:
            elbo = elbo - _log_prob_sum(site)
    return elbo


class LocalReparamELBO(TraceMeanField_ELBO):
    """:class:`~numpyro.infer.TraceMeanField_ELBO` run under
    :class:`~vdppl.numpyro.local_reparam`, with a KL weight::

        ELBO = sum_n scale * log p(y_n | x_n, w) - kl_weight * sum_sites KL(q || p)

    The data term is one local-reparameterization sample per example (no weight tensor is
    sampled); the KL is analytic wherever NumPyro's ``kl_divergence`` knows the pair (it
    does for :class:`~vdppl.numpyro.LogUniform` and Normal priors) and the single-sample
    estimate elsewhere. Minibatch scaling comes from the model's
    ``numpyro.plate(..., subsample_size=...)`` (or ``numpyro.handlers.scale``): the ELBO,
    not the user, scales the data term against the KL.

    Each particle creates its own handlers inside the traced loss, so nothing outlives one
    call and the loss can be jitted and vmapped (``num_particles > 1`` with
    ``vectorize_particles=True`` vmaps over particles). Mutable state (``numpyro.mutable``)
    is threaded through as :class:`~numpyro.infer.TraceMeanField_ELBO` does.

    KL warm-up: ``kl_weight`` set here (or ``elbo.kl_weight = b``) is a constant baked into
    any function jitted afterwards, so changing it does not reach an already compiled
    step. For a schedule, pass it per step as a keyword the ELBO takes out of the model's
    arguments: ``svi.update(state, x, y, kl_weight=beta)`` (a JAX scalar, so the step
    compiles once). Do not pass it to ``svi.init``, which calls the model directly.

    :param kl_weight: ``beta`` in ``[0, inf)``.
    :param local_reparam: set ``False`` to sample one weight tensor per minibatch instead
        (for comparisons; same maths, higher gradient variance).
    :param num_particles: ELBO particles (averaged).
    :param vectorize_particles: as for :class:`~numpyro.infer.TraceMeanField_ELBO`.

    [1] Kingma, Salimans, Welling (2015) arXiv:1506.02557.
    """

    def __init__(
        self,
        kl_weight: float = 1.0,
        local_reparam: bool = True,
        num_particles: int = 1,
        vectorize_particles: bool = True,
    ) -> None:
        if not (isinstance(num_particles, int) and num_particles > 0):
            raise ValueError(f"num_particles must be a positive int, got {num_particles!r}")
        super().__init__(num_particles=num_particles, vectorize_particles=vectorize_particles)
        self.kl_weight = kl_weight
        self.local_reparam = bool(local_reparam)

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "kl_weight":
            value = check_kl_weight(value)
        super().__setattr__(name, value)

    def _handlers(self, beta) -> ExitStack:
        stack = ExitStack()
        if self.local_reparam:
            stack.enter_context(local_reparam_handler())
        if not (is_concrete(beta) and beta == 1.0):
            stack.enter_context(kl_weight_handler(beta=beta))
        return stack

    def loss_with_mutable_state(
        self, rng_key, param_map: dict, model, guide, *args, **kwargs
    ) -> dict:
        """Negative ELBO (mean over particles) and the updated mutable state.

        ``kwargs`` may hold ``kl_weight`` (:data:`KL_WEIGHT_KWARG`), which overrides
        ``self.kl_weight`` for this call and is not passed to the model or guide.
        """
        beta = check_kl_weight(kwargs.pop(KL_WEIGHT_KWARG, self.kl_weight))

        def particle(key):
            params = dict(param_map)
            model_seed, guide_seed = random.split(key)
            with self._handlers(beta):
                guide_run = substitute(seed(guide, guide_seed), data=param_map)
                guide_trace = trace(guide_run).get_trace(*args, **kwargs)
                mutable = {n: s["value"] for n, s in guide_trace.items() if s["type"] == "mutable"}
                params.update(mutable)
                model_run = substitute(replay(seed(model, model_seed), guide_trace), data=params)
                model_trace = trace(model_run).get_trace(*args, **kwargs)
            mutable.update(
                {n: s["value"] for n, s in model_trace.items() if s["type"] == "mutable"}
            )
            check_model_guide_match(model_trace, guide_trace)
            return elbo_terms(model_trace, guide_trace), (mutable or None)

        if self.num_particles == 1:
            elbo, mutable = particle(rng_key)
            return {"loss": -elbo, "mutable_state": mutable}
        elbos, mutable = self.vectorize_particles_fn(
            particle, random.split(rng_key, self.num_particles)
        )
        if mutable is not None:
            warnings.warn(
                "mutable state is ignored when num_particles > 1 (as in NumPyro's ELBOs).",
                stacklevel=2,
            )
        return {"loss": -jnp.mean(elbos), "mutable_state": None}
