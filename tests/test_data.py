"""Data sets: the official file formats read back from small files built in a temporary folder
(no network), float [0,1] images and integer labels, train / val (held out from train) / test."""

from __future__ import annotations

import gzip
import pickle

import numpy as np
import pytest
import torch
from hostile_pickles import HOSTILE

import harness.data as D
from harness.core.errors import DataError

# -- IDX (MNIST, Fashion-MNIST) ---------------------------------------------------------------


def test_idx_round_trip_in_the_official_layout(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, size=(7, 28, 28), dtype=np.uint8)
    labels = np.arange(7, dtype=np.uint8)
    D.write_idx(tmp_path / "img.gz", images)
    D.write_idx(tmp_path / "lab.gz", labels)
    raw = gzip.decompress((tmp_path / "img.gz").read_bytes())
    # the official header: two zero bytes, 0x08 (unsigned byte), ndim; then big-endian sizes
    assert raw[:4] == b"\x00\x00\x08\x03" and raw[4:16] == (7).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2
    assert gzip.decompress((tmp_path / "lab.gz").read_bytes())[:8] == b"\x00\x00\x08\x01" + (7).to_bytes(4, "big")
    np.testing.assert_array_equal(D.read_idx(tmp_path / "img.gz"), images)
    np.testing.assert_array_equal(D.read_idx(tmp_path / "lab.gz"), labels)
    (tmp_path / "plain").write_bytes(raw)  # not compressed, as torchvision leaves them
    np.testing.assert_array_equal(D.read_idx(tmp_path / "plain"), images)


@pytest.mark.parametrize("cut, match", [(16 + 100, "truncated"), (10, "truncated"), (2, "too short")])
def test_truncated_idx_is_a_data_error(tmp_path, cut, match):
    D.write_idx(tmp_path / "img.gz", np.zeros((3, 28, 28), np.uint8))
    raw = gzip.decompress((tmp_path / "img.gz").read_bytes())
    (tmp_path / "cut").write_bytes(raw[:cut])
    with pytest.raises(DataError, match=match):
        D.read_idx(tmp_path / "cut")


