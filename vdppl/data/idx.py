"""Reading and writing the idx format of MNIST and Fashion-MNIST, with NumPy only.

An idx file is a 4-byte magic number ``0x00 0x00 TYPE NDIM``, then ``NDIM`` big-endian
uint32 sizes, then ``prod(sizes)`` big-endian values of the type named by ``TYPE``::

    0x08 uint8   0x09 int8   0x0B int16   0x0C int32   0x0D float32   0x0E float64

Files may be gzip-compressed (recognised by their first two bytes, whatever their name).
Every problem is reported as a :class:`~vdppl.data.DataFormatError` naming the file.

Example (a round trip through a temporary file):

>>> import tempfile, os
>>> tmp = tempfile.TemporaryDirectory()
>>> path = os.path.join(tmp.name, "labels-idx1-ubyte.gz")
>>> write_idx(path, np.array([3, 1, 4], dtype=np.uint8))
>>> read_idx(path)
array([3, 1, 4], dtype=uint8)
>>> tmp.cleanup()
"""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import numpy as np

from vdppl._io import atomic_write
from vdppl.data.dataset import DataFormatError

__all__ = ["read_idx", "read_idx_pair", "write_idx"]

# type code -> big-endian dtype
IDX_TYPES: dict[int, np.dtype] = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"


def read_bytes(path: str | os.PathLike) -> bytes:
    """The contents of ``path``, decompressed if it is gzip; errors name the file."""
    path = Path(path)
    raw = path.read_bytes()
    if raw[:2] != _GZIP_MAGIC:
        return raw
    try:
        return gzip.decompress(raw)
    except EOFError as err:
        raise DataFormatError(
            f"{path}: the gzip stream is truncated ({len(raw)} compressed bytes); "
            "the file was probably cut short while downloading or copying"
        ) from err
    except (OSError, zlib.error) as err:
        raise DataFormatError(f"{path}: corrupt gzip data ({err})") from err


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an idx file (plain or gzip) into a native-endian array of the declared shape.

    Checks the magic number (two zero bytes, a known type code, at least one dimension),
    that the header is complete, that exactly ``prod(sizes)`` values follow it (a shorter
    file is truncated, a longer one is not idx), and that float data hold no NaN.
    """
    path = Path(path)
    buf = read_bytes(path)
    if len(buf) < 4:
        raise DataFormatError(
            f"{path}: only {len(buf)} bytes, too short for the 4-byte idx magic number"
        )
    zero0, zero1, code, ndim = buf[:4]
    if zero0 != 0 or zero1 != 0 or code not in IDX_TYPES:
        raise DataFormatError(
            f"{path}: bad idx magic number 0x{buf[:4].hex()}; expected 0x0000TTNN with type "
            f"code TT in {{{', '.join(f'{c:02x}' for c in IDX_TYPES)}}} and NN dimensions. "
            "This is not an idx file"
        )
    if ndim == 0:
        raise DataFormatError(f"{path}: the idx header declares 0 dimensions")
    header = 4 + 4 * ndim
    if len(buf) < header:
        raise DataFormatError(
            f"{path}: truncated header; {ndim} dimensions need {header} bytes, "
            f"the file has {len(buf)}"
        )
    shape = tuple(int(d) for d in np.frombuffer(buf, dtype=">u4", count=ndim, offset=4))
    dtype = IDX_TYPES[code]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    found = len(buf) - header
    dims = " x ".join(map(str, shape))
    if found < expected:
        raise DataFormatError(
            f"{path}: truncated; the header declares {dims} {dtype.name} values "
            f"({expected} bytes) but only {found} bytes follow it"
        )
    if found > expected:
        raise DataFormatError(
            f"{path}: {found - expected} unexpected bytes after the {dims} {dtype.name} "
            "values the header declares"
        )
    data = np.frombuffer(buf, dtype=dtype, offset=header).reshape(shape)
    data = data.astype(dtype.newbyteorder("="))  # a writable, native-endian copy
    if data.dtype.kind == "f" and data.size and not np.isfinite(data).all():
        bad = "NaN" if np.isnan(data).any() else "infinite"
        raise DataFormatError(f"{path}: contains {bad} values")
    return data


def write_idx(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write ``array`` as an idx file, gzip-compressed if ``path`` ends in ``.gz``.

    The dtype must be one idx supports (uint8, int8, int16, int32, float32, float64).
    """
    array = np.asarray(array)
    codes = {dt.newbyteorder("="): code for code, dt in IDX_TYPES.items()}
    code = codes.get(array.dtype.newbyteorder("="))
    if code is None:
        raise TypeError(
            f"idx cannot store dtype {array.dtype}; use one of "
            f"{', '.join(sorted({str(d) for d in codes}))}"
        )
    if array.ndim == 0 or array.ndim > 255:
        raise ValueError(f"idx stores arrays of 1 to 255 dimensions, got {array.ndim}")
    header = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    body = header + np.ascontiguousarray(array, dtype=IDX_TYPES[code]).tobytes()
    if str(path).endswith(".gz"):
        body = gzip.compress(body, mtime=0)
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(body))


def read_idx_pair(
    images_path: str | os.PathLike, labels_path: str | os.PathLike, num_classes: int = 10
) -> tuple[np.ndarray, np.ndarray]:
    """Read an images file (uint8, ``n x H x W``) and its labels file (uint8, ``n``).

    Returns ``(images, labels)`` as uint8 ``(n, H, W)`` and int64 ``(n,)``, after checking
    the dimensions and types, that both files hold the same number of examples, and that
    every label is in ``[0, num_classes)``.
    """
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise DataFormatError(
            f"{images_path}: expected unsigned-byte images of 3 dimensions (n x rows x cols, "
            f"magic 0x00000803), found {images.ndim} dimensions of {images.dtype}"
        )
    if labels.ndim != 1 or labels.dtype != np.uint8:
        raise DataFormatError(
            f"{labels_path}: expected unsigned-byte labels of 1 dimension (magic 0x00000801), "
            f"found {labels.ndim} dimensions of {labels.dtype}"
        )
    if len(images) != len(labels):
        raise DataFormatError(
            f"count mismatch: {images_path} holds {len(images)} images but {labels_path} "
            f"holds {len(labels)} labels"
        )
    if labels.size and labels.max() >= num_classes:
        bad = int(np.argmax(labels >= num_classes))
        raise DataFormatError(
            f"{labels_path}: label {labels[bad]} at index {bad} is out of range; "
            f"labels must be in [0, {num_classes})"
        )
    return images, labels.astype(np.int64)
