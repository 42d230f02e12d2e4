"""Settings shared by the whole test session, and the MNIST skip.

Threads. torch runs on one CPU thread for the whole session (set once here, not by test modules
or library code): the tests are small, and one thread keeps floating-point reductions and timing
independent of the machine. Numba keeps its default; tests that need a thread count set and
restore it themselves.

MNIST. Tests that read MNIST from the cache (``$SPRINGBLOCK_DATA`` or ``./data``) carry
``@pytest.mark.mnist`` or request the ``mnist`` fixture; without the cached file they are
skipped with the command that fetches it, instead of erroring.
"""

from __future__ import annotations

import pytest

FETCH = "python -m nets fetch mnist"


def _mnist_file():
    from nets.data import default_cache_dir

    return default_cache_dir() / "mnist.npz"


def _skip_reason() -> str:
    return f"MNIST is not in the cache ({_mnist_file()} is missing); fetch it once with: {FETCH}"


def pytest_configure(config):
    config.addinivalue_line("markers", f"mnist: reads MNIST from the cache (skipped when absent: {FETCH})")
    try:
        import torch
    except ImportError:
        return
    torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    if _mnist_file().is_file():
        return
    skip = pytest.mark.skip(reason=_skip_reason())
    for item in items:
        if item.get_closest_marker("mnist") is not None:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def mnist():
    """The MNIST cache file (a ``Path``); skips the test when it is absent."""
    path = _mnist_file()
    if not path.is_file():
        pytest.skip(_skip_reason())
    return path
