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
    "StreamingSeparation",
]

#: Relative cutoff on the singular values of M (``s <= RCOND * s_max`` are dropped).
RCOND = 1e-6


def _check_labels(labels, n: int, n_classes):
    """Validate labels for ``n`` samples; return labels (N,) int64 array, K, class counts."""
    y = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    if y.ndim != 1 or len(y) != n:
        raise ValueError(f"labels must be 1-D of length N={n}, got shape {y.shape}")
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
    if n <= k:
        raise ValueError(f"need more samples than classes, got N={n} <= K={k}")
    return y, k, counts


def _as_tensor(features) -> torch.Tensor:
    if isinstance(features, torch.Tensor):
        return features.detach()
    return torch.from_numpy(np.asarray(features))


def _single(features) -> torch.Tensor:
    """One feature set as ``(1, N, p)`` (its own dtype and device)."""
    h = _as_tensor(features)
    if h.dim() == 1:
        h = h[:, None]
    if h.dim() < 2 or h.shape[0] == 0:
        raise ValueError(f"features must be (N, p), got shape {tuple(np.shape(features))}")
    return h.reshape(1, h.shape[0], -1)


def _validate_rcond(rcond):
    if not (np.isfinite(rcond) and 0 < rcond < 1):
        raise ValueError(f"rcond must be in (0, 1), got {rcond!r}")


#: Rows of a float64 chunk are chosen so that one ``(E, rows, p)`` chunk holds about this many
#: values (~4 MB): the per-chunk temporaries stay in cache instead of allocating ``E × N × p``.
_CHUNK_VALUES = 1 << 19


def _between(sums: torch.Tensor, counts: torch.Tensor, n: int, rcond: float):
    """Between-class quantities from float64 class sums ``(E, K, p)`` and counts ``(K,)``.

    Returns ``(finite (E,), means (E, K, p), M (E, p, K), singular values (E, r), U_r S_r⁻¹
    (E, p, r))``. A set whose sums are not finite (non-finite features) is zeroed and flagged.
    """
    dev = sums.device
    finite = torch.isfinite(sums).reshape(sums.shape[0], -1).all(1)
    if not bool(finite.all()):
        sums = torch.where(finite[:, None, None], sums, torch.zeros((), dtype=sums.dtype, device=dev))
    means = sums / counts[:, None]  # (E, K, p)
    gmean = sums.sum(1, keepdim=True) / n
    m = ((means - gmean) * torch.sqrt(counts / n)[:, None]).transpose(1, 2)  # (E, p, K)
    u, sv, _ = torch.linalg.svd(m, full_matrices=False)  # (E, p, r), (E, r)
    keep = sv > rcond * sv[:, :1]
    inv = torch.where(keep, 1.0 / torch.where(keep, sv, torch.ones_like(sv)), torch.zeros_like(sv))
    return finite, means, m, sv, u * inv[:, None, :]  # proj (E, p, r): columns U_r S_r^-1


