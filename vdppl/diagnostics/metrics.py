"""Predictive metrics from plain NumPy arrays (no backend: neither torch nor JAX).

Classification functions take predictive probabilities ``probs`` of shape ``(n, K)``
(usually the mean over posterior draws, ``prob_draws.mean(0)``) and integer labels ``y``
of shape ``(n,)``; :func:`entropy_decomposition` and :func:`classification_metrics` take
the draws themselves, ``prob_draws`` of shape ``(draws, n, K)``. Regression functions take
predictive draws ``draws`` of shape ``(draws, n)`` or their summaries ``mean``/``std`` of
shape ``(n,)``, and targets ``y`` of shape ``(n,)``. Logarithms are natural (nats).

Every function validates its input (:mod:`vdppl.diagnostics._checks`) and raises a
``ValueError`` that says what to fix.

[1] Guo, Pleiss, Sun, Weinberger (2017) "On Calibration of Modern Neural Networks"
    arXiv:1706.04599 (reliability diagrams, ECE, MCE).
[2] Brier (1950) "Verification of forecasts expressed in terms of probability",
    Monthly Weather Review 78(1).
[3] Depeweg, Hernandez-Lobato, Doshi-Velez, Udluft (2018) "Decomposition of Uncertainty in
    Bayesian Deep Learning for Efficient and Risk-sensitive Learning" arXiv:1710.07283.
[4] Mann, Whitney (1947) "On a test of whether one of two random variables is
    stochastically larger than the other", Ann. Math. Statist. 18(1).
[5] Gneiting, Balabdaoui, Raftery (2007) "Probabilistic forecasts, calibration and
    sharpness", JRSS B 69(2) (PIT, interval coverage).
[6] Vehtari, Gelman, Gabry (2017) "Practical Bayesian model evaluation using leave-one-out
    cross-validation and WAIC", Statistics and Computing 27, arXiv:1507.04544 (PSIS-LOO).
[7] Gabry, Simpson, Vehtari, Betancourt, Gelman (2019) "Visualization in Bayesian
    workflow", JRSS A 182(2), arXiv:1709.01449 (LOO-PIT).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from vdppl.diagnostics import _checks

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
    "regression_metrics",
    "reliability_bins",
    "rmse",
]

#: Floor on the probability of the true class in :func:`nll`: a prediction that gives the
#: true class probability 0 costs ``-log(1e-12) ~= 27.6`` nats instead of ``inf``.
EPS = 1e-12

_PROBS = ("n", "K")
_PROB_DRAWS = ("draws", "n", "K")
_DRAWS = ("draws", "n")
_N = ("n",)


# ----------------------------------------------------------------------------- helpers
def _classification(probs: npt.ArrayLike, y: npt.ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Validated ``(probs (n, K), labels (n,))``."""
    probs = _checks.check_probs(probs, "probs", _PROBS)
    labels = _checks.as_array(y, "y", _N)
    _checks.check_examples(probs, "probs", 0, labels)
    return probs, _checks.check_labels(labels, probs.shape[1])


def _prob_draws(prob_draws: npt.ArrayLike) -> np.ndarray:
    return _checks.check_probs(prob_draws, "prob_draws", _PROB_DRAWS)


