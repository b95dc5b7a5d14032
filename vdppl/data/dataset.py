"""The :class:`Dataset` record that every loader returns, and the preprocessing they share."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

__all__ = ["DataFormatError", "Dataset"]

Task = Literal["classification", "regression"]


class DataFormatError(ValueError):
    """A data file or array is not what its format promises (bad header, truncated, ...)."""


@dataclass(frozen=True, eq=False)
class Dataset:
    """A fixed train/test split, as NumPy arrays that every backend can convert.

    Classification: ``x`` float32, images of shape ``(n, C, H, W)`` (channels first) with
    values in [0, 1]; ``y`` int64 in ``[0, num_classes)``; ``y_mean = 0`` and ``y_std = 1``.

    Regression: ``x`` float32 of shape ``(n, d)`` and ``y`` float32 of shape ``(n,)``, both
    standardized with the training statistics, so the targets on the original scale are
    ``y * y_std + y_mean``.

    The arrays are checked when the record is built (shapes, dtypes, label range, NaN and
    infinities, pixel range), so a loader cannot hand a trainer a malformed split.

    :param name: the key of :data:`vdppl.data.DATASETS` that built it.
    :param task: ``"classification"`` or ``"regression"``.
    :param input_shape: the shape of one example, ``x_train.shape[1:]``.
    :param num_classes: number of classes; ``None`` for regression.
    :param image_shape: ``(H, W)`` of image inputs (to plot which pixels survive pruning);
        ``None`` for non-image inputs.
    :param y_mean: the training-target mean removed by standardization (0 for classification).
    :param y_std: the training-target standard deviation divided out (1 for classification).
    :param description: one line naming the source, sizes and split.
    """

    name: str
    task: Task
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    input_shape: tuple[int, ...]
    num_classes: int | None
    image_shape: tuple[int, int] | None
    y_mean: float
    y_std: float
    description: str

    def __post_init__(self) -> None:
        where = f"Dataset {self.name!r}"
        if self.task not in ("classification", "regression"):
            raise ValueError(
                f"{where}: task must be 'classification' or 'regression', got {self.task!r}"
            )
        object.__setattr__(self, "input_shape", tuple(int(d) for d in self.input_shape))
        if self.image_shape is not None:
            object.__setattr__(self, "image_shape", tuple(int(d) for d in self.image_shape))
        for split in ("train", "test"):
            x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
            if not isinstance(x, np.ndarray) or x.dtype != np.float32:
                raise TypeError(
                    f"{where}: x_{split} must be a float32 NumPy array, got "
                    f"{getattr(x, 'dtype', type(x).__name__)}"
                )
            if x.shape[1:] != self.input_shape:
                raise ValueError(
                    f"{where}: x_{split} has examples of shape {x.shape[1:]}, "
                    f"but input_shape is {self.input_shape}"
                )
            want = np.int64 if self.task == "classification" else np.float32
            if not isinstance(y, np.ndarray) or y.dtype != want:
                raise TypeError(
                    f"{where}: y_{split} must be a {np.dtype(want)} NumPy array "
                    f"for {self.task}, got {getattr(y, 'dtype', type(y).__name__)}"
                )
            if y.shape != (len(x),):
                raise ValueError(
                    f"{where}: y_{split} has shape {y.shape} but x_{split} holds "
                    f"{len(x)} examples; expected ({len(x)},)"
                )
            if len(x) == 0:
                raise ValueError(f"{where}: the {split} split is empty")
            _check_finite(f"{where}: x_{split}", x)
            if self.task == "regression":
                _check_finite(f"{where}: y_{split}", y)
            if self.image_shape is not None:
                lo, hi = x.min(), x.max()
                if lo < 0 or hi > 1:
                    raise ValueError(
                        f"{where}: x_{split} holds image pixels in [{lo}, {hi}], "
                        f"expected values in [0, 1]"
                    )
        if self.task == "classification":
            if not isinstance(self.num_classes, int) or self.num_classes < 2:
                raise ValueError(
                    f"{where}: classification needs num_classes >= 2, got {self.num_classes!r}"
                )
            for split in ("train", "test"):
                y = getattr(self, f"y_{split}")
                if y.min() < 0 or y.max() >= self.num_classes:
                    raise ValueError(
                        f"{where}: y_{split} holds labels in "
                        f"[{y.min()}, {y.max()}], outside [0, {self.num_classes})"
                    )
            if (self.y_mean, self.y_std) != (0.0, 1.0):
                raise ValueError(
                    f"{where}: classification labels are not standardized; "
                    f"y_mean and y_std must be 0 and 1, got "
                    f"{self.y_mean} and {self.y_std}"
                )
        else:
            if self.num_classes is not None:
                raise ValueError(
                    f"{where}: regression has no classes; "
                    f"num_classes must be None, got {self.num_classes!r}"
                )
            if not (np.isfinite(self.y_std) and self.y_std > 0 and np.isfinite(self.y_mean)):
                raise ValueError(
                    f"{where}: y_std must be finite and > 0 and y_mean finite, "
                    f"got y_mean={self.y_mean}, y_std={self.y_std}"
                )
        if self.image_shape is not None and self.input_shape[-2:] != self.image_shape:
            raise ValueError(
                f"{where}: image_shape {self.image_shape} is not the last two "
                f"dimensions of input_shape {self.input_shape}"
            )
        object.__setattr__(self, "y_mean", float(self.y_mean))
        object.__setattr__(self, "y_std", float(self.y_std))

    def __repr__(self) -> str:
        kind = f"{self.num_classes} classes" if self.task == "classification" else "regression"
        return (
            f"Dataset({self.name!r}, {kind}, train={len(self.x_train)}, "
            f"test={len(self.x_test)}, input_shape={self.input_shape})"
        )


def _check_finite(what: str, a: np.ndarray) -> None:
    # min/max propagate NaN, so this finds NaN and infinities without a boolean copy.
    if a.size and not (np.isfinite(a.min()) and np.isfinite(a.max())):
        bad = "NaN" if np.isnan(a).any() else "infinite"
        raise ValueError(f"{what} contains {bad} values")


def stratified_split(
    x: np.ndarray, y: np.ndarray, test_size: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``sklearn.model_selection.train_test_split(..., stratify=y, random_state=seed)``."""
    from sklearn.model_selection import train_test_split

    x_tr, x_te, y_tr, y_te = train_test_split(
        x, y, test_size=test_size, random_state=seed, stratify=y
    )
    return x_tr, y_tr, x_te, y_te


