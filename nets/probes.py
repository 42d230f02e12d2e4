"""Per-layer data-separation probes (SPEC §1): pure functions over feature arrays.

For features ``H`` of shape ``(N, p)`` and labels ``c_i in {0..K-1}`` with class counts ``n_c``,
global mean ``h̄`` and class means ``h̄_c``:

    Σ_b = (1/N) Σ_c n_c (h̄_c − h̄)(h̄_c − h̄)ᵀ          (between-class, rank ≤ K − 1)
    Σ_w = (1/N) Σ_c Σ_{i∈c} (h_i − h̄_c)(h_i − h̄_c)ᵀ      (within-class)
    D   = tr(Σ_w Σ_b⁺)

All statistics are computed in float64 with torch, on the device of a tensor input (CPU for NumPy
input), so they follow ``torch.set_num_threads`` and can stay on the GPU.

Efficient route (:func:`log_separation`, float64, no ``p × p`` matrix): with ``M`` the ``p × K``
matrix of columns ``sqrt(n_c/N) (h̄_c − h̄)``, ``Σ_b = M Mᵀ`` and ``Σ_b⁺ = (M⁺)ᵀ M⁺``, so
``D = (1/N) ‖R (M⁺)ᵀ‖²_F`` with ``R`` (``N × p``) the within-class residuals. With the thin SVD
``M = U S Vᵀ`` restricted to the kept singular values this is ``D = (1/N) ‖R U S⁻¹‖²_F``, an
``O(N p K)`` computation.

**Pseudo-inverse cutoff.** Singular values of ``M`` at or below ``rcond · s_max(M)`` are treated
as zero (default ``rcond = RCOND = 1e-6``). ``M`` always has one exactly-zero singular value in
exact arithmetic (its weighted columns sum to zero), which rounding turns into ~1e-16·s_max; the
cutoff removes it robustly. The direct route (:func:`log_separation_direct`) applies the
equivalent cutoff ``rcond² · λ_max(Σ_b)`` to the eigenvalues of ``Σ_b``.

The load-curve shape numbers (loads, linearity v, curvature c, regime) come from
:mod:`springblock.observables`, so networks and the simulator use the same definitions.
"""

from __future__ import annotations

import numpy as np
import torch

from springblock import observables

__all__ = [
    "RCOND",
    "log_separation",
    "log_separation_direct",
    "log_trace_ratio",
    "separation_stats",
    "separation_stats_batched",
    "layer_curve",
    "curve_summary",
]

#: Relative cutoff on the singular values of M (``s <= RCOND * s_max`` are dropped).
RCOND = 1e-6