def _regression_draws(draws: npt.ArrayLike, y: npt.ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Validated ``(draws (draws, n), y (n,))``."""
    draws = _checks.as_array(draws, "draws", _DRAWS)
    y = _checks.as_array(y, "y", _N)
    _checks.check_examples(draws, "draws", 1, y)
    return draws, y


def _entropy(p: np.ndarray) -> np.ndarray:
    """``-sum_k p_k log p_k`` over the last axis, with ``0 log 0 = 0``."""
    return -np.sum(p * np.log(np.where(p > 0, p, 1.0)), axis=-1)


def _midranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks of ``values``; tied values share the mean of their ranks (O(n log n))."""
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    last = np.cumsum(counts)  # rank of the last member of each group of equal values
    return (last - (counts - 1) / 2.0)[inverse]


# ---------------------------------------------------------------------- classification
def accuracy(probs: npt.ArrayLike, y: npt.ArrayLike) -> float:
    """Share of examples whose most probable class is the label.

    ``accuracy = mean(argmax(probs, axis=1) == y)``; a tie goes to the lowest class index.

    >>> accuracy([[0.8, 0.2], [0.4, 0.6], [0.5, 0.5]], [0, 0, 0])
    0.6666666666666666
    """
    probs, y = _classification(probs, y)
    return float(np.mean(probs.argmax(axis=1) == y))


def nll(probs: npt.ArrayLike, y: npt.ArrayLike) -> float:
    """Mean negative log predictive probability of the true class, in nats.

    ``nll = -mean(log(maximum(probs[arange(n), y], EPS)))`` with ``EPS = 1e-12``
    (:data:`EPS`): the probability of the true class is floored at ``EPS`` so that a
    confident mistake costs at most ``-log(EPS) ~= 27.6`` nats instead of ``inf``.

    >>> round(nll([[0.5, 0.5], [0.9, 0.1]], [1, 0]), 6)  # -(log 0.5 + log 0.9) / 2
    0.399254
    """
    probs, y = _classification(probs, y)
    true_class = probs[np.arange(len(y)), y]
    return float(-np.mean(np.log(np.maximum(true_class, EPS))))


def brier(probs: npt.ArrayLike, y: npt.ArrayLike) -> float:
    """Multi-class Brier score [2]: squared distance to the one-hot label, in ``[0, 2]``.

    ``brier = mean(sum((probs - one_hot(y, K))**2, axis=1))``. A constant uniform predictor
    scores ``1 - 1/K``.

    >>> round(brier([[0.25, 0.25, 0.25, 0.25]], [2]), 12)  # 1 - 1/4
    0.75
    """
    probs, y = _classification(probs, y)
    one_hot = np.eye(probs.shape[1])[y]
    return float(np.mean(np.sum((probs - one_hot) ** 2, axis=1)))


class CalibrationErrors(NamedTuple):
    """Expected and maximum calibration error (:func:`calibration_errors`)."""

    ece: float
    mce: float


@dataclass(frozen=True)
class ReliabilityBins:
    """Per-bin summaries of a reliability diagram (:func:`reliability_bins`).

    ``count[b]`` examples fall in bin ``b``; ``confidence[b]`` is their mean confidence and
    ``accuracy[b]`` their share of correct predictions (both ``nan`` for an empty bin);
    ``edges`` has ``n_bins + 1`` entries.
    """

    count: np.ndarray
    confidence: np.ndarray
    accuracy: np.ndarray
    edges: np.ndarray

    def calibration_errors(self) -> CalibrationErrors:
        """ECE and MCE of these bins (the formulas of :func:`calibration_errors`)."""
        filled = self.count > 0
        gaps = np.abs(self.accuracy[filled] - self.confidence[filled])
        weights = self.count[filled] / self.count.sum()
        return CalibrationErrors(ece=float(np.sum(weights * gaps)), mce=float(gaps.max()))


def reliability_bins(probs: npt.ArrayLike, y: npt.ArrayLike, n_bins: int = 15) -> ReliabilityBins:
    """Bin examples by confidence ``max_k p_k`` and compare accuracy with confidence [1].

    The bins are equal-width on ``[0, 1]``, closed on the right, and the first one is also
    closed on the left, as in [1]::

        edges = linspace(0, 1, n_bins + 1)
        bin 0 = [edges[0], edges[1]],  bin b = (edges[b], edges[b + 1]]  for b >= 1
        confidence_i = max(probs[i]);  correct_i = argmax(probs[i]) == y[i]
        count[b] = |B_b|;  confidence[b] = mean(confidence_i for i in B_b)
        accuracy[b] = mean(correct_i for i in B_b)          (nan when B_b is empty)

    So a confidence of exactly 0.5 with ``n_bins=2`` lands in the first bin, and 1.0 in the
    last.

    >>> bins = reliability_bins([[0.9, 0.1], [0.5, 0.5], [0.2, 0.8]], [0, 1, 1], n_bins=2)
    >>> bins.count.tolist(), bins.accuracy.tolist()
    ([1, 2], [0.0, 1.0])
    """
    probs, y = _classification(probs, y)
    n_bins = _checks.check_positive_int(n_bins, "n_bins")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == y).astype(np.float64)
    # searchsorted(side="left") - 1 puts edges[b] < c <= edges[b + 1] in bin b; the clip
    # sends c == 0 to bin 0 (closing it on the left).
    index = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, n_bins - 1)
    count = np.bincount(index, minlength=n_bins)

    def bin_mean(values: np.ndarray) -> np.ndarray:
        sums = np.bincount(index, weights=values, minlength=n_bins)
        return np.divide(sums, count, out=np.full(n_bins, np.nan), where=count > 0)

    return ReliabilityBins(count, bin_mean(confidence), bin_mean(correct), edges)


