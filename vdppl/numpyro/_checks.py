"""Argument checks shared by the NumPyro backend; none of them runs on a tracer.

Value checks (NaN, sign) need concrete numbers. Under ``jit`` an argument is a tracer and
its value is unknown until the compiled function runs, so these helpers check concrete
arrays and Python numbers and let tracers through: a compiled step is checked where it is
built (``bayesianize``, the guide's first call, ``predict``), not at every step.

Checks that need no array values live in :mod:`vdppl.options`, shared with the Pyro
backend.
"""

from __future__ import annotations

from typing import Any

from vdppl import options

__all__ = ["check_finite", "check_finite_args", "check_kl_weight", "is_concrete"]


def is_concrete(x: Any) -> bool:
    """False for JAX tracers (values unknown while tracing), True otherwise."""
    from jax.core import Tracer

    return not isinstance(x, Tracer)


def check_finite(x: Any, what: str) -> None:
    """Raise if a concrete array has NaN or inf entries (tracers are not checked)."""
    if not is_concrete(x):
        return
    import numpy as np

    if not np.isfinite(np.asarray(x)).all():
        raise ValueError(
            f"{what} has NaN or inf entries. If this is the network's input, clean the data "
            "(np.isfinite(x).all()); if it is a fitted value, the parameters have diverged: "
            "lower the learning rate or resume from a checkpoint."
        )


def check_finite_args(where: str, args: tuple, kwargs: dict) -> None:
    """:func:`check_finite` on every concrete array among a model's arguments.

    ``where`` names the caller in the message (``"predict"``); arguments are named by
    position or keyword. Non-arrays (``None`` observations, Python flags) are skipped.
    """
    import numpy as np
    from jax import Array

    named = [(f"argument {i}", a) for i, a in enumerate(args)] + [
        (f"keyword argument {k!r}", a) for k, a in kwargs.items()
    ]
    for label, value in named:
        if isinstance(value, (Array, np.ndarray)):
            check_finite(value, f"{where}: the model's {label}")


def check_kl_weight(beta: Any) -> Any:
    """Validate a concrete KL weight as :func:`vdppl.options.check_kl_weight` does.

    A traced value (a ``kl_weight`` passed into a jitted step) is passed through unchecked.
    """
    return options.check_kl_weight(beta) if is_concrete(beta) else beta
