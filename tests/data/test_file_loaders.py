"""fashion-mnist, mnist and cifar10 on synthetic files: reading, absence, downloads.

The autouse ``no_network`` fixture (conftest.py) makes every download fail, so nothing here
touches the network; the download tests replace ``vdppl.data.download.fetch`` with fakes.
"""

import io
import tarfile
import urllib.error

import numpy as np
import pytest

from vdppl.data import DataFormatError, download, load, write_idx
from vdppl.data import images as image_loaders
from vdppl.data.images import CIFAR10_ARCHIVE, IDX_FILES, MNIST_MIRRORS

from .synthetic import write_cifar_set, write_idx_set


def check_idx_dataset(ds, name, arrays):
    x_tr, y_tr, x_te, y_te = arrays
    assert ds.name == name and ds.task == "classification" and ds.num_classes == 10
    assert ds.input_shape == (1, 28, 28) and ds.image_shape == (28, 28)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int64
    # official split: file order kept, pixels / 255 exactly (float32 division)
    np.testing.assert_array_equal(ds.x_train[:, 0], x_tr.astype(np.float32) / np.float32(255))
    np.testing.assert_array_equal(ds.x_test[:, 0], x_te.astype(np.float32) / np.float32(255))
    np.testing.assert_array_equal(ds.y_train, y_tr)
    np.testing.assert_array_equal(ds.y_test, y_te)


@pytest.mark.parametrize("gz", [True, False], ids=["gz", "plain"])
@pytest.mark.parametrize("name", ["fashion-mnist", "mnist"])
def test_idx_datasets_read_root(tmp_path, name, gz):
    arrays = write_idx_set(tmp_path, gz=gz)
    check_idx_dataset(load(name, root=tmp_path), name, arrays)


def test_seed_does_not_change_an_official_split(tmp_path):
    write_idx_set(tmp_path)
    a, b = load("mnist", root=tmp_path, seed=0), load("mnist", root=tmp_path, seed=5)
    np.testing.assert_array_equal(a.y_train, b.y_train)