def calibration_errors(
    probs: npt.ArrayLike, y: npt.ArrayLike, n_bins: int = 15
) -> CalibrationErrors:
    """Expected (ECE) and maximum (MCE) calibration error over confidence bins [1].

    With the bins of :func:`reliability_bins`::

        ece = sum(count[b] / n * abs(accuracy[b] - confidence[b]) for b in bins)
        mce = max(abs(accuracy[b] - confidence[b]) for b in bins if count[b] > 0)

    A calibrated predictor's ECE is not 0 on a finite sample: each bin's accuracy carries
    binomial noise of order ``sqrt(conf * (1 - conf) / count)``.

    >>> ece, mce = calibration_errors([[0.9, 0.1], [0.5, 0.5], [0.2, 0.8]], [0, 1, 1], n_bins=2)
    >>> round(ece, 6), round(mce, 6)  # bins: {0.5: wrong}, {0.9, 0.8: right}
    (0.266667, 0.5)
    """
    return reliability_bins(probs, y, n_bins).calibration_errors()


def entropy_decomposition(prob_draws: npt.ArrayLike) -> dict[str, np.ndarray]:
    """Split each example's predictive entropy into aleatoric and epistemic parts [3].

    With ``H(p) = -sum_k p_k log p_k`` (nats, ``0 log 0 = 0``) and ``prob_draws`` of shape
    ``(draws, n, K)``::

        total     = H(mean(prob_draws, axis=0))          # predictive entropy
        aleatoric = mean(H(prob_draws), axis=0)          # expected entropy
        epistemic = maximum(total - aleatoric, 0)        # mutual information I(y; w)

    ``total >= aleatoric`` exactly (Jensen); the ``maximum`` only removes negative
    rounding error of order 1e-16 when the draws agree.

    Returns ``{"total": (n,), "aleatoric": (n,), "epistemic": (n,)}``.

    >>> d = entropy_decomposition([[[1.0, 0.0]], [[0.0, 1.0]]])  # two confident draws
    >>> [round(float(d[k][0]), 6) for k in ("total", "aleatoric", "epistemic")]
    [0.693147, 0.0, 0.693147]
    """
    prob_draws = _prob_draws(prob_draws)
    total = _entropy(prob_draws.mean(axis=0))
    aleatoric = _entropy(prob_draws).mean(axis=0)
    return {"total": total, "aleatoric": aleatoric, "epistemic": np.maximum(total - aleatoric, 0)}


def auroc(scores_in: npt.ArrayLike, scores_out: npt.ArrayLike) -> float:
    """AUROC of telling out-of-distribution inputs from in-distribution ones by a score.

    Higher scores should mean "more likely OOD" (e.g. predictive entropy or mutual
    information). The area is the Mann-Whitney statistic [4] with ties counted one half::

        auroc = mean over pairs (i, o) of  1[s_out[o] > s_in[i]] + 0.5 * 1[s_out[o] == s_in[i]]
              = (sum(ranks[out]) - n_out * (n_out + 1) / 2) / (n_in * n_out)

    where ``ranks`` are the 1-based ranks of the pooled scores, ties sharing their mean
    rank; sorting makes it ``O(n log n)``. 1 separates perfectly, 0.5 is chance.

    >>> auroc([0.1, 0.2, 0.3], [0.3, 0.9])  # pairs: 5 wins, 1 tie out of 6
    0.9166666666666666
    """
    scores_in = _checks.as_array(scores_in, "scores_in", ("n_in",))
    scores_out = _checks.as_array(scores_out, "scores_out", ("n_out",))
    n_in, n_out = len(scores_in), len(scores_out)
    ranks = _midranks(np.concatenate([scores_in, scores_out]))
    u_out = ranks[n_in:].sum() - n_out * (n_out + 1) / 2.0
    return float(u_out / (n_in * n_out))


def classification_metrics(
    prob_draws: npt.ArrayLike, y: npt.ArrayLike, n_bins: int = 15
) -> dict[str, float]:
    """All classification metrics of predictive draws ``(draws, n, K)`` at once.

    ``probs = mean(prob_draws, axis=0)`` feeds :func:`accuracy`, :func:`nll`,
    :func:`brier` and :func:`calibration_errors`; :func:`entropy_decomposition` gives the
    entropies, averaged over examples. For a point prediction pass ``probs[None]``.

    Returns ``{"accuracy", "nll", "brier", "ece", "mce", "entropy_total",
    "entropy_aleatoric", "entropy_epistemic"}`` as floats.
    """
    prob_draws = _prob_draws(prob_draws)
    probs = prob_draws.mean(axis=0)
    ece, mce = calibration_errors(probs, y, n_bins)
    result = {
        "accuracy": accuracy(probs, y),
        "nll": nll(probs, y),
        "brier": brier(probs, y),
        "ece": ece,
        "mce": mce,
    }
    for part, values in entropy_decomposition(prob_draws).items():
        result[f"entropy_{part}"] = float(values.mean())
    return result


