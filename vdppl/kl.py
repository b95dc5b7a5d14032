"""Backend-neutral maths of variational dropout.

Every function here takes arrays of one library (``torch`` or ``jax.numpy``) and
returns arrays of the same library. The library is found from the argument's type,
so this module imports neither torch nor JAX itself; the two backends share this one
implementation.

Notation: a weight ``w`` has the factorized Gaussian posterior
``q(w) = N(theta, sigma^2)`` and dropout rate ``alpha = sigma^2 / theta^2``. Under the
log-uniform prior ``p(|w|) ∝ 1/|w|`` the KL divergence depends on ``alpha`` only::

    -KL(alpha) = 0.5 log alpha - E_{eps ~ N(1, alpha)} log|eps| + C

defined up to the constant ``C`` because the prior is improper. Both approximations below
fix ``C`` so that ``KL -> 0`` as ``alpha -> inf`` (``C = -(gamma + log 2) / 2``, where
``gamma`` is the Euler–Mascheroni constant).

References:

[1] Kingma, Salimans, Welling (2015) "Variational Dropout and the Local
    Reparameterization Trick", arXiv:1506.02557.
[2] Molchanov, Ashukha, Vetrov (2017) "Variational Dropout Sparsifies Deep Neural
    Networks", ICML, arXiv:1701.05369.
"""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any, TypeVar

__all__ = [
    "APPROXIMATIONS",
    "C1",
    "C2",
    "C3",
    "DEFAULT_THRESHOLD",
    "K1",
    "K2",
    "K3",
    "KINGMA_CONST",
    "LOG_ALPHA_CLIP",
    "LRT_EPS",
    "base_distribution",
    "check_approximation",
    "check_threshold",
    "clip_log_alpha",
    "keep_mask",
    "kl_kingma",
    "kl_log_uniform",
    "kl_molchanov",
    "log_alpha_from_sigma2",
    "neg_kl_kingma",
    "neg_kl_molchanov",
]

#: Constants of the sigmoid fit of [2], eq. (14).
K1, K2, K3 = 0.63576, 1.87320, 1.48695
#: Constants of the cubic fit of [1], section 3.3 (valid for alpha <= 1).
C1, C2, C3 = 1.16145124, -1.50204118, 0.58629921
#: Additive constant of the cubic fit, on the same scale as [2] (KL -> 0 as alpha -> inf).
#: [1] leaves it unnamed; this is the minimax constant against the exact KL on
#: log alpha in [-8, 0], found by numerical integration (``tests/test_kl.py`` recomputes it).
KINGMA_CONST = -0.65555
#: Bounds used by [2]'s code when a finite log alpha is needed (KL, pruning, reports).
LOG_ALPHA_CLIP = (-8.0, 8.0)
#: [2] prunes weights with ``log alpha > 3`` (alpha > ~20, dropout rate p > 0.95).
DEFAULT_THRESHOLD = 3.0
#: Guards ``log(theta^2)`` at ``theta = 0`` as [2]'s code does.
_EPS = 1e-8

#: A torch, JAX or NumPy array; each function returns an array of its argument's library.
Array = TypeVar("Array")
#: Added to the variance of a local-reparameterization sample,
#: ``mean + sqrt(var + LRT_EPS) * eps``, so that the gradient of the square root stays
#: finite where a variance is exactly zero (a pruned unit, an all-zero input). Both
#: backends' ``ops`` modules use this one value.
LRT_EPS = 1e-8
#: Names of the two KL approximations: [2]'s (any alpha) and [1]'s (alpha <= 1).
APPROXIMATIONS = ("molchanov", "kingma")


def _ops(x: Any) -> SimpleNamespace:
    """The handful of array operations this module needs, from ``x``'s own library."""
    module = type(x).__module__
    if module.startswith("torch"):
        import torch

        return SimpleNamespace(
            sigmoid=torch.sigmoid,
            softplus=torch.nn.functional.softplus,
            exp=torch.exp,
            log=torch.log,
            clip=torch.clamp,
            asarray=torch.as_tensor,
        )
    if module.startswith(("jax", "jaxlib")):
        import jax
        import jax.numpy as jnp

        return SimpleNamespace(
            sigmoid=jax.nn.sigmoid,
            softplus=jax.nn.softplus,
            exp=jnp.exp,
            log=jnp.log,
            clip=jnp.clip,
            asarray=jnp.asarray,
        )
    if module.startswith("numpy"):
        import numpy as np

        return SimpleNamespace(
            sigmoid=lambda v: 0.5 * (1.0 + np.tanh(0.5 * v)),
            softplus=lambda v: np.logaddexp(0.0, v),
            exp=np.exp,
            log=np.log,
            clip=np.clip,
            asarray=np.asarray,
        )
    raise TypeError(
        f"vdppl.kl works on torch, jax or numpy arrays; got {type(x).__name__}. "
        "Convert the value with torch.as_tensor(...) or jnp.asarray(...) first."
    )


def neg_kl_molchanov(log_alpha: Array) -> Array:
    """Sigmoid approximation of ``-KL`` from [2], valid for every alpha::

        -KL ≈ k1 * sigmoid(k2 + k3 * log_alpha) - 0.5 * log1p(1 / alpha) - k1

    with ``k1, k2, k3 = 0.63576, 1.87320, 1.48695``; its error is below 0.01 nats.
    Computed as ``-kl_molchanov(log_alpha)``.
    """
    return -kl_molchanov(log_alpha)


