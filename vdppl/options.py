"""Option checks that both backends share, with messages that say how to fix the input.

The Pyro and NumPyro guides and ELBOs accept the same options; validating them here keeps
one wording and one rule for both.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

from vdppl import kl as vdkl

__all__ = [
    "ALPHA_SHAPES",
    "CURVATURES",
    "INIT_LOG_SIGMA2_RANGE",
    "LOG_ALPHA_INIT_MARGIN",
    "NOISE_MODES",
    "VARIANCE_FORMS",
    "alpha_param_shape",
    "check_curvature",
    "check_guide_options",
    "check_kl_weight",
    "check_variance_form",
    "kl_approximation",
    "log_alpha_init_bounds",
    "unused_sites_message",
]

NOISE_MODES = ("additive", "multiplicative")
ALPHA_SHAPES = ("weight", "unit", "layer")
#: Posterior variance forms of additive noise: one ``log sigma^2`` per weight, or one
#: shared by every log-uniform site (the "uniform" form of Unlu & Aitchison 2020).
VARIANCE_FORMS = ("weight", "uniform")
#: Curvatures of the gradient-regularised ELBO (squared gradients, or Gauss-Newton).
CURVATURES = ("empirical_fisher", "ggn")
INIT_LOG_SIGMA2_RANGE = (-30.0, 5.0)
#: A learned multiplicative ``log alpha`` starts at least this fraction of its interval
#: ``(-8, max_log_alpha)`` inside the ends, where the interval's logit is still moderate.
LOG_ALPHA_INIT_MARGIN = 0.01


def _is_number(x: Any) -> bool:
    """A real Python or NumPy number (``1``, ``0.5``, ``np.float32(0.5)``), not a bool.

    (``numbers.Real`` covers NumPy's scalars; ``np.bool_`` is not one.)
    """
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def check_kl_weight(beta: Any) -> float:
    """Validate a KL weight: a finite number ``>= 0``; return it as a float."""
    try:
        value = float(beta)
    except (TypeError, ValueError):
        raise TypeError(f"kl_weight must be a number, got {beta!r}") from None
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(
            f"Expected kl_weight >= 0 and finite but got {beta!r}. Warm-up goes from 0 "
            "(data term only) to 1 (the ELBO)."
        )
    return value


def check_guide_options(
    noise: str | None,
    alpha_shape: str,
    fixed_alpha: float | None,
    max_log_alpha: float | None,
    init_log_sigma2: float,
    init_scale: float,
) -> tuple[str, float | None, float]:
    """Validate ``AutoVariationalDropout``'s options (either backend).

    Returns ``(noise, fixed_alpha, max_log_alpha)`` normalised: ``noise=None`` means
    multiplicative when ``fixed_alpha`` is given, else additive; ``max_log_alpha=None``
    means the clip's upper end, 8. Options that would be silently ignored are errors:
    ``alpha_shape`` with ``fixed_alpha`` (one frozen rate for every weight), and a
    ``max_log_alpha`` other than its default ``0.0`` or ``None`` with additive noise
    (alpha unbounded by design) or with ``fixed_alpha`` (nothing learned to bound).
    Numbers may be Python or NumPy scalars.
    """
    if noise is None:
        noise = "multiplicative" if fixed_alpha is not None else "additive"
    if noise not in NOISE_MODES:
        raise ValueError(f"noise must be one of {NOISE_MODES}, got {noise!r}")
    if alpha_shape not in ALPHA_SHAPES:
        raise ValueError(f"alpha_shape must be one of {ALPHA_SHAPES}, got {alpha_shape!r}")
    if noise == "additive" and alpha_shape != "weight":
        raise ValueError(
            f"alpha_shape={alpha_shape!r} needs noise='multiplicative': additive noise "
            "learns one sigma per weight, so its alpha is per weight."
        )
    if noise == "additive" and fixed_alpha is not None:
        raise ValueError(
            "fixed_alpha is Gaussian dropout, which is multiplicative noise; "
            "use noise='multiplicative' (or leave noise unset)."
        )
    if fixed_alpha is not None and alpha_shape != "weight":
        raise ValueError(
            f"alpha_shape={alpha_shape!r} has no effect with fixed_alpha: Gaussian dropout "
            "freezes one rate for every weight. Drop alpha_shape, or drop fixed_alpha to "
            "learn rates of that shape."
        )
    if fixed_alpha is not None and not (
        _is_number(fixed_alpha) and math.isfinite(fixed_alpha) and fixed_alpha > 0
    ):
        raise ValueError(
            f"Expected fixed_alpha > 0 and finite but got {fixed_alpha!r}. For dropout "
            "rate p use alpha = p / (1 - p) (p = 0.5 gives alpha = 1)."
        )
    low, high = vdkl.LOG_ALPHA_CLIP
    if max_log_alpha is not None and not (
        _is_number(max_log_alpha) and low < max_log_alpha <= high
    ):
        raise ValueError(
            f"max_log_alpha must be in (-8, 8] or None, got {max_log_alpha!r}; 0.0 bounds "
            "alpha by 1 as in Kingma et al. (2015)."
        )
    if max_log_alpha not in (None, 0.0) and (noise == "additive" or fixed_alpha is not None):
        what = (
            "additive noise (sparse VD) leaves alpha unbounded by design"
            if noise == "additive"
            else "fixed_alpha freezes alpha, so there is nothing to bound"
        )
        raise ValueError(
            f"max_log_alpha={max_log_alpha!r} bounds a learned multiplicative alpha, but "
            f"{what}. Leave max_log_alpha unset, or use noise='multiplicative' without "
            "fixed_alpha."
        )
    low, high = INIT_LOG_SIGMA2_RANGE
    if not (_is_number(init_log_sigma2) and low <= init_log_sigma2 <= high):
        raise ValueError(
            f"init_log_sigma2 must be a number in [{low}, {high}], got {init_log_sigma2!r}. "
            "Below, the noise is lost to float32 rounding of the weights; above, every "
            "weight starts as noise. Molchanov et al. (2017) use -10."
        )
    if not (_is_number(init_scale) and math.isfinite(init_scale) and init_scale > 0):
        raise ValueError(
            f"Expected init_scale > 0 and finite but got {init_scale!r}: it is the initial "
            "standard deviation of the Normal guide of the sites without a LogUniform prior."
        )
    fixed = None if fixed_alpha is None else float(fixed_alpha)
    return noise, fixed, vdkl.LOG_ALPHA_CLIP[1] if max_log_alpha is None else float(max_log_alpha)


def check_variance_form(variance: str, noise: str) -> str:
    """Validate ``AutoVariationalDropout(variance=...)`` against the (normalised) noise mode.

    ``"uniform"`` is one ``log sigma^2`` shared by every log-uniform site, which only
    additive noise parameterizes; with multiplicative noise ``sigma^2 = alpha * theta**2``
    differs per weight whatever the shape of alpha.
    """
    if variance not in VARIANCE_FORMS:
        raise ValueError(f"variance must be one of {VARIANCE_FORMS}, got {variance!r}")
    if variance == "uniform" and noise != "additive":
        raise ValueError(
            "variance='uniform' (one shared sigma^2) needs noise='additive': with "
            "multiplicative noise (and fixed_alpha) sigma^2 = alpha * theta**2 varies with "
            "theta. Use noise='additive', or alpha_shape='layer' for one shared rate."
        )
    return variance


def check_curvature(curvature: str) -> str:
    """Validate ``GradientRegularizedELBO(curvature=...)`` (either backend)."""
    if curvature not in CURVATURES:
        raise ValueError(f"curvature must be one of {CURVATURES}, got {curvature!r}")
    return curvature


def kl_approximation(noise: str, fixed_alpha: float | None, max_log_alpha: float) -> str:
    """``"kingma"`` when multiplicative noise keeps alpha <= 1, else ``"molchanov"``."""
    bound = math.log(fixed_alpha) if fixed_alpha is not None else max_log_alpha
    return "kingma" if noise == "multiplicative" and bound <= 0 else "molchanov"


def log_alpha_init_bounds(max_log_alpha: float) -> tuple[float, float]:
    """Where a learned multiplicative ``log alpha`` may start inside ``(-8, max_log_alpha)``.

    The guides constrain it to that open interval (``-8 + width * sigmoid(u)``), whose
    ends are at ``u = -inf`` and ``+inf``; the initial value is clipped to::

        (-8 + margin * width, max_log_alpha - margin * width),   width = max_log_alpha + 8

    with ``margin = 0.01``, so ``|u| <= logit(0.99) ≈ 4.6`` and ``d log_alpha / du`` starts
    at no less than 4 % of its value at the centre.

    >>> log_alpha_init_bounds(0.0)
    (-7.92, -0.08)
    """
    low = vdkl.LOG_ALPHA_CLIP[0]
    inset = LOG_ALPHA_INIT_MARGIN * (max_log_alpha - low)
    return low + inset, max_log_alpha - inset


def alpha_param_shape(shape: tuple[int, ...], alpha_shape: str, unit_axis: int) -> tuple[int, ...]:
    """Shape of the dropout-rate parameter of a weight of ``shape``.

    ``weight``: one rate per weight; ``unit``: one per input unit, along ``unit_axis``
    (1 for torch's ``(out, in, *kernel)``, -2 for Flax's ``(*kernel, in, out)``; a 1-d site
    has one per element); ``layer``: one.

    >>> alpha_param_shape((32, 16, 3, 3), "unit", 1)
    (1, 16, 1, 1)
    >>> alpha_param_shape((3, 3, 16, 32), "unit", -2)
    (1, 1, 16, 1)
    """
    shape = tuple(shape)
    if alpha_shape == "weight" or (alpha_shape == "unit" and len(shape) < 2):
        return shape
    if alpha_shape == "unit":
        out = [1] * len(shape)
        out[unit_axis] = shape[unit_axis]
        return tuple(out)
    return (1,) * len(shape)


def unused_sites_message(names: list[str], primitives: str, predictive_hint: str) -> str:
    """The error for weight sites deferred by local reparameterization but never used."""
    return (
        f"local_reparam deferred the weight site(s) {', '.join(sorted(names))} but the model "
        f"never passed them to {primitives}. Under the handler such a weight holds its "
        "posterior mean, not a sample. Pass the site's value itself to the primitive (not a "
        f"transformed copy), or drop infer={{'local_reparam': True}}. {predictive_hint}"
    )