# -------------------------------------------------------------------------- regression
def rmse(mean: npt.ArrayLike, y: npt.ArrayLike) -> float:
    """Root mean squared error of point predictions, ``sqrt(mean((mean - y)**2))``.

    >>> rmse([1.0, 2.0, 3.0], [1.0, 2.0, 5.0])  # sqrt(4 / 3)
    1.1547005383792515
    """
    mean = _checks.as_array(mean, "mean", _N)
    y = _checks.as_array(y, "y", _N)
    _checks.check_same_shape(mean=mean, y=y)
    return float(np.sqrt(np.mean((mean - y) ** 2)))


def gaussian_nll(mean: npt.ArrayLike, std: npt.ArrayLike, y: npt.ArrayLike) -> float:
    """Mean negative log density of ``y`` under ``Normal(mean, std)``, in nats.

    ``gaussian_nll = mean(0.5 * log(2 * pi * std**2) + (y - mean)**2 / (2 * std**2))``

    >>> round(gaussian_nll([0.0], [1.0], [0.0]), 6)  # 0.5 * log(2 pi)
    0.918939
    """
    mean = _checks.as_array(mean, "mean", _N)
    std = _checks.as_array(std, "std", _N)
    y = _checks.as_array(y, "y", _N)
    _checks.check_same_shape(mean=mean, std=std, y=y)
    _checks.check_positive(std, "std")
    variance = std**2
    return float(np.mean(0.5 * np.log(2 * np.pi * variance) + (y - mean) ** 2 / (2 * variance)))


def gaussian_interval_coverage(
    mean: npt.ArrayLike,
    std: npt.ArrayLike,
    y: npt.ArrayLike,
    levels: Iterable[float] = (0.5, 0.9, 0.95),
) -> dict[float, float]:
    """Share of targets inside the central interval of ``Normal(mean, std)`` at each level
    (the closed-form twin of :func:`interval_coverage`, for a point prediction with a
    known observation noise)::

        coverage[l] = mean(|y - mean| <= z_l * std),   z_l = Phi^-1((1 + l) / 2)

    >>> gaussian_interval_coverage([0.0, 0.0], [1.0, 1.0], [0.5, 3.0], levels=(0.9,))
    {0.9: 0.5}
    """
    from statistics import NormalDist

    mean = _checks.as_array(mean, "mean", _N)
    std = _checks.as_array(std, "std", _N)
    y = _checks.as_array(y, "y", _N)
    _checks.check_same_shape(mean=mean, std=std, y=y)
    _checks.check_positive(std, "std")
    coverage = {}
    for level in _checks.check_levels(levels):
        z = NormalDist().inv_cdf((1 + level) / 2)
        coverage[level] = float(np.mean(np.abs(y - mean) <= z * std))
    return coverage


def interval_coverage(
    draws: npt.ArrayLike, y: npt.ArrayLike, levels: Iterable[float] = (0.5, 0.9, 0.95)
) -> dict[float, float]:
    """Share of targets inside the central predictive interval at each level [5].

    The interval of example ``i`` at level ``l`` runs between empirical quantiles of its
    draws (NumPy's default linear interpolation), endpoints included::

        lo, hi = quantile(draws[:, i], [(1 - l) / 2, (1 + l) / 2])
        coverage[l] = mean(lo <= y[i] <= hi over i)

    A calibrated predictive covers close to ``l``.

    >>> interval_coverage([[0.0, 0.0], [4.0, 4.0]], [1.0, 5.0], levels=(0.5,))  # [1, 3]
    {0.5: 0.5}
    """
    draws, y = _regression_draws(draws, y)
    coverage = {}
    for level in _checks.check_levels(levels):
        lo, hi = np.quantile(draws, [(1 - level) / 2, (1 + level) / 2], axis=0)
        coverage[level] = float(np.mean((lo <= y) & (y <= hi)))
    return coverage


