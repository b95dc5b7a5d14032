"""Small synthetic MNIST-style idx sets and CIFAR-10 batches, written to a directory."""

import numpy as np

from vdppl.data import write_cifar10_batch, write_idx
from vdppl.data.images import IDX_FILES


def write_idx_set(directory, n_train=6, n_test=4, shape=(28, 28), gz=True, seed=0):
    """Write the four MNIST-style idx files; return (x_train, y_train, x_test, y_test) uint8."""
    rng = np.random.default_rng(seed)
    arrays = (
        rng.integers(0, 256, (n_train, *shape), dtype=np.uint8),
        rng.integers(0, 10, n_train, dtype=np.uint8),
        rng.integers(0, 256, (n_test, *shape), dtype=np.uint8),
        rng.integers(0, 10, n_test, dtype=np.uint8),
    )
    for name, array in zip(IDX_FILES, arrays):
        write_idx(directory / (name + (".gz" if gz else "")), array)
    return arrays


def write_cifar_set(directory, per_batch=3, n_test=2, seed=0):
    """Write the six CIFAR-10 batches; return (x_train, y_train, x_test, y_test) uint8/int."""
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for i in range(1, 7):
        n = n_test if i == 6 else per_batch
        x = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
        y = rng.integers(0, 10, n)
        name = "test_batch.bin" if i == 6 else f"data_batch_{i}.bin"
        write_cifar10_batch(directory / name, x, y)
        xs.append(x)
        ys.append(y)
    return np.concatenate(xs[:5]), np.concatenate(ys[:5]), xs[5], ys[5]
