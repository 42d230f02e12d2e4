"""The package's error classes (pure Python: ``nets`` and ``phase_diagrams`` share them).

Every error a user can cause is an :class:`InputError` (a ``ValueError``) whose message names the
bad value and says why, raised before any long work starts. The command lines print it as one line
``error: <what> <the bad value>: <why>`` and exit 2; ``-v`` (or ``SPRINGBLOCK_TRACEBACK=1``) shows
the traceback. The table of classes: ``docs/errors.md``.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import threading
import traceback

__all__ = ["InputError", "ResourceError", "memory_budget", "check_memory", "strict_json", "finite_or_none",
           "OneLineParser", "run_cli", "run_interruptible", "check_writable"]


class InputError(ValueError):
    """A value the package refuses; the message names it and says why."""


class ResourceError(InputError):
    """The work would need more memory than the budget (:func:`memory_budget`)."""


def _available_bytes() -> int | None:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _parse_bytes(text: str) -> int:
    t = text.strip().upper().removesuffix("B")
    scale = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}.get(t[-1:], 1)
    number = float(t[:-1] if t[-1:] in "KMGT" else t)
    if not number > 0:
        raise ValueError
    return int(number * scale)


def memory_budget() -> int:
    """Bytes one allocation may take: ``$SPRINGBLOCK_MEMORY_BUDGET`` (e.g. ``8G``, ``500M`` or a
    number of bytes) if set, else half of the memory available now (4 GiB if that is unknown)."""
    text = os.environ.get("SPRINGBLOCK_MEMORY_BUDGET")
    if text:
        try:
            return _parse_bytes(text)
        except (ValueError, IndexError):
            raise InputError(f"SPRINGBLOCK_MEMORY_BUDGET={text!r}: expected a size such as 8G, 500M or "
                             "a number of bytes") from None
    avail = _available_bytes()
    return 4 * 2**30 if avail is None else avail // 2


def check_memory(what: str, nbytes: float, *, hint: str = "") -> None:
    """Raise :class:`ResourceError` if ``nbytes`` exceed :func:`memory_budget`.

    ``what`` names the parameters behind the estimate (e.g. ``"n_chains=1e12 x 8 blocks"``);
    ``hint`` says what to change."""
    budget = memory_budget()
    if nbytes > budget:
        src = ("SPRINGBLOCK_MEMORY_BUDGET" if os.environ.get("SPRINGBLOCK_MEMORY_BUDGET") else
               "half the available memory; set SPRINGBLOCK_MEMORY_BUDGET to change it")
        raise ResourceError(f"{what}: needs about {_human(nbytes)}, more than the memory budget of "
                            f"{_human(budget)} ({src}){'; ' + hint if hint else ''}")


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.3g} {unit}"
        n /= 1024
    return f"{n:.3g} PiB"


# ---------------------------------------------------------------------------- strict JSON
def finite_or_none(obj):
    """``obj`` with every NaN / ±inf float replaced by None, recursively through dicts, lists and
    tuples; NumPy scalars and arrays become plain Python values (what :func:`strict_json` writes)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_or_none(v) for v in obj]
    if hasattr(obj, "tolist") and hasattr(obj, "dtype"):  # NumPy scalars and arrays
        return finite_or_none(obj.tolist())
    return obj


def strict_json(obj, **kwargs) -> str:
    """``json.dumps`` of ``obj`` as RFC 8259 JSON: NaN and ±inf become ``null`` (never the bare
    ``NaN``/``Infinity`` tokens strict parsers reject); NumPy values become plain ones."""
    import json

    return json.dumps(finite_or_none(obj), allow_nan=False, **kwargs)