def pit(draws: npt.ArrayLike, y: npt.ArrayLike) -> np.ndarray:
    """Probability integral transform of each target under its predictive draws [5].

    The share of draws below ``y``, with ties at ``y`` counted one half (mid-rank, so the
    result is deterministic)::

        pit[i] = mean(draws[:, i] < y[i]) + 0.5 * mean(draws[:, i] == y[i])

    For continuous draws ties have probability 0 and this is ``mean(draws[:, i] <= y[i])``.
    Calibrated draws give PIT values uniform on ``[0, 1]`` (up to steps of ``1 / draws``).

    >>> pit([[1.0], [2.0], [3.0], [4.0]], [2.0]).tolist()  # (1 + 0.5) / 4
    [0.375]
    """
    draws, y = _regression_draws(draws, y)
    return np.mean(draws < y, axis=0) + 0.5 * np.mean(draws == y, axis=0)


def loo_pit(draws: npt.ArrayLike, y: npt.ArrayLike, log_lik: npt.ArrayLike) -> np.ndarray:
    """Leave-one-out PIT: each target's PIT under its PSIS-LOO predictive [6, 7].

    :func:`pit` scores each target against draws from a posterior that was fitted to it,
    which flatters the model; LOO-PIT reweights the draws by Pareto-smoothed importance
    weights ``w[s, i] ∝ 1 / p(y_i | w_s)`` so that they stand for the posterior without
    example ``i``. With ``log_lik[s, i] = log p(y_i | w_s)`` (the ``log_likelihood`` group)
    and ``draws[s, i]`` the predictive draw of the same posterior draw ``s``::

        log_w = arviz.psislw(-log_lik.T, reff=1.0)[0].T     # normalised over draws
        loo_pit[i] = min(1, sum_s exp(log_w[s, i]) * (draws[s, i] <= y[i]))

    which is :func:`arviz.loo_pit` on these arrays (``reff = 1``: SVI draws are
    independent). Ties count fully (``<=``), unlike :func:`pit`'s mid-rank. Calibrated
    predictions give values uniform on ``[0, 1]``. Warns
    :class:`~vdppl.diagnostics.loo.UnreliableLOOWarning` when some Pareto ``k > 0.7``
    (the smoothed weights, and so those values, are unreliable).

    >>> import warnings
    >>> draws, log_lik = [[1.0], [2.0], [3.0], [4.0]], np.log([[1.0], [2.0], [4.0], [8.0]])
    >>> with warnings.catch_warnings():  # 4 draws are too few to fit a tail: k = inf, it warns
    ...     warnings.simplefilter("ignore")
    ...     value = loo_pit(draws, [2.5], log_lik)
    >>> round(float(value[0]), 12)  # w ∝ 1, 1/2, 1/4, 1/8; (1 + 1/2) / (1 + 1/2 + 1/4 + 1/8)
    0.8
    """
    import warnings

    import arviz as az

    from vdppl.diagnostics.loo import warn_if_unreliable

    draws, y = _regression_draws(draws, y)
    log_lik = _checks.as_array(log_lik, "log_lik", _DRAWS)
    _checks.check_same_shape(draws=draws, log_lik=log_lik)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # replaced by warn_if_unreliable's, which says more
        log_w, k = az.psislw(-log_lik.T, reff=1.0)
        values = az.loo_pit(y=y, y_hat=draws.T, log_weights=log_w)
    warn_if_unreliable(np.asarray(k), "loo_pit", "Check calibration with pit on held-out data")
    return np.asarray(values, dtype=np.float64)


def regression_metrics(
    draws: npt.ArrayLike, y: npt.ArrayLike, levels: Iterable[float] = (0.5, 0.9, 0.95)
) -> dict[str, float]:
    """All regression metrics of predictive draws ``(draws, n)`` at once.

    ``mean = draws.mean(0)`` and ``std = draws.std(0, ddof=1)`` feed :func:`rmse` and
    :func:`gaussian_nll`; :func:`interval_coverage` uses the draws themselves.
    ``gaussian_nll`` is ``nan`` when it is undefined: a single draw (a point prediction,
    ``draws[None]``) or an example whose draws are all equal.

    Returns ``{"rmse", "gaussian_nll", "coverage_0.5", "coverage_0.9", ...}`` (one
    ``coverage_{level:g}`` per level) as floats.
    """
    draws, y = _regression_draws(draws, y)
    mean = draws.mean(axis=0)
    result = {"rmse": rmse(mean, y), "gaussian_nll": float("nan")}
    if len(draws) > 1:
        std = draws.std(axis=0, ddof=1)
        if (std > 0).all():
            result["gaussian_nll"] = gaussian_nll(mean, std, y)
    for level, share in interval_coverage(draws, y, levels).items():
        result[f"coverage_{level:g}"] = share
    return result
