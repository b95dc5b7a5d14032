"""Regression datasets: float32 features ``(n, d)`` and targets ``(n,)``, standardized.

Features and targets are standardized with the training split's mean and standard
deviation (:func:`vdppl.data.dataset.standardize`); ``Dataset.y_mean`` and
``Dataset.y_std`` map predictions back: ``y_original = y * y_std + y_mean``. Every loader
has the signature ``loader(root=None, seed=0) -> Dataset``; ``root`` is ignored (the data
ship inside Python packages or are generated).
"""

from __future__ import annotations

import os

import numpy as np

from vdppl.data._common import require
from vdppl.data.dataset import Dataset, random_split, standardize

__all__ = ["boston", "diabetes", "toy1d"]

_Root = str | os.PathLike | None


def _regression_dataset(name, x_tr, y_tr, x_te, y_te, description) -> Dataset:
    x_tr, y_tr, x_te, y_te, y_mean, y_std = standardize(name, x_tr, y_tr, x_te, y_te)
    return Dataset(
        name=name,
        task="regression",
        x_train=x_tr,
        y_train=y_tr,
        x_test=x_te,
        y_test=y_te,
        input_shape=x_tr.shape[1:],
        num_classes=None,
        image_shape=None,
        y_mean=y_mean,
        y_std=y_std,
        description=description,
    )


def toy1d_function(x: np.ndarray) -> np.ndarray:
    """The noise-free curve of :func:`toy1d`: ``sin(2 * x) + x / 2``."""
    return np.sin(2 * x) + x / 2


def toy1d(root: _Root = None, seed: int = 0) -> Dataset:
    """A 1-D teaching set with a gap, for watching predictive bands widen away from data.

    Source: generated here with ``rng = np.random.default_rng(seed)`` (``seed`` changes the
    draw)::

        x_train = concat(rng.uniform(-4, -1.5, 80), rng.uniform(1.5, 4, 80))   # 160 points
        x_test  = np.linspace(-6, 6, 241)          # the gap, the data, and beyond both ends
        y       = sin(2 * x) + x / 2 + 0.15 * rng.standard_normal(len(x))

    Split: 160 training points and the 241-point test grid above. No training input lies in
    (-1.5, 1.5) or outside [-4, 4], so a good posterior predictive is tight over the data
    (noise sd 0.15) and visibly wider in the gap and beyond; metrics on the test grid include
    those regions on purpose. Preprocessing: ``x`` and ``y`` standardized with the training
    statistics (an affine map, so ``x_test`` stays sorted and evenly spaced, ready for
    plotting a band against it).

    >>> ds = toy1d()
    >>> ds.x_train.shape, ds.x_test.shape, ds.input_shape
    ((160, 1), (241, 1), (1,))
    """
    rng = np.random.default_rng(seed)
    x_tr = np.concatenate([rng.uniform(-4.0, -1.5, 80), rng.uniform(1.5, 4.0, 80)])
    x_te = np.linspace(-6.0, 6.0, 241)
    y_tr = toy1d_function(x_tr) + 0.15 * rng.standard_normal(len(x_tr))
    y_te = toy1d_function(x_te) + 0.15 * rng.standard_normal(len(x_te))
    return _regression_dataset(
        "toy1d",
        x_tr[:, None],
        y_tr,
        x_te[:, None],
        y_te,
        f"vdppl toy1d (seed {seed}): y = sin(2x) + x/2 + N(0, 0.15^2); 160 train x in "
        "[-4, -1.5] and [1.5, 4] (a gap around 0), 241 test x on a grid over [-6, 6]",
    )


def boston(root: _Root = None, seed: int = 0) -> Dataset:
    """Boston housing [1]: 506 census tracts, 13 features, median home value in $1000s.

    Source: ``mlxtend.data.boston_housing_data`` (the UCI copy, shipped inside mlxtend).
    Split: 80/20 with ``train_test_split(x, y, test_size=0.2, random_state=seed)``: 404
    training and 102 test examples. Features and target standardized with the training
    statistics. Feature ``B`` encodes the share of Black residents, which is why
    scikit-learn removed this dataset; keep it to compare with the literature on
    Bayesian neural networks, which used it widely, not to model house prices.

    [1] Harrison, Rubinfeld (1978) "Hedonic housing prices and the demand for clean air",
        J. Environ. Economics and Management 5(1).
    """
    mx = require("mlxtend.data", "boston", "mlxtend")
    x, y = mx.boston_housing_data()
    x_tr, y_tr, x_te, y_te = random_split(x, y, 0.2, seed)
    return _regression_dataset(
        "boston",
        x_tr,
        y_tr,
        x_te,
        y_te,
        f"mlxtend boston_housing_data: {len(x)} x {x.shape[1]} Boston housing (UCI), target "
        f"median value in $1000s; 80/20 split (seed {seed}): {len(x_tr):,} train, {len(x_te):,} "
        "test; standardized with train statistics",
    )


def diabetes(root: _Root = None, seed: int = 0) -> Dataset:
    """The diabetes data of Efron et al. [1]: 442 patients, 10 baseline features.

    Source: ``sklearn.datasets.load_diabetes(scaled=False)`` (shipped with scikit-learn):
    age, sex, body-mass index, blood pressure and six blood serum measurements; the target
    is a measure of disease progression one year after baseline. Split: 80/20 with
    ``train_test_split(x, y, test_size=0.2, random_state=seed)``: 353 training and 89 test
    examples. Features and target standardized with the training statistics.

    [1] Efron, Hastie, Johnstone, Tibshirani (2004) "Least Angle Regression", Annals of
        Statistics 32(2).
    """
    sk = require("sklearn.datasets", "diabetes", "scikit-learn")
    x, y = sk.load_diabetes(return_X_y=True, scaled=False)
    x_tr, y_tr, x_te, y_te = random_split(x, y, 0.2, seed)
    return _regression_dataset(
        "diabetes",
        x_tr,
        y_tr,
        x_te,
        y_te,
        f"scikit-learn load_diabetes: {len(x)} x {x.shape[1]} (Efron et al. 2004), target "
        f"disease progression after one year; 80/20 split (seed {seed}): {len(x_tr):,} train, "
        f"{len(x_te):,} test; standardized with train statistics",
    )