def random_split(
    x: np.ndarray, y: np.ndarray, test_size: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``sklearn.model_selection.train_test_split(..., random_state=seed)`` (shuffled)."""
    from sklearn.model_selection import train_test_split

    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=test_size, random_state=seed)
    return x_tr, y_tr, x_te, y_te


def standardize(
    name: str,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float, float]:
    """Standardize features and targets with the training statistics.

    ``x = (x - x_train.mean(0)) / x_train.std(0)`` (a constant column is only centred) and
    ``y = (y - y_mean) / y_std`` with ``y_mean, y_std = y_train.mean(), y_train.std()``;
    computed in float64, returned as float32 together with ``y_mean`` and ``y_std``.
    """
    arrays = {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}
    for key, a in arrays.items():
        arrays[key] = a = np.asarray(a, dtype=np.float64)
        _check_finite(f"{name}: {key} (before standardization)", a)
    x_train, y_train, x_test, y_test = arrays.values()
    x_mean, x_std = x_train.mean(0), x_train.std(0)
    x_std = np.where(x_std > 0, x_std, 1.0)
    y_mean, y_std = float(y_train.mean()), float(y_train.std())
    if not y_std > 0:
        raise ValueError(f"{name}: the training targets are constant; cannot standardize them")
    return (
        ((x_train - x_mean) / x_std).astype(np.float32),
        ((y_train - y_mean) / y_std).astype(np.float32),
        ((x_test - x_mean) / x_std).astype(np.float32),
        ((y_test - y_mean) / y_std).astype(np.float32),
        y_mean,
        y_std,
    )