def _stats(h: torch.Tensor, labels, n_classes, rcond: float):
    """``D`` and the traces for ``E`` feature sets ``h`` ``(E, N, p)`` sharing one label vector.

    Two passes over ``N`` in chunks converted to float64: class sums, then the within-class
    residuals ``R`` of the chunk (never all of ``R`` at once), accumulating
    ``tr Σ_w = ‖R‖²_F / N`` and ``D = ‖R U S⁻¹‖²_F / N``. Returns float64 tensors ``(E,)``
    ``(D, tr Σ_w, tr Σ_b, finite, s_max)`` where ``finite`` flags sets with finite features.
    """
    e, n, p = h.shape
    dev = h.device
    y_np, k, counts_np = _check_labels(labels, n, n_classes)
    y = torch.from_numpy(y_np).to(dev)
    counts = torch.from_numpy(counts_np).to(dev, torch.float64)
    rows = max(1, _CHUNK_VALUES // max(1, e * p))
    spans = [(a, min(n, a + rows)) for a in range(0, n, rows)]
    sums = torch.zeros(e, k, p, dtype=torch.float64, device=dev)
    for a, b in spans:
        sums.index_add_(1, y[a:b], h[:, a:b].to(torch.float64))
    # A set has a non-finite feature iff its float64 class sums do (no finite float32 sum
    # overflows in float64): cheaper than scanning the features. Such sets are zeroed before the
    # SVD and reported as NaN; the others are unaffected.
    finite, means, m, sv, proj = _between(sums, counts, n, rcond)
    tw = torch.zeros(e, dtype=torch.float64, device=dev)
    d = torch.zeros(e, dtype=torch.float64, device=dev)
    for a, b in spans:
        r = h[:, a:b].to(torch.float64) - means[:, y[a:b]]
        tw += (r * r).sum((1, 2))
        z = torch.bmm(r, proj)
        d += (z * z).sum((1, 2))
    tb = (m * m).sum((1, 2))
    return d / n, tw / n, tb, finite, sv[:, 0]


def _logs(d, tw, tb, finite, smax) -> tuple[np.ndarray, np.ndarray]:
    """``(log D, log tr Σ_w − log tr Σ_b)`` as float64 arrays; NaN where undefined."""
    with np.errstate(divide="ignore", invalid="ignore"):
        log_d = np.log(d.cpu().numpy())
        log_t = np.log(tw.cpu().numpy()) - np.log(tb.cpu().numpy())
    bad = (~finite | (smax == 0) | (tb == 0)).cpu().numpy()
    log_d[bad] = np.nan
    log_t[bad] = np.nan
    return log_d, log_t


def _single_stats(features, labels, n_classes, rcond) -> tuple[float, float]:
    h = _single(features)
    d, tw, tb, finite, smax = _stats(h, labels, n_classes, rcond)
    if not bool(finite.all()):
        raise ValueError("features contain non-finite values (NaN or inf)")
    log_d, log_t = _logs(d, tw, tb, finite, smax)
    return float(log_d[0]), float(log_t[0])


def log_separation(features, labels, n_classes: int | None = None, *,
                   rcond: float = RCOND) -> float:
    """``log D = log tr(Σ_w Σ_b⁺)`` by the efficient float64 route ``D = (1/N)‖R U S⁻¹‖²_F``.

    Parameters
    ----------
    features : array or tensor ``(N, p)`` (or ``(N, ...)``, flattened)
        Computed in float64 with torch on the tensor's device (CPU for NumPy input), in row
        chunks (no ``N × p`` float64 copy, no ``p × p`` matrix).
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
    return _single_stats(features, labels, n_classes, rcond)[0]


def log_separation_direct(features, labels, n_classes: int | None = None, *,
                          rcond: float = RCOND) -> float:
    """``log tr(Σ_w Σ_b⁺)`` from the explicit ``p × p`` covariances (reference; small ``p``).

    ``Σ_b⁺`` is the Moore–Penrose pseudo-inverse with eigenvalues at or below
    ``rcond² · λ_max(Σ_b)`` dropped — the same cutoff as :func:`log_separation`.
    """
    _validate_rcond(rcond)
    h = _single(features)[0].cpu().numpy().astype(np.float64)
    y, k, counts = _check_labels(labels, h.shape[0], n_classes)
    if not np.all(np.isfinite(h)):
        raise ValueError("features contain non-finite values (NaN or inf)")
    n = h.shape[0]
    means = np.stack([h[y == c].mean(0) for c in range(k)])
    gmean = h.mean(0)
    sigma_b = sum(counts[c] * np.outer(means[c] - gmean, means[c] - gmean) for c in range(k)) / n
    r = h - means[y]
    sigma_w = r.T @ r / n
    if not np.any(sigma_b):
        return float("nan")
    pinv = np.linalg.pinv(sigma_b, rtol=rcond**2, hermitian=True)
    with np.errstate(divide="ignore"):
        return float(np.log(np.trace(sigma_w @ pinv)))


def log_trace_ratio(features, labels, n_classes: int | None = None) -> float:
    """Trace-ratio variant ``log tr Σ_w − log tr Σ_b`` (as logged by the original CNN runs)."""
    return _single_stats(features, labels, n_classes, RCOND)[1]


def separation_stats(features, labels, n_classes: int | None = None, *,
                     rcond: float = RCOND) -> tuple[float, float]:
    """``(log D, log tr Σ_w − log tr Σ_b)`` from one pass over the features (same conventions
    as :func:`log_separation` and :func:`log_trace_ratio`)."""
    _validate_rcond(rcond)
    return _single_stats(features, labels, n_classes, rcond)


def separation_stats_batched(features, labels, n_classes: int | None = None, *,
                             rcond: float = RCOND) -> tuple[np.ndarray, np.ndarray]:
    """:func:`separation_stats` for ``E`` feature sets sharing one label vector, batched.

    Parameters
    ----------
    features : array or tensor ``(E, N, p)`` (or ``(E, N, ...)``, flattened)
        E.g. one layer of every member of an ensemble. Computed in float64 with torch on the
        tensor's device, in row chunks.
    labels : int array ``(N,)``

    Returns
    -------
    ``(log D, log tr Σ_w − log tr Σ_b)``, float64 arrays ``(E,)``. A set with non-finite
    features gives NaN in both (no error: one diverged ensemble member must not stop the
    others); coincident class means give NaN, collapsed classes ``-inf``. Label errors raise as
    in :func:`log_separation`.
    """
    _validate_rcond(rcond)
    h = _as_tensor(features)
    if h.dim() < 3:
        raise ValueError(f"features must be (E, N, p), got shape {tuple(h.shape)}")
    h = h.reshape(h.shape[0], h.shape[1], -1)
    return _logs(*_stats(h, labels, n_classes, rcond))


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


class StreamingSeparation:
    """``(log D, log tr Σ_w − log tr Σ_b)`` of one feature set seen in batches: exact, two passes.

    Pass 1 (:meth:`add_means`) accumulates the float64 class sums and counts; :meth:`freeze`
    forms ``M`` and the projection ``U_r S_r⁻¹`` (same cutoff as :func:`log_separation`); pass 2
    (:meth:`add_residuals`, the same samples again, in any order and batching) accumulates
    ``‖R‖²_F`` and ``‖R U_r S_r⁻¹‖²_F`` from the within-class residuals of each batch. Memory
    ``O(p K + B p)`` for batches of ``B`` rows of ``p`` features; the result equals
    :func:`separation_stats` on the stacked features to float64 rounding.

    Parameters
    ----------
    n_classes : int, optional
        ``K``; default ``max(label) + 1`` over pass 1.
    rcond : float
        Pseudo-inverse cutoff relative to the largest singular value of ``M``.
    """

    def __init__(self, n_classes: int | None = None, *, rcond: float = RCOND):
        _validate_rcond(rcond)
        self.n_classes = n_classes
        self.rcond = rcond
        self.n = 0
        self._sums: torch.Tensor | None = None
        self._counts: torch.Tensor | None = None
        self._frozen = None
        self._tw = self._d = None
        self._n2 = 0

    @staticmethod
    def _rows(h: torch.Tensor) -> torch.Tensor:
        h = h.detach()
        return h.reshape(h.shape[0], -1)

    def add_means(self, h: torch.Tensor, y: torch.Tensor) -> None:
        """Pass 1: features ``(B, ...)`` (flattened per sample) and int labels ``(B,)`` (same device)."""
        if self._frozen is not None:
            raise RuntimeError("add_means after freeze(): the class means are already fixed")
        h = self._rows(h)
        k_need = int(y.max()) + 1 if y.numel() else 0
        if self._sums is None:
            k0 = max(k_need, self.n_classes or 0)
            self._sums = torch.zeros(k0, h.shape[1], dtype=torch.float64, device=h.device)
            self._counts = torch.zeros(k0, dtype=torch.float64, device=h.device)
        elif h.shape[1] != self._sums.shape[1]:
            raise ValueError(f"features changed size between batches: {self._sums.shape[1]} then {h.shape[1]}")
        if k_need > self._sums.shape[0]:
            grow = k_need - self._sums.shape[0]
            self._sums = torch.cat([self._sums, self._sums.new_zeros(grow, self._sums.shape[1])])
            self._counts = torch.cat([self._counts, self._counts.new_zeros(grow)])
        self._sums.index_add_(0, y, h.to(torch.float64))
        self._counts.index_add_(0, y, torch.ones(len(y), dtype=torch.float64, device=h.device))
        self.n += len(y)

    def freeze(self) -> None:
        """End of pass 1: check the classes and form the between-class projection."""
        if self._sums is None:
            raise ValueError("no samples were given")
        counts = self._counts.cpu().numpy().astype(np.int64)
        k = len(counts) if self.n_classes is None else int(self.n_classes)
        if len(counts) > k:
            raise ValueError(f"label {len(counts) - 1} out of range for n_classes={k}")
        if k < 2:
            raise ValueError(f"need at least 2 classes, got n_classes={k} (every label is {k - 1})")
        empty = np.flatnonzero(counts == 0)
        if empty.size:
            raise ValueError(f"class(es) {empty.tolist()} have no samples among the {self.n} given")
        if self.n <= k:
            raise ValueError(f"need more samples than classes, got N={self.n} <= K={k}")
        finite, means, m, sv, proj = _between(self._sums[None], self._counts, self.n, self.rcond)
        self._frozen = (finite, means[0], m, sv, proj[0])
        self._tw = torch.zeros((), dtype=torch.float64, device=self._sums.device)
        self._d = torch.zeros((), dtype=torch.float64, device=self._sums.device)

    @property
    def n_features(self) -> int:
        """``p`` (0 before the first batch)."""
        return 0 if self._sums is None else int(self._sums.shape[1])

    @property
    def n_classes_used(self) -> int:
        """``K`` (after :meth:`freeze`)."""
        return int(self.n_classes) if self.n_classes is not None else int(self._sums.shape[0])

    @property
    def finite(self) -> bool:
        """Whether the features of pass 1 were all finite (call after :meth:`freeze`)."""
        return bool(self._frozen[0][0])

    def add_residuals(self, h: torch.Tensor, y: torch.Tensor) -> None:
        """Pass 2: the same samples as pass 1 (any order and batching)."""
        if self._frozen is None:
            self.freeze()
        if not self.finite:
            self._n2 += len(y)
            return
        means, proj = self._frozen[1], self._frozen[4]
        r = self._rows(h).to(torch.float64) - means[y]
        self._tw += (r * r).sum()
        z = r @ proj
        self._d += (z * z).sum()
        self._n2 += len(y)

    def result(self) -> tuple[float, float]:
        """``(log D, log tr Σ_w − log tr Σ_b)``; NaN for non-finite features or coincident class
        means, ``-inf`` for collapsed classes (as :func:`separation_stats_batched`)."""
        if self._frozen is None:
            raise RuntimeError("result() before the two passes")
        if self._n2 != self.n:
            raise ValueError(f"pass 2 saw {self._n2} samples, pass 1 saw {self.n}: both passes must visit the "
                             "same samples (a shuffling loader is fine, random augmentation or a changing "
                             "data set is not)")
        finite, _, m, sv, _ = self._frozen
        tb = (m * m).sum((1, 2))
        log_d, log_t = _logs((self._d / self.n)[None], (self._tw / self.n)[None], tb, finite, sv[:, 0])
        return float(log_d[0]), float(log_t[0])
