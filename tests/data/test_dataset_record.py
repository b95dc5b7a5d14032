"""Dataset checks its arrays when built; standardize() uses training statistics only."""

import dataclasses
import subprocess
import sys

import numpy as np
import pytest

from vdppl.data import Dataset
from vdppl.data.dataset import standardize


def classification(**changes):
    rng = np.random.default_rng(0)
    fields = dict(
        name="tiny",
        task="classification",
        x_train=rng.uniform(size=(6, 1, 2, 2)).astype(np.float32),
        y_train=np.array([0, 1, 2, 0, 1, 2]),
        x_test=rng.uniform(size=(3, 1, 2, 2)).astype(np.float32),
        y_test=np.array([0, 1, 2]),
        input_shape=(1, 2, 2),
        num_classes=3,
        image_shape=(2, 2),
        y_mean=0.0,
        y_std=1.0,
        description="tiny",
    )
    fields.update(changes)
    return Dataset(**fields)


def regression(**changes):
    rng = np.random.default_rng(0)
    fields = dict(
        name="tiny",
        task="regression",
        x_train=rng.standard_normal((6, 2)).astype(np.float32),
        y_train=rng.standard_normal(6).astype(np.float32),
        x_test=rng.standard_normal((3, 2)).astype(np.float32),
        y_test=rng.standard_normal(3).astype(np.float32),
        input_shape=(2,),
        num_classes=None,
        image_shape=None,
        y_mean=1.0,
        y_std=2.0,
        description="tiny",
    )
    fields.update(changes)
    return Dataset(**fields)


def test_valid_records_build():
    ds = classification(input_shape=[1, 2, 2])
    assert ds.input_shape == (1, 2, 2)  # normalized to a tuple
    assert repr(ds) == "Dataset('tiny', 3 classes, train=6, test=3, input_shape=(1, 2, 2))"
    assert regression().y_std == 2.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        ds.name = "other"


NAN = np.full((3, 1, 2, 2), np.nan, np.float32)

BAD_CLASSIFICATION = {
    "task": (dict(task="ranking"), ValueError, "task must be 'classification' or 'regression'"),
    "x dtype": (dict(x_train=np.zeros((6, 1, 2, 2))), TypeError, "x_train must be a float32"),
    "x shape": (
        dict(x_test=np.zeros((3, 4), np.float32)),
        ValueError,
        r"x_test has examples of shape \(4,\), but input_shape is \(1, 2, 2\)",
    ),
    "y dtype": (dict(y_train=np.zeros(6, np.int32)), TypeError, "y_train must be a int64"),
    "y length": (dict(y_test=np.zeros(2, np.int64)), ValueError, r"expected \(3,\)"),
    "empty": (
        dict(x_test=np.zeros((0, 1, 2, 2), np.float32), y_test=np.zeros(0, np.int64)),
        ValueError,
        "the test split is empty",
    ),
    "nan": (dict(x_test=NAN), ValueError, "x_test contains NaN values"),
    "pixel range": (
        dict(x_train=np.full((6, 1, 2, 2), 255, np.float32)),
        ValueError,
        r"image pixels in \[255.0, 255.0\], expected values in \[0, 1\]",
    ),
    "label range": (
        dict(y_train=np.array([0, 1, 2, 3, 0, 1])),
        ValueError,
        r"y_train holds labels in \[0, 3\], outside \[0, 3\)",
    ),
    "num_classes": (dict(num_classes=None), ValueError, "needs num_classes >= 2, got None"),
    "y_std": (dict(y_std=2.0), ValueError, "y_mean and y_std must be 0 and 1"),
    "image_shape": (dict(image_shape=(4, 1)), ValueError, r"image_shape \(4, 1\) is not"),
}


@pytest.mark.parametrize("case", BAD_CLASSIFICATION)
def test_bad_classification_record(case):
    changes, error, message = BAD_CLASSIFICATION[case]
    with pytest.raises(error, match=r"^Dataset 'tiny': .*" + message):
        classification(**changes)


BAD_REGRESSION = {
    "y dtype": (dict(y_train=np.zeros(6)), TypeError, "y_train must be a float32"),
    "y inf": (dict(y_test=np.array([0, np.inf, 0], np.float32)), ValueError, "y_test contains inf"),
    "num_classes": (dict(num_classes=2), ValueError, "num_classes must be None, got 2"),
    "y_std": (dict(y_std=0.0), ValueError, "y_std must be finite and > 0"),
}


@pytest.mark.parametrize("case", BAD_REGRESSION)
def test_bad_regression_record(case):
    changes, error, message = BAD_REGRESSION[case]
    with pytest.raises(error, match=r"^Dataset 'tiny': .*" + message):
        regression(**changes)


def test_standardize_uses_train_statistics():
    x_tr = np.array([[1.0, 5.0], [3.0, 5.0]])  # second column constant: only centred
    y_tr = np.array([10.0, 20.0])
    x_te, y_te = np.array([[5.0, 6.0]]), np.array([30.0])
    xs, ys, xt, yt, y_mean, y_std = standardize("t", x_tr, y_tr, x_te, y_te)
    assert xs.dtype == ys.dtype == xt.dtype == yt.dtype == np.float32
    np.testing.assert_array_equal(xs, [[-1, 0], [1, 0]])
    np.testing.assert_array_equal(xt, [[3, 1]])  # (5 - 2) / 1 and (6 - 5) / 1
    assert (y_mean, y_std) == (15.0, 5.0)
    np.testing.assert_array_equal(yt, [3.0])


def test_standardize_rejects_nan_and_constant_targets():
    x, y = np.ones((2, 1)), np.array([1.0, 2.0])
    with pytest.raises(ValueError, match=r"t: x_test \(before standardization\) contains NaN"):
        standardize("t", x, y, np.array([[np.nan]]), y)
    with pytest.raises(ValueError, match="training targets are constant"):
        standardize("t", x, np.ones(2), x, y)


def test_import_and_load_without_torch_or_jax():
    code = (
        "import sys, vdppl.data as d; d.load('toy1d'); d.load('digits'); "
        "print(sorted(m for m in ('torch', 'jax', 'pyro', 'numpyro') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
