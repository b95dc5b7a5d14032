"""PSIS-LOO for variational dropout fits, with the reliability check spelled out.

``az.loo`` treats the draws in ``log_likelihood`` as posterior draws. For SVI they come
from the variational posterior ``q``, so the Pareto shape ``k`` of each point's importance
weights says how well ``q``'s draws stand in for the leave-one-out posterior: above 0.7
the estimate for that point is unreliable (Vehtari, Gelman, Gabry 2017; Vehtari et al.
2024 "Pareto smoothed importance sampling", JMLR).
"""

from __future__ import annotations

import warnings

import numpy as np

__all__ = ["K_THRESHOLD", "UnreliableLOOWarning", "elpd_loo", "warn_if_unreliable"]

#: Pareto k above which PSIS estimates are unreliable.
K_THRESHOLD = 0.7


class UnreliableLOOWarning(UserWarning):
    """Some points' Pareto k exceed 0.7: their LOO estimates cannot be trusted."""


def warn_if_unreliable(k: np.ndarray, result: str, instead: str) -> float:
    """Warn :class:`UnreliableLOOWarning` when some Pareto ``k > 0.7``; return their share.

    ``k = inf`` (too few distinct draws to fit the tail, e.g. identical draws of a point
    estimate) counts as unreliable.
    """
    share = float(np.mean(k > K_THRESHOLD))
    if share > 0:
        warnings.warn(
            f"{int(np.sum(k > K_THRESHOLD))} of {k.size} observations ({share:.1%}) have "
            f"Pareto k > {K_THRESHOLD}: importance sampling from the variational posterior is "
            f"unreliable for them, so {result} is not trustworthy. {instead}, or use more "
            "posterior draws.",
            UnreliableLOOWarning,
            stacklevel=3,
        )
    return share


def elpd_loo(idata, var_name: str | None = None) -> dict[str, float]:
    """ELPD by PSIS-LOO and the share of Pareto k above 0.7 [1].

    With ``ll[s, i] = log p(y_i | w_s)`` over ``S`` draws and ``log_w = psislw(-ll)`` the
    Pareto-smoothed importance weights, normalised over draws (``az.loo``)::

        elpd_loo = sum_i log(sum_s exp(log_w[s, i] + ll[s, i]))
        p_loo    = sum_i log(mean_s exp(ll[s, i])) - elpd_loo

    Identical draws (a point estimate, ``mode="mean"``) give ``elpd_loo = sum_i ll[0, i]``
    and ``p_loo = 0`` with every ``k = inf``: nothing is left out, and it warns.

    Returns ``{"elpd_loo", "se", "p_loo", "pareto_k_max", "pareto_k_share_above_0.7",
    "n"}``. Warns :class:`UnreliableLOOWarning` when any ``k > 0.7``, naming how many:
    then compare models by held-out NLL instead, or draw more samples.

    [1] Vehtari, Gelman, Gabry (2017) "Practical Bayesian model evaluation using
        leave-one-out cross-validation and WAIC", Statistics and Computing 27,
        arXiv:1507.04544.
    """
    import arviz as az

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # replaced by the warning below, which says more
        result = az.loo(idata, var_name=var_name, pointwise=True)
    k = np.asarray(result.pareto_k).ravel()
    share = warn_if_unreliable(k, "elpd_loo", "Compare models by held-out NLL")
    return {
        "elpd_loo": float(result.elpd_loo),
        "se": float(result.se),
        "p_loo": float(result.p_loo),
        "pareto_k_max": float(k.max()),
        "pareto_k_share_above_0.7": share,
        "n": int(k.size),
    }
