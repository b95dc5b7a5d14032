"""Small real datasets that ship with vdppl's dependencies, as float32 NumPy arrays.

Arrays are backend-free; each backend converts them (``torch.as_tensor``,
``jnp.asarray``). The splits are fixed so that results are comparable across runs.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = ["Split", "load_digits"]


class Split(NamedTuple):
    """A train/test split: ``x`` float32 of shape ``(n, features)``, ``y`` int64 labels."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def load_digits(test_size: float = 0.25, seed: int = 0) -> Split:
    """scikit-learn's 1,797 8x8 digits, pixels scaled to [0, 1], stratified split.

    Embedded in scikit-learn, so it works offline.
    """
    try:
        from sklearn.datasets import load_digits as _load
        from sklearn.model_selection import train_test_split
    except ImportError as err:
        raise ImportError(
            "the digits dataset needs scikit-learn: pip install 'vdppl[data]'"
        ) from err
    x, y = _load(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, y.astype(np.int64), test_size=test_size, random_state=seed, stratify=y
    )
    return Split(x_tr, y_tr, x_te, y_te)
