"""``kl_weight``: scale the KL term of every latent site by ``beta`` (KL warm-up)."""

from __future__ import annotations

from pyro.poutine.messenger import Messenger

from vdppl.options import check_kl_weight

__all__ = ["KLWeightMessenger", "check_kl_weight", "kl_weight"]


class KLWeightMessenger(Messenger):
    """Multiplies the scale of every unobserved sample site by ``beta``.

    Applied to both the model and the guide, it turns the ELBO into::

        E_q[log p(D | w)] - beta * KL(q(w) || p(w))

    whether the KL is analytic or estimated from samples, because both the guide's and
    the model's latent log densities get the same factor. Observed sites are untouched.
    Unlike :func:`pyro.poutine.scale`, ``beta = 0`` is allowed: the sparse-VD recipe of
    Molchanov et al. (2017) trains with ``beta = 0`` for the first epochs, then raises it
    linearly to 1.
    """

    def __init__(self, beta: float) -> None:
        super().__init__()
        self.beta = check_kl_weight(beta)

    def _pyro_sample(self, msg) -> None:
        if not msg["is_observed"]:
            msg["scale"] = self.beta * msg["scale"]


def kl_weight(fn=None, beta: float = 1.0):
    """Handler form of :class:`KLWeightMessenger`."""
    msngr = KLWeightMessenger(beta)
    return msngr(fn) if fn is not None else msngr
