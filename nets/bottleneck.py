"""Bottleneck measures of leaky ResNets (SPEC §5.2; Jacot & Kaiser, arXiv 2405.17573).

Pure functions over representation arrays, float64 throughout (torch or NumPy input; computed
with torch on the input's device). Representations are row-per-data-point: ``A ∈ R^{N×w}``.

Spectra and ranks (:func:`singular_values`, :func:`rank_measures`)
    singular values ``s_1 ≥ s_2 ≥ …`` of ``A`` (and of the weights ``W_ℓ``);
    numerical rank ``#{s_i > rtol · s_1}``; stable rank ``‖A‖_*² / ‖A‖_F² = (Σ s_i)² / Σ s_i²``
    (the SPEC's definition; ``≤ rank`` by Cauchy–Schwarz); entropy effective rank
    ``exp(−Σ p_i log p_i)``, ``p_i = s_i / Σ s_j`` (Roy & Vetterli; also ``≤ rank``).
    All are invariant under orthogonal rotations of the features or of the data points.

Stable Cost of Identity (:func:`cost_of_identity`)
    ``COI_γ(A) = tr(Aᵀ (K + γ I_N)⁻¹ A)``, ``K = σ(A) σ(A)ᵀ`` the ``N × N`` Gram matrix of
    ``σ(A) = (ReLU(A), 1) ∈ R^{N×(w+1)}``, ``γ = γ₀ ‖K‖_op``. Equivalently (push-through identity)
    ``COI_γ = min_W ‖W‖_F² + ‖A − σ(A) Wᵀ‖_F² / γ``: the squared norm of the cheapest layer that
    maps ``σ(A)`` back to ``A`` (the cost of representing the identity). Known values: for a
    non-negative ``A`` of rank ``r`` whose column space does not contain the all-ones vector
    (generic when ``N > r + 1``), ``COI_0 = r`` and ``COI_γ → r`` from below as ``γ → 0``. Lower
    bound (stable-rank bound, exact for every ``γ ≥ 0``, proved in the docstring of
    :func:`coi_lower_bound`): ``COI_γ ≥ ‖A‖_*² / (‖σ(A)‖_F² + min(N, w) γ)``.

    Two routes, both float64 Cholesky, never a pseudo-inverse:

    ``method="dual"`` (default; exact, ``O(N w²)``): thin QR ``σ(A) = Q R``; with ``Ã = Qᵀ A``
        and ``A_⊥ = A − Q Ã`` the part of ``A`` outside the column space of ``σ(A)``,
        ``COI_γ = tr(Ãᵀ (R Rᵀ + γ I)⁻¹ Ã) + ‖A_⊥‖_F² / γ`` — a ``(w+1)×(w+1)`` Cholesky solve and no
        cancellation (both terms are non-negative).
    ``method="gram"`` (the SPEC's ``N × N`` formula): Cholesky of ``K + γI``; when ``N`` exceeds
        ``max_samples`` a seeded uniform subsample of ``max_samples`` rows is used (``γ`` is
        then relative to the subsample's ``‖K‖_op``).

    The dual and the Gram routes agree to ~1e-10 relative (tested), as do both with a slow
    direct formula (``np.linalg.inv``). Because ``σ`` appends a constant, a representation on a
    ``k``-dimensional *affine* subspace that misses the origin (rank ``k + 1``) has ``COI → k + 1``,
    one on a ``k``-dimensional linear subspace ``COI → k`` (non-negative case; tested).

Kinetic energy, speed and the Hamiltonian (:func:`layer_measures`), per step ``ℓ = 1..L``
    ``V_ℓ = (A_ℓ − A_{ℓ−1}) / ρ_ℓ``;
    ``T_ℓ = (1/(2L̃)) tr(V_ℓᵀ (K_{ℓ−1} + γ I)⁻¹ V_ℓ)`` with ``K_{ℓ−1}, γ`` of ``A_{ℓ−1}``;
    relative speed ``c_ℓ = ‖A_ℓ − A_{ℓ−1}‖_F / (ρ_ℓ ‖A_ℓ‖_F)``;
    ``H_ℓ = T_ℓ − (L̃/2) COI_γ(A_{ℓ−1})`` (kinetic and potential energy with the same kernel
    ``K_{ℓ−1}``) and ``k̂_ℓ = −(2/L̃) H_ℓ = COI_γ(A_{ℓ−1}) − (2/L̃) T_ℓ ≤ COI_γ(A_{ℓ−1})``. Along an
    optimal path the Hamiltonian is conserved and, for large ``L̃``, ``k̂ → k*`` (the bottleneck
    rank) from below while ``min_ℓ COI → k*`` from above.
    For ``L̃ = 0`` (a plain ResNet) ``T``, ``H`` and ``k̂`` are NaN (the ``1/L̃`` scaling is undefined).

Summary numbers (:func:`bottleneck_summary`)
    ``min_coi``, ``k_hat_median`` (median of ``k̂_ℓ`` over the steps), the bottleneck extent (total depth
    ``Σ ρ_ℓ`` of the layers with ``COI_ℓ ≤ min COI + 1``: within one dimension of the narrowest
    layer), and the share of the kinetic action ``Σ ρ_ℓ T_ℓ`` spent in the first and the last
    quarter of the depth ``p``.

What a representation carries (:func:`direction_r2`)
    The R² of each centred principal direction of ``A`` fitted affinely by given regressors
    (e.g. a teacher's bottleneck coordinates ``z``, or ``[z, ‖z‖]``), on the training points and,
    with the training directions and fits frozen, on held-out points.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

__all__ = [
    "GAMMA0",
    "RANK_RTOL",
    "singular_values",
    "rank_measures",
    "feature_map",
    "gamma_of",
    "inverse_quadratic_trace",
    "cost_of_identity",
    "coi_lower_bound",
    "kinetic_energy",
    "layer_measures",
    "bottleneck_summary",
    "per_depth_loads",
    "direction_r2",
]

#: Default relative ridge ``γ₀`` of the stable COI and the kinetic energy (``γ = γ₀ ‖K‖_op``).
GAMMA0 = 1e-3
#: Default relative threshold of the numerical rank (``s_i > RANK_RTOL · s_1``).
RANK_RTOL = 1e-2


def _t64(a) -> torch.Tensor:
    t = a.detach() if isinstance(a, torch.Tensor) else torch.from_numpy(np.asarray(a))
    t = t.to(torch.float64)
    if t.dim() != 2 or t.shape[0] < 1 or t.shape[1] < 1:
        raise ValueError(f"expected a matrix (N, w), got shape {tuple(t.shape)}")
    if not bool(torch.isfinite(t).all()):
        raise ValueError("matrix contains non-finite values (NaN or inf)")
    return t


def _check_gamma0(gamma0):
    if not (isinstance(gamma0, (int, float, np.floating)) and math.isfinite(gamma0) and gamma0 > 0):
        raise ValueError(f"gamma0 must be finite and > 0, got {gamma0!r}")


def singular_values(a) -> np.ndarray:
    """Singular values of ``a`` ``(N, w)`` in descending order (float64, ``min(N, w)`` values)."""
    return torch.linalg.svdvals(_t64(a)).cpu().numpy()


def rank_measures(sv, rtol: float = RANK_RTOL) -> dict:
    """Numerical, stable and entropy-effective rank from singular values (module docstring).

    Returns ``{"numerical_rank", "stable_rank", "effective_rank"}``; all 0 for a zero matrix.
    """
    s = np.sort(np.asarray(sv, dtype=np.float64))[::-1]
    if s.ndim != 1 or np.any(~np.isfinite(s)) or np.any(s < 0):
        raise ValueError("singular values must be a 1-D array of finite non-negative numbers")
    if not 0 < rtol < 1:
        raise ValueError(f"rtol must be in (0, 1), got {rtol!r}")
    if s.size == 0 or s[0] == 0:
        return dict(numerical_rank=0, stable_rank=0.0, effective_rank=0.0)
    p = s / s.sum()
    nz = p[p > 0]
    return dict(numerical_rank=int(np.sum(s > rtol * s[0])),
                stable_rank=float(s.sum() ** 2 / np.sum(s**2)),
                effective_rank=float(np.exp(-np.sum(nz * np.log(nz)))))


def feature_map(a) -> torch.Tensor:
    """``σ(A) = (ReLU(A), 1)``, float64 ``(N, w + 1)``."""
    t = _t64(a)
    return torch.cat([torch.relu(t), torch.ones(t.shape[0], 1, dtype=t.dtype, device=t.device)], dim=1)


def gamma_of(s: torch.Tensor, gamma0: float) -> float:
    """``γ = γ₀ ‖K‖_op = γ₀ σ_max(S)²`` for ``K = S Sᵀ``."""
    _check_gamma0(gamma0)
    return float(gamma0 * torch.linalg.matrix_norm(s, ord=2) ** 2)


def _chol_solve_trace(m: torch.Tensor, v: torch.Tensor) -> float:
    """``tr(vᵀ m⁻¹ v)`` for symmetric positive definite ``m`` via Cholesky: ``‖L⁻¹ v‖_F²``."""
    chol, info = torch.linalg.cholesky_ex(m)
    if int(info) != 0:
        raise np.linalg.LinAlgError(f"Cholesky failed (matrix not positive definite at order {int(info)}); "
                                    "increase gamma0")
    z = torch.linalg.solve_triangular(chol, v, upper=False)
    return float((z * z).sum())


def inverse_quadratic_trace(s, v, gamma: float, *, method: str = "dual") -> float:
    """``tr(Vᵀ (S Sᵀ + γ I_N)⁻¹ V)`` for ``S`` ``(N, m)``, ``V`` ``(N, w)``, ``γ > 0`` (float64).

    ``method="dual"``: thin QR of ``S`` (module docstring), ``O(N m²)``, exact;
    ``method="gram"``: Cholesky of the ``N × N`` matrix ``S Sᵀ + γ I``.
    Invariant under ``V → V O`` for orthogonal ``O`` (the trace of a quadratic form).
    """
    s, v = _t64(s), _t64(v)
    if s.shape[0] != v.shape[0]:
        raise ValueError(f"S and V need the same number of rows, got {s.shape[0]} and {v.shape[0]}")
    if not (math.isfinite(gamma) and gamma > 0):
        raise ValueError(f"gamma must be finite and > 0, got {gamma!r}")
    n, m = s.shape
    eye = torch.eye
    if method == "gram":
        return _chol_solve_trace(s @ s.t() + gamma * eye(n, dtype=s.dtype, device=s.device), v)
    if method != "dual":
        raise ValueError(f"method must be 'dual' or 'gram', got {method!r}")
    if m >= n:  # no reduction: the N x N system is the smaller one
        return _chol_solve_trace(s @ s.t() + gamma * eye(n, dtype=s.dtype, device=s.device), v)
    q, r = torch.linalg.qr(s, mode="reduced")  # (N, m), (m, m)
    vt = q.t() @ v
    perp = v - q @ vt
    inner = _chol_solve_trace(r @ r.t() + gamma * eye(m, dtype=s.dtype, device=s.device), vt)
    return inner + float((perp * perp).sum()) / gamma


def _subsample(n: int, max_samples: int | None, seed: int) -> np.ndarray | None:
    if max_samples is None or n <= max_samples:
        return None
    if int(max_samples) < 2:
        raise ValueError(f"max_samples must be >= 2, got {max_samples!r}")
    return np.sort(np.random.default_rng(seed).choice(n, size=int(max_samples), replace=False))


def cost_of_identity(a, gamma0: float = GAMMA0, *, method: str = "dual", max_samples: int | None = None,
                     seed: int = 0) -> float:
    """Stable Cost of Identity ``COI_γ(A) = tr(Aᵀ (K + γI)⁻¹ A)``, ``γ = γ₀ ‖K‖_op`` (module docstring).

    Parameters
    ----------
    a : array or tensor ``(N, w)``
    gamma0 : float > 0
        Relative ridge (default :data:`GAMMA0`).
    method : {"dual", "gram"}
        Exact ``O(N w²)`` route or the ``N × N`` Cholesky.
    max_samples : int, optional
        Use a uniform subsample of this many rows (drawn with ``seed``) when ``N`` is larger.
    """
    t = _t64(a)
    idx = _subsample(t.shape[0], max_samples, seed)
    if idx is not None:
        t = t[torch.from_numpy(idx).to(t.device)]
    s = feature_map(t)
    return inverse_quadratic_trace(s, t, gamma_of(s, gamma0), method=method)


def coi_lower_bound(a, gamma0: float = GAMMA0) -> float:
    """Stable-rank lower bound ``‖A‖_*² / (‖σ(A)‖_F² + min(N, w) γ) ≤ COI_γ(A)``.

    Proof: for any ``W`` put ``E = A − σ(A) Wᵀ`` (rank ≤ ``m = min(N, w)``). Then
    ``‖A‖_* ≤ ‖σ(A)Wᵀ‖_* + ‖E‖_* ≤ ‖W‖_F ‖σ(A)‖_F + √(mγ) ‖E‖_F/√γ
    ≤ (‖W‖_F² + ‖E‖_F²/γ)^{1/2} (‖σ(A)‖_F² + mγ)^{1/2}`` (Hölder, then Cauchy–Schwarz); minimise
    over ``W``. For non-negative ``A`` with ``N ≪ ‖A‖_F²`` it is the stable rank ``‖A‖_*²/‖A‖_F²``.
    """
    t = _t64(a)
    s = feature_map(t)
    gamma = gamma_of(s, gamma0)
    nuc = float(torch.linalg.svdvals(t).sum())
    return nuc**2 / (float((s * s).sum()) + min(t.shape) * gamma)


def kinetic_energy(a_prev, a_next, rho: float, ltilde: float, gamma0: float = GAMMA0, *,
                   method: str = "dual") -> float:
    """``T = (1/(2L̃)) tr(Vᵀ (K_prev + γI)⁻¹ V)``, ``V = (A_next − A_prev)/ρ``, ``K_prev, γ`` of ``A_prev``."""
    if not (math.isfinite(rho) and rho > 0):
        raise ValueError(f"rho must be finite and > 0, got {rho!r}")
    if not (math.isfinite(ltilde) and ltilde > 0):
        raise ValueError(f"the kinetic energy needs ltilde > 0, got {ltilde!r}")
    p, q = _t64(a_prev), _t64(a_next)
    if p.shape != q.shape:
        raise ValueError(f"A_prev and A_next must have the same shape, got {tuple(p.shape)} and {tuple(q.shape)}")
    s = feature_map(p)
    return inverse_quadratic_trace(s, (q - p) / rho, gamma_of(s, gamma0), method=method) / (2.0 * ltilde)


def layer_measures(features: Sequence, rho, ltilde: float, *, weights: Sequence | None = None,
                   gamma0: float = GAMMA0, rtol: float = RANK_RTOL, method: str = "dual",
                   max_samples: int | None = None, seed: int = 0, n_singular: int | None = None) -> dict:
    """Every per-layer measure of SPEC §5.2 for one network.

    Parameters
    ----------
    features : ``L + 1`` arrays ``A_0..A_L`` ``(N, w)`` (the residual stream)
    rho : ``(L,)`` step sizes; ``ltilde`` : effective depth
    weights : optional ``L`` matrices ``W_ℓ`` ``(w, w + 1)`` (their spectra are reported)
    gamma0, rtol, method : see :func:`cost_of_identity`, :func:`rank_measures`
    max_samples, seed : subsample ``N`` (the same rows for every layer)
    n_singular : keep only the largest singular values (default all)

    Returns
    -------
    dict of lists (JSON-able): ``p`` (``L + 1`` depths), ``rho``; per representation
    (``L + 1``): ``coi``, ``coi_lower_bound``, ``numerical_rank``, ``stable_rank``,
    ``effective_rank``, ``sv`` (singular values of ``A_ℓ``, lists), ``sv_centered`` and
    ``numerical_rank_centered`` (of ``A_ℓ`` minus its mean row: an affine ``k``-dimensional
    representation has ``k`` there and ``k + 1`` in ``sv``); per step (``L``): ``kinetic``,
    ``speed``, ``hamiltonian``, ``k_hat``, and with ``weights`` ``sv_w`` and the weight ranks
    ``w_numerical_rank``, ``w_stable_rank``; plus ``gamma0`` and ``ltilde``.
    """
    rho = np.asarray(rho, dtype=np.float64)
    L = rho.size
    if len(features) != L + 1:
        raise ValueError(f"need L + 1 = {L + 1} feature arrays for {L} steps, got {len(features)}")
    if not (math.isfinite(ltilde) and ltilde >= 0):
        raise ValueError(f"ltilde must be finite and >= 0, got {ltilde!r}")
    feats = [_t64(f) for f in features]
    idx = _subsample(feats[0].shape[0], max_samples, seed)
    if idx is not None:
        sel = torch.from_numpy(idx)
        feats = [f[sel.to(f.device)] for f in feats]
    out: dict = {k: [] for k in ("coi", "coi_lower_bound", "numerical_rank", "stable_rank", "effective_rank", "sv",
                                 "sv_centered", "numerical_rank_centered", "kinetic", "speed", "hamiltonian",
                                 "k_hat")}
    grams = []
    for f in feats:
        s = feature_map(f)
        gamma = gamma_of(s, gamma0)
        grams.append((s, gamma))
        sv = torch.linalg.svdvals(f).cpu().numpy()
        ranks = rank_measures(sv, rtol)
        out["coi"].append(inverse_quadratic_trace(s, f, gamma, method=method))
        nuc = float(sv.sum())
        out["coi_lower_bound"].append(nuc**2 / (float((s * s).sum()) + min(f.shape) * gamma))
        for k in ("numerical_rank", "stable_rank", "effective_rank"):
            out[k].append(ranks[k])
        out["sv"].append((sv if n_singular is None else sv[:n_singular]).tolist())
        svc = torch.linalg.svdvals(f - f.mean(0, keepdim=True)).cpu().numpy()
        out["sv_centered"].append((svc if n_singular is None else svc[:n_singular]).tolist())
        out["numerical_rank_centered"].append(rank_measures(svc, rtol)["numerical_rank"])
    for ell in range(1, L + 1):
        prev, nxt = feats[ell - 1], feats[ell]
        diff = nxt - prev
        s, gamma = grams[ell - 1]
        norm_next = float(torch.linalg.norm(nxt))
        out["speed"].append(float(torch.linalg.norm(diff)) / float(rho[ell - 1] * norm_next)
                            if norm_next > 0 else math.nan)
        if ltilde > 0:
            t = inverse_quadratic_trace(s, diff / rho[ell - 1], gamma, method=method) / (2.0 * ltilde)
            h = t - 0.5 * ltilde * out["coi"][ell - 1]
            out["kinetic"].append(t)
            out["hamiltonian"].append(h)
            out["k_hat"].append(-2.0 * h / ltilde)
        else:
            for k in ("kinetic", "hamiltonian", "k_hat"):
                out[k].append(math.nan)
    if weights is not None:
        if len(weights) != L:
            raise ValueError(f"need L = {L} weight matrices, got {len(weights)}")
        out["sv_w"], out["w_numerical_rank"], out["w_stable_rank"] = [], [], []
        for w in weights:
            sv = singular_values(w)
            r = rank_measures(sv, rtol)
            out["sv_w"].append((sv if n_singular is None else sv[:n_singular]).tolist())
            out["w_numerical_rank"].append(r["numerical_rank"])
            out["w_stable_rank"].append(r["stable_rank"])
    out["p"] = np.concatenate([[0.0], np.cumsum(rho)]).tolist()
    out["rho"] = rho.tolist()
    out["gamma0"] = float(gamma0)
    out["ltilde"] = float(ltilde)
    return out


def bottleneck_summary(measures: dict, *, extent_tol: float = 1.0, end_fraction: float = 0.25) -> dict:
    """Summary numbers of :func:`layer_measures` (module docstring).

    Returns ``min_coi``, ``argmin_coi`` (layer index), ``k_hat_median`` (median over steps),
    ``k_hat_mid`` (median over the steps in the middle half of the depth), ``bottleneck_extent``
    (``Σ ρ_ℓ`` over representations ``ℓ ≥ 1`` with ``COI_ℓ ≤ min COI + extent_tol``, a fraction
    of the depth), ``kinetic_ends`` (share of ``Σ ρ_ℓ T_ℓ`` in steps whose midpoint lies in the
    first or last ``end_fraction`` of ``p``; 0.5 for uniform energy), ``mid_numerical_rank``
    (median numerical rank of the representations in the middle half), the same of the centred
    representations ``mid_numerical_rank_centered``, and ``min_numerical_rank``.
    """
    coi = np.asarray(measures["coi"], dtype=float)
    rho = np.asarray(measures["rho"], dtype=float)
    p = np.asarray(measures["p"], dtype=float)
    kin = np.asarray(measures["kinetic"], dtype=float)
    khat = np.asarray(measures["k_hat"], dtype=float)
    nr = np.asarray(measures["numerical_rank"], dtype=float)
    mid = (p[:-1] + p[1:]) / 2  # midpoints of the steps
    inner = coi[1:]  # representations reached by a step
    m = float(np.min(coi[1:-1])) if coi.size > 2 else float(np.min(coi))
    in_b = inner <= m + extent_tol
    action = rho * kin
    ends = (mid < end_fraction) | (mid > 1 - end_fraction)
    tot = np.nansum(action)
    mid_rep = (p > 0.25) & (p < 0.75)
    mid_step = (mid > 0.25) & (mid < 0.75)
    return dict(
        min_coi=m,
        argmin_coi=int(np.argmin(coi[1:-1]) + 1) if coi.size > 2 else int(np.argmin(coi)),
        k_hat_median=float(np.nanmedian(khat)) if np.isfinite(khat).any() else math.nan,
        k_hat_mid=float(np.nanmedian(khat[mid_step])) if np.isfinite(khat[mid_step]).any() else math.nan,
        bottleneck_extent=float(rho[in_b].sum()),
        kinetic_ends=float(np.nansum(action[ends]) / tot) if tot > 0 else math.nan,
        mid_numerical_rank=float(np.median(nr[mid_rep])) if mid_rep.any() else math.nan,
        mid_numerical_rank_centered=(float(np.median(np.asarray(measures["numerical_rank_centered"])[mid_rep]))
                                     if mid_rep.any() and "numerical_rank_centered" in measures else math.nan),
        min_numerical_rank=int(nr[1:-1].min()) if nr.size > 2 else int(nr.min()),
    )


def per_depth_loads(curve, rho) -> np.ndarray:
    """Loads per unit depth ``(log D_{ℓ−1} − log D_ℓ) / ρ_ℓ``, ``ℓ = 1..L`` (so non-uniform meshes compare)."""
    c = np.asarray(curve, dtype=np.float64)
    rho = np.asarray(rho, dtype=np.float64)
    if c.shape != (rho.size + 1,):
        raise ValueError(f"curve must have L + 1 = {rho.size + 1} values, got shape {c.shape}")
    if np.any(rho <= 0):
        raise ValueError(f"rho must be > 0, got {rho.tolist()}")
    return -np.diff(c) / rho


def _design(x, n: int, what: str) -> np.ndarray:
    x = np.asarray(x.detach().cpu() if isinstance(x, torch.Tensor) else x, dtype=np.float64)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2 or x.shape[0] != n:
        raise ValueError(f"{what} must have {n} rows (one per data point), got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{what} contains non-finite values (NaN or inf)")
    return np.hstack([x, np.ones((n, 1))])


def direction_r2(a, regressors, *, a_test=None, regressors_test=None, n_directions: int | None = None) -> dict:
    """How much of each centred principal direction of ``A`` is an affine function of ``regressors``.

    With ``A − 1 ā = U S Vᵀ`` (``ā`` the mean row) the ``i``-th principal score is
    ``t_i = (A − 1ā) v_i`` (variance ``s_i²/N``). Each score is least-squares fitted by an affine
    function of the regressors ``X`` ``(N, m)``: ``t̂_i = [X, 1] β_i``, and
    ``R²_i = 1 − ‖t_i − t̂_i‖² / ‖t_i‖²`` (the scores are centred). ``r2_total = Σ s_i² R²_i / Σ s_i²``
    (over all directions) is the share of the centred variance of ``A`` that is affine in ``X``.

    With ``a_test`` and ``regressors_test`` the training mean, directions ``v_i`` and coefficients
    ``β_i`` are applied unchanged to held-out points: ``R²_test,i = 1 − ‖t_i' − t̂_i'‖² / ‖t_i' −
    mean t_i'‖²`` with ``t_i' = (A' − 1ā) v_i`` — whether the direction and its dependence on ``X``
    generalise (``≤ 1``, negative when the fit is worse than the test mean).

    Parameters
    ----------
    a : array or tensor ``(N, w)``
        Representation (rows = data points).
    regressors : array ``(N, m)`` (or ``(N,)``)
        E.g. the teacher's bottleneck coordinates ``z``, or nonlinear features of them.
    a_test, regressors_test : arrays ``(N', w)``, ``(N', m)``, optional
    n_directions : int, optional
        Report only the first directions (default all ``min(N, w)``; ``r2_total`` uses all).

    Returns
    -------
    dict with ``sv_centered`` (``s_i``), ``r2`` (``R²_i``), ``r2_total``, and with test data
    ``r2_test``, ``r2_total_test`` (the same share on the test points), ``sv_test`` (the test
    scores' norms ``‖t_i'‖·√(N/N')``, comparable with ``s_i``).
    """
    t = _t64(a).cpu().numpy()
    n = t.shape[0]
    xd = _design(regressors, n, "regressors")
    if xd.shape[1] > n:
        raise ValueError(f"{xd.shape[1] - 1} regressors and a constant for {n} points: the fit is underdetermined")
    mean = t.mean(0)
    u, s, vt = np.linalg.svd(t - mean, full_matrices=False)
    scores = u * s  # (N, r): t_i as columns
    beta, *_ = np.linalg.lstsq(xd, scores, rcond=None)
    res = scores - xd @ beta
    tot = s**2
    with np.errstate(invalid="ignore", divide="ignore"):
        r2 = np.where(tot > 0, 1.0 - np.sum(res**2, 0) / tot, np.nan)
    k = len(s) if n_directions is None else min(int(n_directions), len(s))
    out = dict(sv_centered=s[:k].tolist(), r2=r2[:k].tolist(),
               r2_total=float(1.0 - np.sum(res**2) / np.sum(tot)) if np.sum(tot) > 0 else math.nan)
    if (a_test is None) != (regressors_test is None):
        raise ValueError("give both a_test and regressors_test, or neither")
    if a_test is not None:
        tt = _t64(a_test).cpu().numpy()
        if tt.shape[1] != t.shape[1]:
            raise ValueError(f"a_test must have {t.shape[1]} columns, got {tt.shape[1]}")
        xt = _design(regressors_test, tt.shape[0], "regressors_test")
        if xt.shape[1] != xd.shape[1]:
            raise ValueError(f"regressors_test must have {xd.shape[1] - 1} columns, got {xt.shape[1] - 1}")
        st = (tt - mean) @ vt.T
        rt = st - xt @ beta
        dev = st - st.mean(0)
        tot_t = np.sum(dev**2, 0)
        with np.errstate(invalid="ignore", divide="ignore"):
            r2t = np.where(tot_t > 0, 1.0 - np.sum(rt**2, 0) / tot_t, np.nan)
        out.update(r2_test=r2t[:k].tolist(),
                   r2_total_test=float(1.0 - np.sum(rt**2) / np.sum(tot_t)) if np.sum(tot_t) > 0 else math.nan,
                   sv_test=(np.sqrt(np.sum(st**2, 0) * n / tt.shape[0]))[:k].tolist())
    return out