# ---------------------------------------------------------------------------- command lines
class OneLineParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors are one line ``error: <prog>: <message>`` on
    stderr and exit status 2 (``--help`` is unchanged); subparsers inherit the class."""

    def error(self, message):
        hint = f" (see {self.prog} --help)"
        self.exit(2, f"error: {self.prog}: {message}{hint}\n")


def _show_traceback(verbose) -> bool:
    return bool(verbose) or os.environ.get("SPRINGBLOCK_TRACEBACK", "") not in ("", "0")


def run_cli(body, *, verbose=0) -> int:
    """Run ``body()`` (a command's work, returning its exit status) under the one error style.

    A user error (:class:`InputError`, any ``ValueError``/``TypeError``, a missing input file) prints one line
    ``error: <message>`` to stderr and returns 2; an environment failure (``OSError``,
    ``MemoryError``, ``RuntimeError``) one line and 1; Ctrl-C ``error: interrupted`` and 130;
    anything else ``error: internal error ...`` and 1. The traceback is printed only with
    ``verbose`` (``-v``) or ``SPRINGBLOCK_TRACEBACK=1``."""
    try:
        return body()
    except KeyboardInterrupt:
        _emit(None, "interrupted (Ctrl-C); nothing more was written", verbose)
        return 130
    except (InputError, ValueError, TypeError, FileNotFoundError) as err:  # a missing input is the user's
        _emit(err, _one_line(err), verbose)
        return 2
    except MemoryError as err:
        _emit(err, f"out of memory ({err or 'MemoryError'}); use smaller sizes or set SPRINGBLOCK_MEMORY_BUDGET",
              verbose)
        return 1
    except (OSError, RuntimeError) as err:
        _emit(err, _one_line(err), verbose)
        return 1
    except Exception as err:  # a bug: still one line, and how to get the traceback
        _emit(err, f"internal error {type(err).__name__}: {_one_line(err)} (rerun with -v or "
                   "SPRINGBLOCK_TRACEBACK=1 for the traceback, and report it)", verbose)
        return 1


def _one_line(err) -> str:
    text = str(err) or type(err).__name__
    if isinstance(err, OSError) and err.filename is not None and str(err.filename) not in text:
        text = f"{err.filename}: {text}"
    return " ".join(text.split())


def _emit(err, line, verbose):
    if _show_traceback(verbose):
        traceback.print_exc()
    print(f"error: {line}", file=sys.stderr, flush=True)


def run_interruptible(fn, *args, poll: float = 0.1, **kwargs):
    """``fn(*args, **kwargs)`` in a daemon worker thread while the main thread waits in short
    timeouts, so Ctrl-C (``KeyboardInterrupt``) reaches the caller within ``poll`` seconds even
    while ``fn`` runs a long Numba kernel that released the GIL. On an interrupt the worker is
    abandoned (the caller should exit); an exception of ``fn`` is re-raised here."""
    box = {}

    def work():
        try:
            box["value"] = fn(*args, **kwargs)
        except BaseException as e:  # handed to the main thread
            box["error"] = e

    t = threading.Thread(target=work, daemon=True, name="springblock-work")
    t.start()
    while t.is_alive():
        t.join(poll)
    if "error" in box:
        raise box["error"]
    return box["value"]


def check_writable(path, *, what: str = "--out") -> None:
    """``InputError`` unless ``path`` can be written as a new or replaced file: its directory
    exists and is writable, and the path is not a directory. Checked before long work starts."""
    from pathlib import Path

    p = Path(path)
    parent = p.parent if str(p.parent) else Path(".")
    if p.is_dir():
        raise InputError(f"{what} {str(path)!r}: is a directory; give a file name")
    if not parent.is_dir():
        raise InputError(f"{what} {str(path)!r}: directory {str(parent)!r} does not exist; create it first")
    if p.exists() and not os.access(p, os.W_OK):
        raise InputError(f"{what} {str(path)!r}: the file is not writable")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"{what} {str(path)!r}: directory {str(parent)!r} is not writable")
    # root ignores permission bits and a read-only mount is not visible to os.access for root:
    # try to create a file next to it
    probe = parent / f".{p.name}.{os.getpid()}.probe"
    try:
        with open(probe, "x"):
            pass
    except OSError as e:
        raise InputError(f"{what} {str(path)!r}: cannot write in {str(parent)!r} ({e.strerror})") from None
    else:
        probe.unlink()
