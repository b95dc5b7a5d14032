"""Input checks shared by :mod:`vdppl.diagnostics.metrics` and :mod:`vdppl.diagnostics.plots`.

Each helper returns the validated array (``float64`` or ``int64``) and raises ``ValueError``
(``TypeError`` for non-numeric input) with a message that names the argument, shows what
was passed and says how to fix it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import numpy.typing as npt

#: Largest ``|sum_k p_k - 1|`` accepted for a row of probabilities (float32 softmax outputs
#: are off by ~1e-7; anything beyond 1e-4 is not a normalised distribution).
PROB_ATOL = 1e-4


def _layout(dims: Sequence[str]) -> str:
    return "(" + ", ".join(dims) + (",)" if len(dims) == 1 else ")")


def _index(flat: int, shape: tuple[int, ...]) -> int | tuple[int, ...]:
    """Index of the ``flat``-th element, as an int for 1-d arrays and a tuple otherwise."""
    index = tuple(int(i) for i in np.unravel_index(flat, shape))
    return index[0] if len(index) == 1 else index


def as_array(
    x: npt.ArrayLike, name: str, dims: Sequence[str], *, finite: bool = True
) -> np.ndarray:
    """``x`` as a non-empty ``float64`` array with one axis per name in ``dims``.

    With ``finite=True`` (the default) NaN and infinities are rejected too.
    """
    try:
        array = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise TypeError(
            f"{name} must be a numeric array of shape {_layout(dims)}, got {type(x).__name__}"
        ) from err
    if array.ndim != len(dims):
        raise ValueError(
            f"{name} must have shape {_layout(dims)} ({len(dims)} axes), got shape {array.shape}"
        )
    if array.size == 0:
        raise ValueError(
            f"{name} is empty (shape {array.shape}); pass at least one example "
            f"of shape {_layout(dims)}"
        )
    bad = ~np.isfinite(array) if finite else np.zeros(array.shape, dtype=bool)
    if bad.any():
        where = _index(int(np.argmax(bad)), array.shape)
        raise ValueError(
            f"{name} contains {int(bad.sum())} NaN or inf value(s), the first at index {where}; "
            "drop or impute those examples first"
        )
    return array


def check_probs(probs: npt.ArrayLike, name: str, dims: Sequence[str]) -> np.ndarray:
    """Finite probabilities, ``>= 0``, summing to 1 (within :data:`PROB_ATOL`) on the last axis."""
    array = as_array(probs, name, dims)
    negative = array < 0
    if negative.any():
        where = _index(int(np.argmax(negative)), array.shape)
        raise ValueError(
            f"{name} has negative entries (the first at index {where}: "
            f"{array[negative][0]:.6g}); pass probabilities, not logits or log-probabilities "
            "(apply a softmax first)"
        )
    error = np.abs(array.sum(axis=-1) - 1.0)
    if (error > PROB_ATOL).any():
        row = _index(int(np.argmax(error > PROB_ATOL)), error.shape)
        total = array.sum(axis=-1)[row]
        raise ValueError(
            f"{name} must sum to 1 along the class (last) axis within {PROB_ATOL:g}, but row "
            f"{row} sums to {total:.6g}; normalise with p / p.sum(-1, keepdims=True) or "
            "apply a softmax to logits"
        )
    return array


def check_labels(y: npt.ArrayLike, num_classes: int, name: str = "y") -> np.ndarray:
    """Integer class labels in ``[0, num_classes)`` as ``int64`` (integral floats accepted)."""
    array = as_array(y, name, ("n",))
    fractional = array != np.round(array)
    if fractional.any():
        where = int(np.argmax(fractional))
        raise ValueError(
            f"{name} must hold integer class labels, but {name}[{where}] = {array[where]:g}; "
            "pass the index of the true class, not a probability or one-hot row"
        )
    outside = (array < 0) | (array >= num_classes)
    if outside.any():
        where = int(np.argmax(outside))
        raise ValueError(
            f"{name} must hold labels in [0, {num_classes - 1}] to index the {num_classes} "
            f"classes (columns) of the probabilities, but {name}[{where}] = {array[where]:g}"
        )
    return array.astype(np.int64)


def check_examples(
    values: np.ndarray, values_name: str, axis: int, y: np.ndarray, y_name: str = "y"
) -> None:
    """``y`` holds one entry per example of ``values`` (its axis ``axis``)."""
    n = values.shape[axis]
    if y.shape != (n,):
        raise ValueError(
            f"{values_name} has shape {values.shape} ({n} examples on axis {axis}) but "
            f"{y_name} has shape {y.shape}; expected {y_name} of shape ({n},)"
        )


def check_same_shape(**arrays: np.ndarray) -> None:
    """All ``arrays`` have the same shape; the message lists each name with its shape."""
    shapes = {name: array.shape for name, array in arrays.items()}
    if len(set(shapes.values())) > 1:
        listed = ", ".join(f"{name} has shape {shape}" for name, shape in shapes.items())
        raise ValueError(f"shapes do not match: {listed}; pass one value per example in each")


def check_positive(array: np.ndarray, name: str) -> None:
    """Every entry of ``array`` is ``> 0``."""
    bad = array <= 0
    if bad.any():
        where = _index(int(np.argmax(bad)), array.shape)
        raise ValueError(
            f"{name} must be > 0 everywhere, but {name}[{where}] = {array[bad][0]:g}; pass "
            "standard deviations (not log-scales), and drop examples with zero spread"
        )


def check_levels(levels: float | Iterable[float]) -> tuple[float, ...]:
    """Interval levels, each strictly inside ``(0, 1)``, as a tuple of floats."""
    values = tuple(float(level) for level in np.atleast_1d(np.asarray(levels, dtype=np.float64)))
    if not values:
        raise ValueError("levels is empty; pass e.g. levels=(0.5, 0.9, 0.95)")
    for level in values:
        if not 0.0 < level < 1.0:
            raise ValueError(
                f"levels must lie strictly between 0 and 1 (0.9 for a 90% interval), got {level:g}"
            )
    return values


def check_positive_int(value: object, name: str) -> int:
    """``value`` is an integer ``>= 1`` (bools rejected)."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def check_mask(mask: npt.ArrayLike, name: str = "mask") -> np.ndarray:
    """A 2-d ``(out, in)`` keep-mask: booleans, or numbers that are all 0 or 1."""
    array = as_array(mask, name, ("out", "in"))
    if not np.isin(array, (0.0, 1.0)).all():
        raise ValueError(
            f"{name} must be boolean (True = weight kept), e.g. log_alpha < threshold, "
            f"but it holds values other than 0 and 1 (range [{array.min():g}, {array.max():g}])"
        )
    return array.astype(bool)