def neg_kl_kingma(log_alpha: Array) -> Array:
    """Cubic approximation of ``-KL`` from [1], valid for ``alpha <= 1`` only::

        -KL ≈ const + 0.5 * log_alpha + c1 * alpha + c2 * alpha**2 + c3 * alpha**3

    with ``c1, c2, c3 = 1.16145124, -1.50204118, 0.58629921`` and ``const = -0.65555``
    (see :data:`KINGMA_CONST`). Callers clip ``log_alpha <= 0``; beyond that the cubic
    diverges from the true KL.
    """
    ops = _ops(log_alpha)
    alpha = ops.exp(log_alpha)
    return KINGMA_CONST + 0.5 * log_alpha + alpha * (C1 + alpha * (C2 + alpha * C3))


def kl_molchanov(log_alpha: Array) -> Array:
    """``KL(q || log-uniform)`` per weight by [2]'s approximation, ``-neg_kl_molchanov``.

    Uses ``k1 - k1 * sigmoid(z) = k1 * sigmoid(-z)`` and ``log1p(1 / alpha) =
    softplus(-log_alpha)``, so that it costs few elementwise operations (it runs on every
    weight at every step) and stays finite, with finite gradients, for any finite
    ``log_alpha``::

        KL ≈ k1 * sigmoid(-k2 - k3 * log_alpha) + 0.5 * softplus(-log_alpha)
    """
    ops = _ops(log_alpha)
    return K1 * ops.sigmoid(-K2 - K3 * log_alpha) + 0.5 * ops.softplus(-log_alpha)


def kl_kingma(log_alpha: Array) -> Array:
    """``KL(q || log-uniform)`` per weight by [1]'s approximation (``-neg_kl_kingma``)."""
    return -neg_kl_kingma(log_alpha)


def check_approximation(approximation: Any) -> str:
    """Validate the name of a KL approximation (one of :data:`APPROXIMATIONS`); return it.

    >>> check_approximation("kingma")
    'kingma'
    """
    if approximation not in APPROXIMATIONS:
        raise ValueError(
            f"Unknown KL approximation {approximation!r}; expected 'molchanov' (any alpha) "
            "or 'kingma' (alpha <= 1)."
        )
    return approximation


def kl_log_uniform(log_alpha: Array, approximation: str = "molchanov") -> Array:
    """KL per weight by the named approximation, ``"molchanov"`` or ``"kingma"``."""
    if check_approximation(approximation) == "molchanov":
        return kl_molchanov(log_alpha)
    return kl_kingma(log_alpha)


def clip_log_alpha(log_alpha: Array, low: float | None = None, high: float | None = None) -> Array:
    """Clip ``log_alpha`` to ``[low, high]``, by default [2]'s ``[-8, 8]``."""
    low = LOG_ALPHA_CLIP[0] if low is None else low
    high = LOG_ALPHA_CLIP[1] if high is None else high
    return _ops(log_alpha).clip(log_alpha, low, high)


def log_alpha_from_sigma2(theta: Array, log_sigma2: Array, clip: bool = True) -> Array:
    """Additive-noise reparameterization of [2], eq. (15)::

        log_alpha = log_sigma2 - log(theta**2 + 1e-8)

    clipped to ``[-8, 8]`` unless ``clip=False``. The ``1e-8`` keeps the value and its
    gradient finite at ``theta = 0``.
    """
    ops = _ops(theta)
    log_alpha = log_sigma2 - ops.log(theta * theta + _EPS)
    return clip_log_alpha(log_alpha) if clip else log_alpha


def check_threshold(threshold: float) -> float:
    """Validate a pruning threshold on ``log alpha``; return it as a float."""
    try:
        value = float(threshold)
    except (TypeError, ValueError):
        raise TypeError(f"threshold must be a number, got {threshold!r}") from None
    low, high = LOG_ALPHA_CLIP
    if not (math.isfinite(value) and low < value < high):
        raise ValueError(
            f"threshold={threshold!r} is outside ({low}, {high}), the range log alpha is "
            "clipped to, so it would keep every weight or prune every weight. The sparse "
            "VD paper uses 3.0 (alpha ≈ 20, dropout rate ≈ 0.95)."
        )
    return value


def keep_mask(log_alpha: Array, threshold: float = DEFAULT_THRESHOLD) -> Array:
    """Boolean mask of the weights kept by [2]'s rule: ``log_alpha < threshold``."""
    return log_alpha < check_threshold(threshold)


def base_distribution(fn: Any, wrappers: tuple[type, ...]) -> Any:
    """``fn`` with the wrappers of types ``wrappers`` peeled off (each has ``base_dist``).

    Each backend passes the wrappers that change neither values nor the family of its
    distributions (``Independent``, NumPyro's ``MaskedDistribution``), so that
    ``isinstance(base_distribution(fn, wrappers), LogUniform)`` says whether a site's
    prior is log-uniform, whatever ``.to_event()`` / ``.mask()`` the model added. Never
    pass a transforming wrapper (``TransformedDistribution``): its values differ from
    its base's.
    """
    while isinstance(fn, wrappers):
        fn = fn.base_dist
    return fn
