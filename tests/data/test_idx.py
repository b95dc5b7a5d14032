"""The idx parser: known bytes, round trips, and every validation error."""

import gzip
import struct

import numpy as np
import pytest

from vdppl.data import DataFormatError, read_idx, read_idx_pair, write_idx

IDX_DTYPES = ["uint8", "int8", ">i2", ">i4", ">f4", ">f8"]


def test_known_bytes_uint8(tmp_path):
    # magic 0x00000801 (unsigned byte, 1 dimension), size 3, then the values
    (tmp_path / "f").write_bytes(b"\x00\x00\x08\x01" + struct.pack(">I", 3) + bytes([7, 0, 255]))
    out = read_idx(tmp_path / "f")
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, [7, 0, 255])


def test_known_bytes_big_endian_int16_2d(tmp_path):
    # magic 0x00000B02 (int16, 2 dims) sizes 1 x 2, values 0x0102 = 258 and 0xFFFE = -2
    body = b"\x00\x00\x0b\x02" + struct.pack(">II", 1, 2) + b"\x01\x02\xff\xfe"
    (tmp_path / "f").write_bytes(body)
    out = read_idx(tmp_path / "f")
    assert out.dtype == np.int16 and out.dtype.isnative
    np.testing.assert_array_equal(out, [[258, -2]])


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gz"])
@pytest.mark.parametrize("shape", [(5,), (4, 3, 2), (2, 1, 1, 3)], ids=str)
@pytest.mark.parametrize("dtype", IDX_DTYPES)
def test_round_trip(tmp_path, dtype, shape, gz):
    rng = np.random.default_rng(0)
    array = (rng.standard_normal(shape) * 100).astype(dtype)
    path = tmp_path / ("a.idx.gz" if gz else "a.idx")
    write_idx(path, array)
    assert (path.read_bytes()[:2] == b"\x1f\x8b") == gz
    out = read_idx(path)
    assert out.shape == shape and out.dtype == np.dtype(dtype).newbyteorder("=")
    assert out.flags.writeable
    np.testing.assert_array_equal(out, array)


def test_gzip_is_detected_by_content_not_name(tmp_path):
    write_idx(tmp_path / "a.gz", np.arange(4, dtype=np.uint8))
    (tmp_path / "renamed").write_bytes((tmp_path / "a.gz").read_bytes())
    np.testing.assert_array_equal(read_idx(tmp_path / "renamed"), np.arange(4))


def test_write_rejects_unsupported_dtype(tmp_path):
    with pytest.raises(TypeError, match="idx cannot store dtype int64"):
        write_idx(tmp_path / "a", np.arange(3, dtype=np.int64))


def header(code, *dims):
    return bytes([0, 0, code, len(dims)]) + struct.pack(f">{len(dims)}I", *dims)


BAD_FILES = {
    "too short": (b"\x00\x00", "too short for the 4-byte idx magic"),
    "nonzero magic": (b"\x01\x00\x08\x01" + struct.pack(">I", 1) + b"\x00", "bad idx magic"),
    "unknown type": (header(0x07, 1) + b"\x00", r"bad idx magic number 0x00000701"),
    "text file": (b"<html>not found</html>", "bad idx magic.*not an idx file"),
    "zero dims": (b"\x00\x00\x08\x00", "declares 0 dimensions"),
    "truncated header": (b"\x00\x00\x08\x03" + struct.pack(">I", 2), "truncated header"),
    "truncated data": (
        header(0x08, 2, 3, 3) + bytes(10),
        r"truncated; the header declares 2 x 3 x 3 uint8 values \(18 bytes\) but only 10",
    ),
    "truncated float": (header(0x0D, 2) + bytes(7), r"2 float32 values \(8 bytes\)"),
    "trailing bytes": (header(0x08, 2) + bytes(5), "3 unexpected bytes after"),
    "nan": (header(0x0D, 2) + struct.pack(">2f", 1.0, float("nan")), "contains NaN"),
    "inf": (header(0x0E, 1) + struct.pack(">d", float("inf")), "contains infinite"),
}


@pytest.mark.parametrize("case", BAD_FILES)
def test_bad_file_says_what_is_wrong(tmp_path, case):
    content, message = BAD_FILES[case]
    path = tmp_path / "bad-idx"
    path.write_bytes(content)
    with pytest.raises(DataFormatError, match=message) as info:
        read_idx(path)
    assert str(path) in str(info.value)  # the message names the file


def test_truncated_gzip(tmp_path):
    full = gzip.compress(header(0x08, 1000) + bytes(1000))
    (tmp_path / "cut.gz").write_bytes(full[: len(full) // 2])
    with pytest.raises(DataFormatError, match="gzip stream is truncated"):
        read_idx(tmp_path / "cut.gz")


def test_corrupt_gzip(tmp_path):
    full = bytearray(gzip.compress(header(0x08, 1000) + bytes(1000)))
    full[-8] ^= 0xFF  # break the CRC
    (tmp_path / "bad.gz").write_bytes(bytes(full))
    with pytest.raises(DataFormatError, match="corrupt gzip data"):
        read_idx(tmp_path / "bad.gz")


def pair(tmp_path, images, labels):
    write_idx(tmp_path / "images", images)
    write_idx(tmp_path / "labels", labels)
    return tmp_path / "images", tmp_path / "labels"


def test_pair_reads_images_and_int64_labels(tmp_path):
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    x, y = read_idx_pair(*pair(tmp_path, images, np.array([9, 0], np.uint8)))
    np.testing.assert_array_equal(x, images)
    assert y.dtype == np.int64
    np.testing.assert_array_equal(y, [9, 0])


@pytest.mark.parametrize(
    "images, labels, message",
    [
        (np.zeros((3, 2, 2), np.uint8), np.zeros(2, np.uint8), "holds 3 images but .* 2 labels"),
        (np.zeros((2, 2, 2), np.uint8), np.array([3, 10], np.uint8), "label 10 at index 1 is out"),
        (np.zeros((2, 4), np.uint8), np.zeros(2, np.uint8), "found 2 dimensions of uint8"),
        (np.zeros((2, 2, 2), np.float32), np.zeros(2, np.uint8), "found 3 dimensions of float32"),
        (np.zeros((2, 2, 2), np.uint8), np.zeros((2, 1), np.uint8), "expected unsigned-byte lab"),
        (np.zeros((2, 2, 2), np.uint8), np.zeros(2, np.int32), "found 1 dimensions of int32"),
    ],
    ids=["count mismatch", "label range", "image dims", "image dtype", "label dims", "label type"],
)
def test_pair_validation(tmp_path, images, labels, message):
    with pytest.raises(DataFormatError, match=message):
        read_idx_pair(*pair(tmp_path, images, labels))
