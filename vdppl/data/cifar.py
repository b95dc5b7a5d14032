"""Reading and writing the binary version of CIFAR-10, with NumPy only.

A batch file is a sequence of 3,073-byte records: one label byte in ``[0, 10)``, then the
32 x 32 image as 1,024 red, 1,024 green and 1,024 blue bytes, each plane row by row. So a
record's pixels reshape directly to channels-first ``(3, 32, 32)``. The official archive
``cifar-10-binary.tar.gz`` holds ``cifar-10-batches-bin/data_batch_1.bin`` ...
``data_batch_5.bin`` (10,000 records each) and ``test_batch.bin`` (10,000 records).

>>> import tempfile, os
>>> tmp = tempfile.TemporaryDirectory()
>>> path = os.path.join(tmp.name, "test_batch.bin")
>>> write_cifar10_batch(path, np.zeros((2, 3, 32, 32), np.uint8), np.array([7, 0]))
>>> images, labels = read_cifar10_batch(path)
>>> images.shape, labels
((2, 3, 32, 32), array([7, 0]))
>>> tmp.cleanup()
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from vdppl._io import atomic_write
from vdppl.data.dataset import DataFormatError
from vdppl.data.idx import read_bytes

__all__ = ["read_cifar10_batch", "write_cifar10_batch"]

IMAGE_SHAPE = (3, 32, 32)
PIXELS = 3 * 32 * 32
RECORD = 1 + PIXELS  # 3,073 bytes
NUM_CLASSES = 10


def read_cifar10_batch(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read a CIFAR-10 binary batch into uint8 images ``(n, 3, 32, 32)`` and int64 labels.

    Checks that the file is a whole number of 3,073-byte records (a CIFAR-100 file, with
    3,074-byte records, is refused by name) and that every label is in ``[0, 10)``.
    """
    path = Path(path)
    buf = read_bytes(path)
    if len(buf) == 0:
        raise DataFormatError(f"{path}: the file is empty; expected 3073-byte CIFAR-10 records")
    if len(buf) % RECORD:
        hint = ""
        if len(buf) % (RECORD + 1) == 0:
            hint = " It looks like CIFAR-100 (3074-byte records), which is not supported."
        raise DataFormatError(
            f"{path}: size {len(buf)} bytes is not a multiple of the CIFAR-10 record length "
            f"{RECORD} (1 label byte + {PIXELS} pixel bytes); the file is truncated or not a "
            f"CIFAR-10 binary batch.{hint}"
        )
    records = np.frombuffer(buf, dtype=np.uint8).reshape(-1, RECORD)
    labels = records[:, 0].astype(np.int64)
    if labels.max() >= NUM_CLASSES:
        bad = int(np.argmax(labels >= NUM_CLASSES))
        raise DataFormatError(
            f"{path}: label {labels[bad]} in record {bad} is out of range; CIFAR-10 labels "
            f"must be in [0, {NUM_CLASSES})"
        )
    images = records[:, 1:].reshape((-1, *IMAGE_SHAPE)).copy()
    return images, labels


def write_cifar10_batch(path: str | os.PathLike, images: np.ndarray, labels: np.ndarray) -> None:
    """Write uint8 images ``(n, 3, 32, 32)`` and labels in ``[0, 10)`` as a CIFAR-10 batch."""
    images, labels = np.asarray(images), np.asarray(labels)
    if images.dtype != np.uint8 or images.shape[1:] != IMAGE_SHAPE:
        raise ValueError(
            f"expected uint8 images of shape (n, 3, 32, 32), got {images.dtype} {images.shape}"
        )
    if labels.shape != (len(images),):
        raise ValueError(f"expected {len(images)} labels, got an array of shape {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
        raise ValueError(
            f"labels must be in [0, {NUM_CLASSES}), got [{labels.min()}, {labels.max()}]"
        )
    records = np.empty((len(images), RECORD), dtype=np.uint8)
    records[:, 0] = labels
    records[:, 1:] = images.reshape(len(images), PIXELS)
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(records.tobytes()))
