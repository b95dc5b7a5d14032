"""The CIFAR-10 binary parser: record layout, round trip, and validation errors."""

import gzip

import numpy as np
import pytest

from vdppl.data import DataFormatError, read_cifar10_batch, write_cifar10_batch


def test_known_record_layout(tmp_path):
    # one record: label 4, then the red plane (all 1), green (all 2), blue (row index)
    blue = np.repeat(np.arange(32, dtype=np.uint8), 32)
    record = bytes([4]) + bytes([1]) * 1024 + bytes([2]) * 1024 + blue.tobytes()
    (tmp_path / "b.bin").write_bytes(record)
    images, labels = read_cifar10_batch(tmp_path / "b.bin")
    assert images.shape == (1, 3, 32, 32) and images.dtype == np.uint8
    np.testing.assert_array_equal(labels, [4])
    assert (images[0, 0] == 1).all() and (images[0, 1] == 2).all()
    np.testing.assert_array_equal(images[0, 2, :, 5], np.arange(32))  # rows vary down a column


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gz"])
def test_round_trip(tmp_path, gz):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 3, 32, 32), dtype=np.uint8)
    labels = rng.integers(0, 10, 5)
    write_cifar10_batch(tmp_path / "b.bin", images, labels)
    path = tmp_path / "b.bin"
    if gz:
        path = tmp_path / "b.bin.gz"
        path.write_bytes(gzip.compress((tmp_path / "b.bin").read_bytes()))
    x, y = read_cifar10_batch(path)
    assert x.flags.writeable and y.dtype == np.int64
    np.testing.assert_array_equal(x, images)
    np.testing.assert_array_equal(y, labels)


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "the file is empty"),
        (bytes(3073 + 100), r"size 3173 bytes is not a multiple of the CIFAR-10 record length"),
        (bytes(3072), "truncated or not a CIFAR-10 binary batch"),
        (bytes(2 * 3074), "looks like CIFAR-100"),
        (bytes(3073) + bytes([10]) + bytes(3072), "label 10 in record 1 is out of range"),
    ],
    ids=["empty", "partial record", "short", "cifar100", "label range"],
)
def test_bad_batch_says_what_is_wrong(tmp_path, content, message):
    (tmp_path / "b.bin").write_bytes(content)
    with pytest.raises(DataFormatError, match=message):
        read_cifar10_batch(tmp_path / "b.bin")


@pytest.mark.parametrize(
    "images, labels, message",
    [
        (np.zeros((1, 3, 32, 32), np.float32), [0], "expected uint8 images"),
        (np.zeros((1, 32, 32, 3), np.uint8), [0], r"shape \(n, 3, 32, 32\)"),
        (np.zeros((2, 3, 32, 32), np.uint8), [0], "expected 2 labels"),
        (np.zeros((1, 3, 32, 32), np.uint8), [10], r"labels must be in \[0, 10\)"),
    ],
    ids=["dtype", "channels last", "count", "label range"],
)
def test_writer_checks_its_arguments(tmp_path, images, labels, message):
    with pytest.raises(ValueError, match=message):
        write_cifar10_batch(tmp_path / "b.bin", images, np.asarray(labels))