def test_idx_with_the_wrong_magic_or_a_corrupt_gzip(tmp_path):
    (tmp_path / "float").write_bytes(b"\x00\x00\x0d\x01" + (1).to_bytes(4, "big") + b"\x00\x00\x00\x00")
    with pytest.raises(DataError, match="not an unsigned-byte IDX file"):
        D.read_idx(tmp_path / "float")
    D.write_idx(tmp_path / "x.gz", np.zeros((50, 28, 28), np.uint8))
    b = (tmp_path / "x.gz").read_bytes()
    (tmp_path / "y.gz").write_bytes(b[: len(b) // 2])
    with pytest.raises(DataError, match="corrupt or truncated"):
        D.read_idx(tmp_path / "y.gz")


@pytest.mark.parametrize("layout", ["flat", "torchvision"])
def test_fashion_mnist_from_data_dir(tmp_path, no_data_sources, layout, write_idx_dataset):
    folder = tmp_path / "fm" if layout == "flat" else tmp_path / "fm" / "FashionMNIST" / "raw"
    arrays = write_idx_dataset(folder, n_train=60, n_test=20)
    b = D.load_dataset("fashion-mnist", data_dir=tmp_path / "fm", val_size=10, download=False)
    assert (len(b.train), len(b.val), len(b.test)) == (50, 10, 20)
    assert b.shape == (1, 28, 28) and b.num_classes == 10 and b.classes[0] == "T-shirt/top"
    assert b.mean == (0.2860,) and b.std == (0.3530,)
    assert b.source == str(folder)
    # the test split is the official test file, in its order
    np.testing.assert_array_equal(b.test.x[:, 0].numpy(), arrays["test_x"])
    np.testing.assert_array_equal(b.test.y.numpy(), arrays["test_y"])


def test_fashion_mnist_from_the_system_copy_and_the_cache(tmp_path, no_data_sources, monkeypatch, write_idx_dataset):
    write_idx_dataset(D.SYSTEM_FASHION_MNIST)
    assert D.load_dataset("fashion-mnist", val_size=10, download=False).source == str(D.SYSTEM_FASHION_MNIST)
    cache = tmp_path / "cache2"
    write_idx_dataset(cache / "fashion-mnist")
    monkeypatch.setattr(D, "SYSTEM_FASHION_MNIST", tmp_path / "gone")
    monkeypatch.setenv("HARNESS_DATA", str(cache))
    assert D.load_dataset("fashion-mnist", val_size=10, download=False).source == str(cache / "fashion-mnist")


def test_mnist_from_data_dir(tmp_path, no_data_sources, write_idx_dataset):
    write_idx_dataset(tmp_path / "m" / "MNIST" / "raw", n_train=40, n_test=10)
    b = D.load_dataset("mnist", data_dir=tmp_path / "m", val_size=5, download=False)
    assert (len(b.train), len(b.val), len(b.test)) == (35, 5, 10) and b.mean == (0.1307,)


def test_mismatched_idx_counts(tmp_path, no_data_sources, write_idx_dataset):
    write_idx_dataset(tmp_path / "m", n_train=40)
    D.write_idx(tmp_path / "m" / "train-labels-idx1-ubyte.gz", np.zeros(39, np.uint8))
    with pytest.raises(DataError, match="differ in count"):
        D.load_dataset("mnist", data_dir=tmp_path / "m", val_size=5, download=False)


# -- the splits -------------------------------------------------------------------------------


def _rows(x: torch.Tensor):
    return {bytes(r.numpy().tobytes()) for r in x}


def test_val_is_held_out_from_train_with_a_fixed_seed(tmp_path, no_data_sources, write_idx_dataset):
    arrays = write_idx_dataset(tmp_path / "fm", n_train=200, n_test=20)
    load = lambda **k: D.load_dataset("fashion-mnist", data_dir=tmp_path / "fm", download=False, **k)  # noqa: E731
    a = load(val_size=50, split_seed=0)
    b = load(val_size=50, split_seed=0)
    c = load(val_size=50, split_seed=1)
    d = load(val_size=80, split_seed=0)
    assert torch.equal(a.val.x, b.val.x) and torch.equal(a.train.y, b.train.y)  # same seed, same split
    assert not torch.equal(a.val.x, c.val.x)  # the seed decides
    assert (
        (len(d.train), len(d.val)) == (120, 80) and a.split_seed == 0 and c.split_seed == 1
    )  # the size is configurable
    # val and train partition the official train part; the test part is never touched
    train_rows = _rows(torch.from_numpy(arrays["train_x"]))
    assert _rows(a.val.x[:, 0]) | _rows(a.train.x[:, 0]) == train_rows
    assert not (_rows(a.val.x[:, 0]) & _rows(a.train.x[:, 0]))
    assert len(a.test) == 20
    assert a.info()["sizes"] == {"train": 150, "val": 50, "test": 20} and a.info()["val_held_out_from"] == "train"


def test_val_size_must_leave_training_data(tmp_path, no_data_sources, write_idx_dataset):
    write_idx_dataset(tmp_path / "fm", n_train=30)
    with pytest.raises(DataError, match="leaves no training data"):
        D.load_dataset("fashion-mnist", data_dir=tmp_path / "fm", val_size=30, download=False)


def test_batches_are_float_in_0_1_with_integer_labels(tmp_path, no_data_sources, write_idx_dataset):
    write_idx_dataset(tmp_path / "fm", n_train=70, n_test=20)
    b = D.load_dataset("fashion-mnist", data_dir=tmp_path / "fm", val_size=10, download=False)
    assert b.train.x.dtype == torch.uint8  # stored compactly...
    xs, ys = zip(*b.train.batches(16))
    x, y = torch.cat(xs), torch.cat(ys)
    assert x.dtype == torch.float32 and y.dtype == torch.int64  # ...handed out as [0,1] floats
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0 and float(x.max()) > 0.9
    assert torch.equal(x, b.train.x.float() / 255) and torch.equal(y, b.train.y)
    assert [len(v) for v in ys] == [16, 16, 16, 12] and b.train.num_batches(16) == 4
    assert [len(v) for _, v in b.train.batches(16, drop_last=True)] == [16, 16, 16] and b.train.num_batches(
        16, drop_last=True
    ) == 3
    x0, y0 = b.test.first(5)
    assert x0.shape == (5, 1, 28, 28) and torch.equal(y0, b.test.y[:5])
    assert len(b.test.first(1000)[1]) == 20


def test_shuffling_follows_its_generator(tmp_path, no_data_sources):
    b = D.load_dataset("synthetic", val_size=100)

    def order(seed):
        return torch.cat(
            [y for _, y in b.train.batches(64, shuffle=True, generator=torch.Generator().manual_seed(seed))]
        )

    assert torch.equal(order(3), order(3)) and not torch.equal(order(3), order(4))
    assert torch.equal(order(3).sort().values, b.train.y.sort().values)  # a permutation: every example once


def test_batches_are_copies_not_views_of_the_data_set():
    for name in ("digits", "synthetic"):  # float sources, where a slice would be a view
        b = D.load_dataset(name, val_size=100)
        before = b.test.x.clone()
        x, _ = b.test.first(8)
        x.add_(1.0)
        next(iter(b.test.batches(8)))[0].mul_(0)
        assert torch.equal(b.test.x, before)


# -- CIFAR (python pickle batches) ------------------------------------------------------------


def _cifar_arrays(n: int, seed: int, classes: int = 10):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8), rng.integers(0, classes, size=n)


def test_cifar10_from_python_batches(tmp_path, no_data_sources):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    parts = [_cifar_arrays(6, i) for i in range(6)]
    for i in range(5):
        D.write_cifar_batch(folder / f"data_batch_{i + 1}", *parts[i])
    D.write_cifar_batch(folder / "test_batch", *parts[5])
    b = D.load_dataset("cifar10", data_dir=tmp_path, val_size=6, download=False)
    assert (len(b.train), len(b.val), len(b.test)) == (24, 6, 6)
    assert b.shape == (3, 32, 32) and b.num_classes == 10 and len(b.mean) == 3
    np.testing.assert_array_equal(b.test.x.numpy(), parts[5][0])
    all_train = np.concatenate([p[0] for p in parts[:5]])
    assert _rows(torch.cat([b.train.x, b.val.x])) == _rows(torch.from_numpy(all_train))


def test_cifar100_fine_labels(tmp_path, no_data_sources):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    tx, ty = _cifar_arrays(12, 0, classes=100)
    sx, sy = _cifar_arrays(4, 1, classes=100)
    D.write_cifar_batch(folder / "train", tx, ty, fine=True)
    D.write_cifar_batch(folder / "test", sx, sy, fine=True)
    b = D.load_dataset("cifar100", data_dir=tmp_path, val_size=2, download=False)
    assert b.num_classes == 100 and len(b.train) == 10
    np.testing.assert_array_equal(b.test.y.numpy(), sy)


def test_cifar_batch_with_the_original_numpy_core_names(tmp_path):
    """The official batches were pickled by Python 2 / numpy 1 (``numpy.core.multiarray``)."""
    x, y = _cifar_arrays(3, 0)
    D.write_cifar_batch(tmp_path / "b", x, y)
    raw = (tmp_path / "b").read_bytes()
    assert b"numpy._core.multiarray" in raw or b"numpy.core.multiarray" in raw
    (tmp_path / "old").write_bytes(raw.replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    rx, ry = D.read_cifar_batch(tmp_path / "old")
    np.testing.assert_array_equal(rx, x)
    np.testing.assert_array_equal(ry, y)


@pytest.mark.parametrize("hostile", HOSTILE)
@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_cifar_reader_refuses_a_hostile_pickle(tmp_path, hostile, protocol):
    target = tmp_path / "pwned"
    x, y = _cifar_arrays(2, 0)
    (tmp_path / "data_batch_1").write_bytes(
        pickle.dumps(
            {"data": x.reshape(2, -1), "labels": list(map(int, y)), "x": hostile(str(target))}, protocol=protocol
        )
    )
    with pytest.raises(DataError, match="never code"):
        D.read_cifar_batch(tmp_path / "data_batch_1")
    assert not target.exists()


def test_truncated_or_incomplete_cifar_batch(tmp_path):
    x, y = _cifar_arrays(4, 0)
    D.write_cifar_batch(tmp_path / "b", x, y)
    raw = (tmp_path / "b").read_bytes()
    (tmp_path / "cut").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match="not a readable CIFAR batch"):
        D.read_cifar_batch(tmp_path / "cut")
    (tmp_path / "nolabels").write_bytes(pickle.dumps({"data": x.reshape(4, -1)}, protocol=2))
    with pytest.raises(DataError, match="no labels"):
        D.read_cifar_batch(tmp_path / "nolabels")


# -- SVHN (.mat) ------------------------------------------------------------------------------


def test_svhn_from_mat_files(tmp_path, no_data_sources):
    import scipy.io

    rng = np.random.default_rng(0)
    X = rng.integers(0, 256, size=(32, 32, 3, 6), dtype=np.uint8)  # SVHN stores H, W, C, N
    y = np.array([[10], [1], [2], [10], [9], [5]], dtype=np.uint8)  # and the digit 0 as label 10
    (tmp_path / "svhn").mkdir()
    scipy.io.savemat(tmp_path / "svhn" / "train_32x32.mat", {"X": X, "y": y})
    scipy.io.savemat(tmp_path / "svhn" / "test_32x32.mat", {"X": X[..., :3], "y": y[:3]})
    b = D.load_dataset("svhn", data_dir=tmp_path, val_size=1, download=False)
    assert len(b.train) + len(b.val) == 6 and len(b.test) == 3 and b.shape == (3, 32, 32)
    assert b.test.y.tolist() == [0, 1, 2]
    raw = D.svhn(tmp_path, download=False)
    assert raw.train_x[4, 2, 3, 5] == X[3, 5, 2, 4]  # [n, c, h, w] == [h, w, c, n]
    (tmp_path / "svhn" / "test_32x32.mat").write_bytes(b"MATLAB 5.0 garbage")
    with pytest.raises(DataError, match="not a readable SVHN .mat file"):
        D.svhn(tmp_path, download=False)


# -- offline data sets and every registered data set ------------------------------------------


@pytest.mark.parametrize("name, shape", [("digits", (1, 8, 8)), ("synthetic", (1, 8, 8))])
def test_offline_data_sets(name, shape):
    b = D.load_dataset(name, val_size=200, split_seed=0)
    assert b.shape == shape and b.num_classes == 10
    for split in (b.train, b.val, b.test):
        x, y = split.first(len(split))
        assert x.dtype == torch.float32 and 0 <= float(x.min()) and float(x.max()) <= 1
        assert y.dtype == torch.int64 and set(y.tolist()) <= set(range(10))
    assert len(set(b.train.y.tolist())) == 10


@pytest.mark.parametrize("name", D.DATASETS.names())
def test_every_data_set_loads_offline_or_says_how_to_get_it(name, no_data_sources):
    try:
        b = D.load_dataset(name, data_dir=no_data_sources, val_size=10, download=False)
    except DataError as e:
        msg = str(e)
        assert "\n" not in msg and "not found" in msg and "--data-dir" in msg
        assert e.exit_code == 2
        return
    x, y = b.test.first(len(b.test))
    assert 0 <= float(x.min()) and float(x.max()) <= 1 and y.dtype == torch.int64


def test_missing_fashion_mnist_says_how_to_get_it(no_data_sources):
    with pytest.raises(DataError) as ei:
        D.load_dataset("fashion-mnist", data_dir=no_data_sources, download=False)
    msg = str(ei.value)
    assert "apt-get install dataset-fashion-mnist" in msg and "--data-dir" in msg
    assert str(no_data_sources) in msg and str(D.SYSTEM_FASHION_MNIST) in msg  # where it looked
    assert "\n" not in msg


@pytest.mark.parametrize("name", ["fashion-mnist", "mnist", "cifar10", "svhn"])
def test_a_failed_download_is_one_data_error(name, no_data_sources, monkeypatch):
    import torchvision.datasets

    def offline(*a, **k):
        raise OSError("network is unreachable")

    for cls in ("FashionMNIST", "MNIST", "CIFAR10", "SVHN"):
        monkeypatch.setattr(torchvision.datasets, cls, offline)
    with pytest.raises(DataError, match="download failed.*--data-dir"):
        D.load_dataset(name, data_dir=no_data_sources, download=True)


def test_a_loader_giving_normalised_images_is_refused(monkeypatch):
    def normalised(data_dir=None, download=True):
        raw = D.synthetic()
        raw.train_x = (raw.train_x - 0.5) / 0.25
        return raw

    def bad_labels(data_dir=None, download=True):
        raw = D.synthetic()
        raw.test_y = raw.test_y + 1
        return raw

    monkeypatch.setattr(D.DATASETS, "_entries", dict(D.DATASETS._entries))
    D.DATASETS.add("normalised-data", normalised)
    D.DATASETS.add("bad-label-data", bad_labels)
    with pytest.raises(DataError, match="inputs must be in \\[0,1\\].*inside the model"):
        D.load_dataset("normalised-data", val_size=10)
    with pytest.raises(DataError, match="labels outside 0..9"):
        D.load_dataset("bad-label-data", val_size=10)
