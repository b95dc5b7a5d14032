"""``kl_weight``: scale the KL term of every latent site by ``beta`` (KL warm-up)."""

from __future__ import annotations

from collections.abc import Callable

from numpyro.primitives import Messenger

from vdppl.numpyro._checks import check_kl_weight

__all__ = ["KLWeightMessenger", "check_kl_weight", "kl_weight"]


class kl_weight(Messenger):
    """Multiplies the scale of every unobserved sample site by ``beta``.

    Applied to both the model and the guide, it turns the ELBO into::

        E_q[log p(D | w)] - beta * KL(q(w) || p(w))

    whether the KL is analytic or estimated from samples, because both the guide's and
    the model's latent log densities get the same factor (NumPyro's
    :class:`~numpyro.infer.TraceMeanField_ELBO` scales an analytic KL by the guide
    site's scale). Observed sites are untouched. Unlike :class:`numpyro.handlers.scale`,
    ``beta = 0`` is allowed: the sparse-VD recipe of Molchanov et al. (2017) trains with
    ``beta = 0`` for the first epochs, then raises it linearly to 1.

    ``beta`` may be a traced JAX scalar (e.g. an argument of a jitted step), so a
    warm-up schedule does not recompile; only concrete values are validated.

    :param fn: a model or guide (or ``None`` to use it as a context manager).
    :param beta: the KL weight, ``>= 0``.

    >>> import jax, numpyro, numpyro.distributions as dist
    >>> from numpyro.handlers import seed, trace
    >>> def model():
    ...     numpyro.sample("z", dist.Normal(0.0, 1.0))
    >>> trace(seed(kl_weight(model, beta=0.0), 0)).get_trace()["z"]["scale"]
    0.0
    """

    def __init__(self, fn: Callable | None = None, beta=1.0) -> None:
        self.beta = check_kl_weight(beta)
        super().__init__(fn)

    def process_message(self, msg) -> None:
        if msg["type"] != "sample" or msg["is_observed"]:
            return
        msg["scale"] = self.beta if msg.get("scale") is None else self.beta * msg["scale"]


#: The Pyro backend's name for the same handler.
KLWeightMessenger = kl_weight
