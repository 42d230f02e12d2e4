"""The package's error classes (pure Python: ``nets`` and ``phase_diagrams`` share them).

Every error a user can cause is an :class:`InputError` (a ``ValueError``) whose message names the
bad value and says why, raised before any long work starts. The command lines print it as one line
``error: <what> <the bad value>: <why>`` and exit 2; ``-v`` (or ``SPRINGBLOCK_TRACEBACK=1``) shows
the traceback. The table of classes: ``docs/errors.md``.
"""

from __future__ import annotations

import os

__all__ = ["InputError", "ResourceError", "memory_budget", "check_memory"]


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
        raise ResourceError(f"{what}: needs about {_human(nbytes)}, more than the memory budget of "
                            f"{_human(budget)} (half the available memory; set SPRINGBLOCK_MEMORY_BUDGET to "
                            f"change it){'; ' + hint if hint else ''}")


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.3g} {unit}"
        n /= 1024
    return f"{n:.3g} PiB"