def test_mnist_dotted_names_and_torchvision_layout(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    arrays = write_idx_set(raw, gz=False)
    for stem in IDX_FILES:
        (raw / stem).rename(raw / stem.replace("-idx", ".idx"))
    check_idx_dataset(load("mnist", root=tmp_path), "mnist", arrays)


def test_train_and_test_image_sizes_must_agree(tmp_path):
    write_idx_set(tmp_path)
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", np.zeros((4, 20, 20), np.uint8))
    with pytest.raises(DataFormatError, match="training images are 28x28 but test images are"):
        load("mnist", root=tmp_path)


def test_corrupt_file_error_reaches_the_user(tmp_path):
    write_idx_set(tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.full(6, 12, np.uint8))
    with pytest.raises(DataFormatError, match="label 12 at index 0 is out of range"):
        load("fashion-mnist", root=tmp_path)


# ---- absence -------------------------------------------------------------------------------


def test_fashion_mnist_missing_says_how_to_get_it(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        load("fashion-mnist", root=tmp_path)
    message = str(info.value)
    assert str(tmp_path) in message
    assert "apt-get install dataset-fashion-mnist" in message
    assert "/usr/share/datasets/fashion-mnist" in message
    for stem in IDX_FILES:
        assert stem in message
    assert "--data-root" in message


def test_fashion_mnist_default_directory(tmp_path, monkeypatch):
    monkeypatch.setattr(image_loaders, "FASHION_MNIST_DIR", tmp_path / "absent")
    with pytest.raises(FileNotFoundError, match=r"not found in .*absent. Either install"):
        load("fashion-mnist")


def test_fashion_mnist_names_only_the_missing_file(tmp_path):
    write_idx_set(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError, match=r"^Fashion-MNIST: t10k-labels-idx1-ubyte\[\.gz\] "):
        load("fashion-mnist", root=tmp_path)


def test_mnist_missing_offline(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        load("mnist", root=tmp_path / "mnist")
    message = str(info.value)
    assert "the download failed" in message and "network disabled in tests" in message
    for stem in IDX_FILES:
        assert stem in message
    assert str(tmp_path / "mnist") in message
    assert not (tmp_path / "mnist").exists()  # a failed download leaves nothing behind


def test_mnist_default_root_follows_vdppl_data(tmp_path, monkeypatch):
    monkeypatch.setenv("VDPPL_DATA", str(tmp_path))
    arrays = write_idx_set(tmp_path / "mnist")
    check_idx_dataset(load("mnist"), "mnist", arrays)


def test_mnist_download_false_does_not_fetch(tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("fetch called with download=False")

    monkeypatch.setattr(download, "fetch", fail)
    with pytest.raises(FileNotFoundError, match=r"downloading is off \(download=False\)"):
        image_loaders.mnist(root=tmp_path, download=False)


def fake_fetch(files, calls, fail_prefix=None):
    """A fetch that serves ``files`` (name -> bytes) from any mirror but ``fail_prefix``."""

    def fetch(url, dest, timeout=None):
        calls.append(url)
        if fail_prefix and url.startswith(fail_prefix):
            raise urllib.error.URLError("mirror down")
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(files[url.rsplit("/", 1)[1]])

    return fetch


@pytest.mark.parametrize("first_mirror_down", [False, True], ids=["first", "fallback"])
def test_mnist_downloads_missing_files(tmp_path, monkeypatch, first_mirror_down):
    source = tmp_path / "source"
    arrays = write_idx_set(source)
    files = {p.name: p.read_bytes() for p in source.iterdir()}
    calls = []
    fail = MNIST_MIRRORS[0] if first_mirror_down else None
    monkeypatch.setattr(download, "fetch", fake_fetch(files, calls, fail))
    root = tmp_path / "root"
    check_idx_dataset(load("mnist", root=root), "mnist", arrays)
    mirror = MNIST_MIRRORS[1] if first_mirror_down else MNIST_MIRRORS[0]
    assert calls[-4:] == [mirror + stem + ".gz" for stem in IDX_FILES]
    calls.clear()
    load("mnist", root=root)  # second time from disk
    assert calls == []


# ---- cifar10 --------------------------------------------------------------------------------


def check_cifar(ds, arrays):
    x_tr, y_tr, x_te, y_te = arrays
    assert ds.name == "cifar10" and ds.input_shape == (3, 32, 32) and ds.image_shape == (32, 32)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int64
    assert len(ds.x_train) == 15 and len(ds.x_test) == 2  # 5 batches of 3, test batch of 2
    np.testing.assert_array_equal(ds.x_train, x_tr.astype(np.float32) / np.float32(255))
    np.testing.assert_array_equal(ds.x_test, x_te.astype(np.float32) / np.float32(255))
    np.testing.assert_array_equal(ds.y_train, y_tr)
    np.testing.assert_array_equal(ds.y_test, y_te)


@pytest.mark.parametrize("subdir", ["", "cifar-10-batches-bin"], ids=["root", "batches-bin"])
def test_cifar10_reads_root_or_batches_bin(tmp_path, subdir):
    arrays = write_cifar_set(tmp_path / subdir if subdir else tmp_path)
    check_cifar(load("cifar10", root=tmp_path), arrays)


def make_archive(tmp_path):
    """The official archive's layout, in memory: cifar-10-batches-bin/*.bin plus a stray file."""
    arrays = write_cifar_set(tmp_path / "src" / "cifar-10-batches-bin")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(tmp_path / "src" / "cifar-10-batches-bin", arcname="cifar-10-batches-bin")
        info = tarfile.TarInfo("elsewhere/readme.txt")
        tar.addfile(info, io.BytesIO(b""))
    return buf.getvalue(), arrays


def test_cifar10_unpacks_an_archive_in_root(tmp_path):
    archive, arrays = make_archive(tmp_path)
    root = tmp_path / "root"
    root.mkdir()
    (root / CIFAR10_ARCHIVE).write_bytes(archive)
    check_cifar(load("cifar10", root=root), arrays)
    assert (root / CIFAR10_ARCHIVE).exists()  # the user's archive is kept
    assert not (root / "elsewhere").exists()  # only cifar-10-batches-bin/ is extracted


def test_cifar10_downloads_and_unpacks(tmp_path, monkeypatch):
    archive, arrays = make_archive(tmp_path)
    calls = []
    monkeypatch.setattr(download, "fetch", fake_fetch({CIFAR10_ARCHIVE: archive}, calls))
    root = tmp_path / "root"
    check_cifar(load("cifar10", root=root), arrays)
    assert calls == ["https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"]
    assert not (root / CIFAR10_ARCHIVE).exists()  # the downloaded archive is removed


def test_cifar10_truncated_archive(tmp_path):
    archive, _ = make_archive(tmp_path)
    (tmp_path / CIFAR10_ARCHIVE).write_bytes(archive[: len(archive) // 2])
    with pytest.raises(DataFormatError, match="cannot unpack the archive.*truncated or corrupt"):
        load("cifar10", root=tmp_path)


def test_cifar10_missing_offline(tmp_path):
    write_cifar_set(tmp_path)
    (tmp_path / "data_batch_3.bin").unlink()
    with pytest.raises(FileNotFoundError) as info:
        load("cifar10", root=tmp_path)
    message = str(info.value)
    assert message.startswith("CIFAR-10: data_batch_3.bin not found in")
    assert "the download failed" in message
    assert "cifar-10-binary.tar.gz" in message and "--data-root" in message


def test_cifar10_download_false(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"download=False"):
        image_loaders.cifar10(root=tmp_path, download=False)
