"""Diagnostics of predictive uncertainty and sparsity, from plain NumPy arrays.

:mod:`vdppl.diagnostics.metrics` computes accuracy, NLL, Brier score, calibration errors
(ECE, MCE), the entropy decomposition into aleatoric and epistemic parts, OOD-detection
AUROC, RMSE, Gaussian NLL, interval coverage, PIT and LOO-PIT; :mod:`vdppl.diagnostics.plots`
draws reliability diagrams, entropy histograms, log alpha histograms, sparsity bars,
weight-mask images and training curves (matplotlib is imported only when a plot is
drawn). Neither imports torch or JAX.
"""

from vdppl.diagnostics.metrics import (
    EPS,
    CalibrationErrors,
    ReliabilityBins,
    accuracy,
    auroc,
    brier,
    calibration_errors,
    classification_metrics,
    entropy_decomposition,
    gaussian_interval_coverage,
    gaussian_nll,
    interval_coverage,
    loo_pit,
    nll,
    pit,
    regression_metrics,
    reliability_bins,
    rmse,
)
from vdppl.diagnostics.plots import (
    plot_entropy_histograms,
    plot_log_alpha,
    plot_reliability,
    plot_sparsity,
    plot_training_curves,
    plot_weight_mask,
)

__all__ = [
    "EPS",
    "CalibrationErrors",
    "ReliabilityBins",
    "accuracy",
    "auroc",
    "brier",
    "calibration_errors",
    "classification_metrics",
    "entropy_decomposition",
    "gaussian_interval_coverage",
    "gaussian_nll",
    "interval_coverage",
    "loo_pit",
    "nll",
    "pit",
    "plot_entropy_histograms",
    "plot_log_alpha",
    "plot_reliability",
    "plot_sparsity",
    "plot_training_curves",
    "plot_weight_mask",
    "regression_metrics",
    "reliability_bins",
    "rmse",
]
