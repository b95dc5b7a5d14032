"""The real datasets available offline load with the documented shapes, splits and scales."""

from pathlib import Path

import numpy as np
import pytest

from vdppl.data import DATASETS, Dataset, load
from vdppl.data.images import FASHION_MNIST_DIR
from vdppl.data.regression import toy1d_function

# name: (task, input_shape, n_train, n_test, num_classes, image_shape)
OFFLINE = {
    "digits": ("classification", (1, 8, 8), 1347, 450, 10, (8, 8)),
    "mnist5k": ("classification", (1, 28, 28), 4000, 1000, 10, (28, 28)),
    "toy1d": ("regression", (1,), 160, 241, None, None),
    "boston": ("regression", (13,), 404, 102, None, None),
    "diabetes": ("regression", (10,), 353, 89, None, None),
}

_cache = {}


def cached(name, seed=0):
    if (name, seed) not in _cache:
        _cache[name, seed] = load(name, seed=seed)
    return _cache[name, seed]


@pytest.mark.parametrize("name", OFFLINE)
def test_documented_shapes_dtypes_and_sizes(name):
    task, input_shape, n_train, n_test, num_classes, image_shape = OFFLINE[name]
    ds = cached(name)
    assert isinstance(ds, Dataset) and ds.name == name and ds.task == task
    assert ds.x_train.shape == (n_train, *input_shape)
    assert ds.x_test.shape == (n_test, *input_shape)
    assert ds.input_shape == input_shape and ds.image_shape == image_shape
    assert ds.num_classes == num_classes
    assert ds.x_train.dtype == ds.x_test.dtype == np.float32
    assert ds.description and "\n" not in ds.description
    if task == "classification":
        assert ds.y_train.dtype == ds.y_test.dtype == np.int64
        assert (ds.y_mean, ds.y_std) == (0.0, 1.0)
        for x in (ds.x_train, ds.x_test):
            assert x.min() == 0.0 and x.max() == 1.0
        for y in (ds.y_train, ds.y_test):
            assert set(np.unique(y)) == set(range(10))
    else:
        assert ds.y_train.shape == (n_train,) and ds.y_test.shape == (n_test,)
        assert ds.y_train.dtype == ds.y_test.dtype == np.float32
        # standardized with the training statistics (float32 rounding: 1e-5)
        np.testing.assert_allclose(ds.x_train.mean(0), 0, atol=1e-5)
        np.testing.assert_allclose(ds.x_train.std(0), 1, atol=1e-5)
        np.testing.assert_allclose([ds.y_train.mean(), ds.y_train.std()], [0, 1], atol=1e-5)


@pytest.mark.parametrize("name", ["digits", "mnist5k"])
def test_classification_splits_are_stratified(name):
    ds = cached(name)
    train = np.bincount(ds.y_train) / len(ds.y_train)
    test = np.bincount(ds.y_test) / len(ds.y_test)
    # stratification keeps each class share equal up to one example per class
    np.testing.assert_allclose(train, test, atol=1.5 / len(ds.y_test))


def test_mnist5k_is_exactly_balanced():
    ds = cached("mnist5k")
    assert (np.bincount(ds.y_train) == 400).all() and (np.bincount(ds.y_test) == 100).all()


@pytest.mark.parametrize("name", ["digits", "mnist5k", "boston", "diabetes", "toy1d"])
def test_seed_fixes_the_split(name):
    a, b, c = cached(name, 0), load(name, seed=0), cached(name, 1)
    np.testing.assert_array_equal(a.x_train, b.x_train)
    np.testing.assert_array_equal(a.y_test, b.y_test)
    assert not np.array_equal(a.y_train, c.y_train)


@pytest.mark.parametrize("seed", [0, 3])
def test_digits_agrees_with_vdppl_datasets(seed):
    from vdppl.datasets import load_digits

    old, new = load_digits(seed=seed), load("digits", seed=seed)
    for key in ("x_train", "y_train", "x_test", "y_test"):
        a, b = getattr(old, key), getattr(new, key)
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(b.reshape(a.shape), a)  # (n, 1, 8, 8) -> (n, 64)


@pytest.mark.parametrize("name", ["boston", "diabetes"])
def test_regression_targets_undo_to_the_source(name):
    if name == "boston":
        from mlxtend.data import boston_housing_data

        _, y = boston_housing_data()
    else:
        from sklearn.datasets import load_diabetes

        _, y = load_diabetes(return_X_y=True)
    ds = cached(name)
    y_back = np.concatenate([ds.y_train, ds.y_test]) * ds.y_std + ds.y_mean
    # the split is a permutation of the source; float32 storage: relative 1e-6
    np.testing.assert_allclose(np.sort(y_back), np.sort(y), rtol=1e-6, atol=1e-4)


def test_toy1d_known_answers():
    ds = cached("toy1d")
    # x_test is the standardized grid linspace(-6, 6, 241); recover the affine map from it
    step = np.diff(ds.x_test[:, 0])
    np.testing.assert_allclose(step, step[0], rtol=1e-4)  # evenly spaced and sorted
    scale = 12.0 / (float(ds.x_test[-1, 0]) - float(ds.x_test[0, 0]))
    shift = -6.0 - float(ds.x_test[0, 0]) * scale
    x = ds.x_train[:, 0] * scale + shift
    assert (np.abs(x) >= 1.5 - 1e-4).all() and (np.abs(x) <= 4 + 1e-4).all()
    assert (x < 0).sum() == 80  # 80 points each side of the gap
    y = ds.y_train * ds.y_std + ds.y_mean
    # noise sd 0.15; its estimate from 160 draws has sd about 0.15 / sqrt(320) = 0.008
    assert abs(np.std(y - toy1d_function(x)) - 0.15) < 0.03


@pytest.mark.skipif(
    not Path(FASHION_MNIST_DIR).is_dir(),
    reason=f"{FASHION_MNIST_DIR} is missing: apt-get install -y dataset-fashion-mnist",
)
def test_fashion_mnist_debian_package():
    ds = load("fashion-mnist")
    assert ds.x_train.shape == (60000, 1, 28, 28) and ds.x_test.shape == (10000, 1, 28, 28)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int64
    assert ds.x_train.min() == 0.0 and ds.x_train.max() == 1.0
    assert (np.bincount(ds.y_train) == 6000).all() and (np.bincount(ds.y_test) == 1000).all()
    # the published training-set pixel mean and sd (0.2860, 0.3530), to their 4 decimals
    assert abs(ds.x_train.mean(dtype=np.float64) - 0.2860) < 5e-4
    assert abs(ds.x_train.std(dtype=np.float64) - 0.3530) < 5e-4
    assert ds.num_classes == 10 and ds.image_shape == (28, 28)


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(ValueError, match="unknown dataset 'mnist10'") as info:
        load("mnist10")
    for name in DATASETS:
        assert name in str(info.value)


def test_registry():
    assert sorted(DATASETS) == sorted(
        ["digits", "mnist5k", "fashion-mnist", "mnist", "cifar10", "toy1d", "boston", "diabetes"]
    )
    for loader in DATASETS.values():
        doc = loader.__doc__.lower()
        assert "source" in doc and "split" in doc, loader.__name__
