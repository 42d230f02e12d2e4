"""The result of a training run: :class:`History` (per-probe curves, losses, accuracies, status).

Written by :func:`nets.train` / :func:`nets.train_ensemble` (one per network) and by
:class:`nets.LoadCurveRecorder` (a run of the user's own loop); :meth:`History.to_record` flattens
it into one JSON-able store record.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from nets.bottleneck import bottleneck_summary, per_depth_loads
from nets.config import TrainConfig
from nets.probes import curve_summary

__all__ = ["History"]


@dataclass
class History:
    """Result of one run.

    Attributes
    ----------
    config : TrainConfig
    status : {"completed", "early_stopped", "diverged"}
    epochs_run : int
        Epochs started (the diverging epoch counts).
    probe_epochs : int array ``(n_probes,)``
        Epoch of each probe (0 = before training).
    trajectory : float64 ``(n_probes, depth + 1)``
        ``log D_l`` at each probe; the last row is the final curve. NaN where the features were
        not finite (a diverged net) or the class means coincided.
    trace_ratio_trajectory : float64 ``(n_probes, depth + 1)``
        ``log tr Σ_w − log tr Σ_b`` at each probe.
    train_loss : float64 ``(epochs_run,)``
        Mean (noisy-batch) training loss of every epoch.
    test_accuracy : float
        Fraction of the test set classified correctly at the end (NaN if the logits are not
        finite).
    probe_accuracy : float64 ``(n_probes,)`` or None
        Test accuracy at each probe, when ``config.probe_accuracy``.
    wall_time : float
        Seconds; for an ensemble member, the ensemble's wall time divided by its size.
    ensemble_size : int
        Number of networks trained together (1 for :func:`train`).
    n_classes : int
    state_dict : dict of tensors
        Final weights in the single-model layout (not part of :meth:`to_record`).
    task : ``"classification"`` or ``"regression"``
    test_loss : float
        Test loss (MSE for regression; cross-entropy / MSE of the logits for classification)
        — leaky ResNets and regression only, else NaN.
    rho : float64 ``(L,)`` or None
        Final layer step sizes (leaky ResNet).
    rho_trajectory : list of ``(epoch, rho list)`` or None
        Every mesh the network trained on (the adaptive scheme re-sets it).
    bottleneck : dict or None
        :func:`nets.bottleneck.layer_measures` at the final probe (leaky ResNet).
    bottleneck_trajectory : list of dict or None
        ``{"epoch", "coi", "k_hat", "kinetic", "speed"}`` at every probe (``probe_bottleneck``).
    meta : dict or None
        A run recorded outside :func:`train` (:class:`nets.LoadCurveRecorder`; then ``config`` is
        None): what describes it (model class, layer names, the user's metadata). Written by
        :meth:`to_record` in place of the config fields.
    """

    config: TrainConfig | None
    status: str
    epochs_run: int
    probe_epochs: np.ndarray
    trajectory: np.ndarray
    trace_ratio_trajectory: np.ndarray
    train_loss: np.ndarray
    test_accuracy: float
    probe_accuracy: np.ndarray | None
    wall_time: float
    ensemble_size: int
    n_classes: int
    state_dict: dict = field(default_factory=dict, repr=False)
    task: str = "classification"
    test_loss: float = float("nan")
    rho: np.ndarray | None = None
    rho_trajectory: list | None = None
    bottleneck: dict | None = None
    bottleneck_trajectory: list | None = None
    meta: dict | None = None

    @property
    def final_curve(self) -> np.ndarray:
        """``log D_l``, ``l = 0..depth``, at the end of training."""
        return self.trajectory[-1]

    def summary(self) -> dict:
        """Shape numbers of the final curve (:func:`nets.probes.curve_summary`)."""
        return curve_summary(self.final_curve)

    def to_record(self) -> dict:
        """One flat dict of JSON-able values: every config field (or the ``meta`` of an outside
        run), the status, the final curve
        and its shape numbers (loads, linearity, curvature, normalized_curvature, regime), the
        trajectories as lists of lists, probe epochs, losses, accuracies and wall time."""
        rec = self.config.to_dict() if self.config is not None else {}
        if self.meta is not None:
            rec.update(self.meta)
        s = self.summary()
        rec.update(
            status=self.status,
            epochs_run=int(self.epochs_run),
            test_accuracy=float(self.test_accuracy),
            curve=s["curve"],
            loads=s["loads"],
            linearity=s["linearity"],
            curvature=s["curvature"],
            normalized_curvature=s["normalized_curvature"],
            regime=s["regime"],
            trace_ratio_curve=self.trace_ratio_trajectory[-1].tolist(),
            trajectory=self.trajectory.tolist(),
            trace_ratio_trajectory=self.trace_ratio_trajectory.tolist(),
            probe_epochs=[int(e) for e in self.probe_epochs],
            probe_accuracy=None if self.probe_accuracy is None else self.probe_accuracy.tolist(),
            train_loss=self.train_loss.tolist(),
            wall_time=float(self.wall_time),
            ensemble_size=int(self.ensemble_size),
            n_classes=int(self.n_classes),
        )
        if self.task != "classification" or self.rho is not None:
            rec.update(task=self.task, test_loss=float(self.test_loss))
        if self.rho is not None:
            rec.update(rho=self.rho.tolist(), rho_trajectory=self.rho_trajectory,
                       loads_per_depth=per_depth_loads(self.final_curve, self.rho).tolist())
        if self.bottleneck is not None:
            rec.update(bottleneck=self.bottleneck, **bottleneck_summary(self.bottleneck))
            rec.update(bottleneck_trajectory=self.bottleneck_trajectory)
        return rec