def _prepare(features, labels, n_classes):
    """Validate; return float64 tensor H (N, p) on the features' device, labels (N,), K, counts."""
    if isinstance(features, torch.Tensor):
        h = features.detach()
    else:
        h = torch.from_numpy(np.array(features, copy=True))
    if h.dim() == 1:
        h = h[:, None]
    if h.dim() > 2:
        h = h.reshape(h.shape[0], -1)
    if h.dim() != 2 or h.shape[0] == 0:
        raise ValueError(f"features must be (N, p), got shape {tuple(np.shape(features))}")
    h = h.to(torch.float64)
    y = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    if y.ndim != 1 or len(y) != h.shape[0]:
        raise ValueError(f"labels must be 1-D of length N={h.shape[0]}, got shape {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"labels must be integers, got dtype {y.dtype}")
    y = y.astype(np.int64)
    if y.min() < 0:
        raise ValueError(f"labels must be >= 0, got {y.min()}")
    k = int(y.max()) + 1 if n_classes is None else int(n_classes)
    if y.max() >= k:
        raise ValueError(f"label {y.max()} out of range for n_classes={k}")
    if k < 2:
        raise ValueError(f"need at least 2 classes, got n_classes={k}")
    counts = np.bincount(y, minlength=k)
    empty = np.flatnonzero(counts == 0)
    if empty.size:
        raise ValueError(f"class(es) {empty.tolist()} have no samples among the {len(y)} given")
    n = len(y)
    if n <= k:
        raise ValueError(f"need more samples than classes, got N={n} <= K={k}")
    if not bool(torch.isfinite(h).all()):
        raise ValueError("features contain non-finite values (NaN or inf)")
    return h, torch.from_numpy(y).to(h.device), k, torch.from_numpy(counts).to(h.device, torch.float64)


def _scatter(h, y, k, counts):
    """``M`` (p, K) and residuals ``R`` (N, p), float64 tensors."""
    n = h.shape[0]
    sums = torch.zeros(k, h.shape[1], dtype=h.dtype, device=h.device).index_add_(0, y, h)
    means = sums / counts[:, None]
    gmean = h.mean(dim=0)
    m = ((means - gmean) * torch.sqrt(counts / n)[:, None]).T
    r = h - means[y]
    return m, r


def _validate_rcond(rcond):
    if not (np.isfinite(rcond) and 0 < rcond < 1):
        raise ValueError(f"rcond must be in (0, 1), got {rcond!r}")


def _log(d: float) -> float:
    with np.errstate(divide="ignore"):
        return float(np.log(d))


def _log_d(m, r, rcond) -> float:
    """``log((1/N) ‖R U_r S_r⁻¹‖²_F)`` over the singular values ``s > rcond s_max`` of M."""
    u, s, _ = torch.linalg.svd(m, full_matrices=False)
    if float(s[0]) == 0.0:
        return float("nan")
    keep = s > rcond * s[0]
    z = r @ (u[:, keep] / s[keep])
    return _log(float((z * z).sum()) / r.shape[0])


def log_separation(features, labels, n_classes: int | None = None, *,
                   rcond: float = RCOND) -> float:
    """``log D = log tr(Σ_w Σ_b⁺)`` by the efficient float64 route ``D = (1/N)‖R U S⁻¹‖²_F``.

    Parameters
    ----------
    features : array or tensor ``(N, p)`` (or ``(N, ...)``, flattened)
        Computed in float64 with torch on the tensor's device (CPU for NumPy input).
    labels : int array ``(N,)`` in ``0..K-1``
    n_classes : int, optional
        ``K``; default ``max(labels) + 1``. Every class must have at least one sample.
    rcond : float
        Pseudo-inverse cutoff relative to the largest singular value of ``M``.

    Returns
    -------
    float
        ``log D``; ``-inf`` if the classes are collapsed to points (``Σ_w = 0``); NaN if the
        class means coincide (``M = 0``, between-class scatter zero: D undefined).

    Raises
    ------
    ValueError
        One class only, a class without samples, ``N <= K``, non-finite features.
    """
    _validate_rcond(rcond)
    h, y, k, counts = _prepare(features, labels, n_classes)
    m, r = _scatter(h, y, k, counts)
    return _log_d(m, r, rcond)


def log_separation_direct(features, labels, n_classes: int | None = None, *,
                          rcond: float = RCOND) -> float:
    """``log tr(Σ_w Σ_b⁺)`` from the explicit ``p × p`` covariances (reference; small ``p``).

    ``Σ_b⁺`` is the Moore–Penrose pseudo-inverse with eigenvalues at or below
    ``rcond² · λ_max(Σ_b)`` dropped — the same cutoff as :func:`log_separation`.
    """
    _validate_rcond(rcond)
    h, y, k, counts = _prepare(features, labels, n_classes)
    n = h.shape[0]
    m, r = _scatter(h, y, k, counts)
    sigma_w = (r.T @ r / n).cpu().numpy()
    sigma_b = (m @ m.T).cpu().numpy()
    if not np.any(sigma_b):
        return float("nan")
    pinv = np.linalg.pinv(sigma_b, rtol=rcond**2, hermitian=True)
    return _log(float(np.trace(sigma_w @ pinv)))


def log_trace_ratio(features, labels, n_classes: int | None = None) -> float:
    """Trace-ratio variant ``log tr Σ_w − log tr Σ_b`` (as logged by the original CNN runs)."""
    h, y, k, counts = _prepare(features, labels, n_classes)
    m, r = _scatter(h, y, k, counts)
    tw, tb = float((r * r).sum()) / h.shape[0], float((m * m).sum())
    if tb == 0.0:
        return float("nan")
    return _log(tw) - _log(tb)


def separation_stats(features, labels, n_classes: int | None = None, *,
                     rcond: float = RCOND) -> tuple[float, float]:
    """``(log D, log tr Σ_w − log tr Σ_b)`` from one pass over the features (same conventions
    as :func:`log_separation` and :func:`log_trace_ratio`)."""
    _validate_rcond(rcond)
    h, y, k, counts = _prepare(features, labels, n_classes)
    m, r = _scatter(h, y, k, counts)
    tw, tb = float((r * r).sum()) / h.shape[0], float((m * m).sum())
    if tb == 0.0:
        return float("nan"), float("nan")
    return _log_d(m, r, rcond), _log(tw) - _log(tb)


def separation_stats_batched(features, labels, n_classes: int | None = None, *,
                             rcond: float = RCOND) -> tuple[np.ndarray, np.ndarray]:
    """:func:`separation_stats` for ``E`` feature sets sharing one label vector, batched.

    Parameters
    ----------
    features : array or tensor ``(E, N, p)`` (or ``(E, N, ...)``, flattened)
        E.g. one layer of every member of an ensemble. Computed in float64 with torch on the
        tensor's device.
    labels : int array ``(N,)``

    Returns
    -------
    ``(log D, log tr Σ_w − log tr Σ_b)``, float64 arrays ``(E,)``. A set with non-finite
    features gives NaN in both (no error: one diverged ensemble member must not stop the
    others); coincident class means give NaN, collapsed classes ``-inf``. Label errors raise as
    in :func:`log_separation`.
    """
    _validate_rcond(rcond)
    h = features.detach() if isinstance(features, torch.Tensor) else torch.from_numpy(np.asarray(features))
    if h.dim() < 3:
        raise ValueError(f"features must be (E, N, p), got shape {tuple(h.shape)}")
    h = h.reshape(h.shape[0], h.shape[1], -1).to(torch.float64)
    e, n, _ = h.shape
    _, y, k, counts = _prepare(torch.zeros(n, 1, dtype=torch.float64, device=h.device), labels, n_classes)
    finite = torch.isfinite(h).flatten(1).all(1)
    if not bool(finite.all()):
        h = torch.where(finite[:, None, None], h, torch.zeros((), dtype=h.dtype, device=h.device))
    onehot = torch.zeros(n, k, dtype=h.dtype, device=h.device)
    onehot[torch.arange(n, device=h.device), y] = 1.0
    means = (onehot.T @ h) / counts[:, None]  # (E, K, p)
    m = ((means - h.mean(dim=1, keepdim=True)) * torch.sqrt(counts / n)[:, None]).transpose(1, 2)
    r = h - means[:, y]  # (E, N, p)
    tw = (r * r).sum((1, 2)) / n
    tb = (m * m).sum((1, 2))
    u, sv, _ = torch.linalg.svd(m, full_matrices=False)  # (E, p, r), (E, r)
    keep = sv > rcond * sv[:, :1]
    inv = torch.where(keep, 1.0 / torch.where(keep, sv, torch.ones_like(sv)), torch.zeros_like(sv))
    z = r @ (u * inv[:, None, :])
    d = (z * z).sum((1, 2)) / n
    with np.errstate(divide="ignore", invalid="ignore"):
        log_d = np.log(d.cpu().numpy())
        log_t = np.log(tw.cpu().numpy()) - np.log(tb.cpu().numpy())
    bad = (~finite | (sv[:, 0] == 0) | (tb == 0)).cpu().numpy()
    log_d[bad] = np.nan
    log_t[bad] = np.nan
    return log_d, log_t


def layer_curve(features, labels, n_classes: int | None = None, *, method: str = "D",
                rcond: float = RCOND) -> np.ndarray:
    """Load curve over layers: one value per feature array.

    Parameters
    ----------
    features : sequence of arrays ``(N, p_l)``, ``l = 0..L``
    method : {"D", "trace"}
        ``"D"``: :func:`log_separation`; ``"trace"``: :func:`log_trace_ratio`.

    Returns
    -------
    float64 array ``(L + 1,)``.
    """
    if method == "D":
        return np.array([log_separation(f, labels, n_classes, rcond=rcond) for f in features])
    if method == "trace":
        return np.array([log_trace_ratio(f, labels, n_classes) for f in features])
    raise ValueError(f"method must be 'D' or 'trace', got {method!r}")


def curve_summary(curve, tol: float = observables.REGIME_TOL) -> dict:
    """Shape numbers of one load curve (``springblock.observables.curve_summary``): the curve,
    loads ``d_l``, linearity ``v``, curvature ``c = d_1 − d_L``, ``c / Σ d``, regime label."""
    return observables.curve_summary(curve, tol)
