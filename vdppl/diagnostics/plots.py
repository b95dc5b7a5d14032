"""Matplotlib plots of predictive uncertainty, calibration and sparsity (backend-free).

Matplotlib is imported inside each function, so importing this module costs nothing and
works on machines without a display (pyplot falls back to the Agg backend there). Every
function takes an optional ``ax`` (one panel) or ``axes`` (several) to draw into and
returns it: an ``Axes`` for one panel, the ``Figure`` for several. The result saves with
``figure.savefig(path)`` (``ax.figure.savefig`` for an ``Axes``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Literal

import numpy as np
import numpy.typing as npt

from vdppl.diagnostics import _checks
from vdppl.diagnostics.metrics import auroc, reliability_bins

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from vdppl.sparsity import SparsityReport

__all__ = [
    "plot_entropy_histograms",
    "plot_log_alpha",
    "plot_reliability",
    "plot_sparsity",
    "plot_training_curves",
    "plot_weight_mask",
]

#: Keys of a training history drawn first, in this order, when present.
_CURVE_ORDER = ("elbo", "data", "kl")


def _single_axes(ax: Axes | None, figsize: tuple[float, float] = (5.0, 4.0)) -> Axes:
    """``ax``, or the axes of a new figure."""
    if ax is not None:
        return ax
    import matplotlib.pyplot as plt

    _, ax = plt.subplots(figsize=figsize, layout="constrained")
    return ax


def _panel_axes(axes: Axes | Sequence[Axes] | None, count: int, what: str) -> list[Axes]:
    """``count`` axes: from ``axes`` (any nesting) or a new grid of at most 3 columns."""
    if axes is None:
        import matplotlib.pyplot as plt

        cols = min(count, 3)
        rows = math.ceil(count / cols)
        _, grid = plt.subplots(
            rows, cols, figsize=(4.0 * cols, 3.2 * rows), squeeze=False, layout="constrained"
        )
        flat = list(grid.ravel())
        for extra in flat[count:]:
            extra.set_visible(False)
        return flat[:count]
    flat = list(np.ravel(np.asarray(axes, dtype=object)))
    if len(flat) < count:
        raise ValueError(
            f"axes holds {len(flat)} panel(s) but {count} are needed (one per {what}); "
            "pass more axes or axes=None for a new figure"
        )
    return flat[:count]


def plot_reliability(
    probs: npt.ArrayLike, y: npt.ArrayLike, n_bins: int = 15, ax: Axes | None = None
) -> Axes:
    """Reliability diagram: accuracy against confidence per bin [1].

    Wide bars show each bin's accuracy (:func:`~vdppl.diagnostics.metrics.reliability_bins`,
    equal-width bins on ``max_k p_k``), the dashed diagonal is perfect calibration, narrow
    faint bars show the share of examples in each bin, and the title gives the ECE.

    [1] Guo, Pleiss, Sun, Weinberger (2017) arXiv:1706.04599.
    """
    bins = reliability_bins(probs, y, n_bins)
    ece = bins.calibration_errors().ece
    ax = _single_axes(ax)
    width = np.diff(bins.edges)
    centre = bins.edges[:-1] + width / 2
    ax.bar(
        centre,
        np.nan_to_num(bins.accuracy),
        width,
        color="tab:blue",
        edgecolor="black",
        linewidth=0.5,
        alpha=0.8,
        label="accuracy",
    )
    share = bins.count / bins.count.sum()
    ax.bar(centre, share, 0.4 * width, color="black", alpha=0.3, label="share of examples")
    ax.plot([0, 1], [0, 1], "--", color="black", linewidth=1, label="perfect calibration")
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence (max probability)", ylabel="accuracy")
    ax.set_title(f"Reliability (ECE = {ece:.3f}, n = {int(bins.count.sum())})")
    ax.legend(loc="upper left", fontsize="small")
    return ax


def plot_entropy_histograms(
    entropy_in: npt.ArrayLike,
    entropy_out: npt.ArrayLike,
    ax: Axes | None = None,
    labels: tuple[str, str] = ("in-distribution", "out-of-distribution"),
    bins: int = 30,
    xlabel: str = "predictive entropy (nats)",
) -> Axes:
    """Overlaid density histograms of a score (e.g. predictive entropy) on two data sets.

    Both histograms share ``bins`` equal-width bins over the pooled range; the title gives
    :func:`~vdppl.diagnostics.metrics.auroc` of telling the second set from the first by the
    score (higher = more out-of-distribution). Any per-example score works (e.g. the
    mutual information, with ``xlabel`` changed to match).
    """
    entropy_in = _checks.as_array(entropy_in, "entropy_in", ("n_in",))
    entropy_out = _checks.as_array(entropy_out, "entropy_out", ("n_out",))
    bins = _checks.check_positive_int(bins, "bins")
    score = auroc(entropy_in, entropy_out)
    edges = np.histogram_bin_edges(np.concatenate([entropy_in, entropy_out]), bins=bins)
    ax = _single_axes(ax)
    for values, label, color in zip(
        (entropy_in, entropy_out), labels, ("tab:blue", "tab:orange"), strict=True
    ):
        legend = f"{label} (n = {len(values)})"
        ax.hist(values, edges, density=True, alpha=0.5, color=color, label=legend)
    ax.set(xlabel=xlabel, ylabel="density")
    ax.set_title(f"OOD detection AUROC = {score:.3f}")
    ax.legend(fontsize="small")
    return ax


def plot_log_alpha(
    log_alpha: Mapping[str, npt.ArrayLike],
    threshold: float = 3.0,
    axes: Sequence[Axes] | None = None,
) -> Figure:
    """One histogram of ``log alpha`` per layer, the pruning threshold marked.

    A weight is kept when ``log_alpha < threshold`` (sparse VD prunes ``log alpha > 3``);
    each title gives ``kept / total`` for that layer. ``axes`` needs one panel per layer
    (a new grid of at most 3 columns when ``None``). Returns the figure.

    [2] Molchanov, Ashukha, Vetrov (2017) arXiv:1701.05369.
    """
    if not log_alpha:
        raise ValueError("log_alpha is empty; pass {layer name: array of log alpha}")
    values = {
        name: _checks.as_array(np.ravel(la), f"log_alpha[{name!r}]", ("weights",))
        for name, la in log_alpha.items()
    }
    panels = _panel_axes(axes, len(values), "layer")
    for ax, (name, la) in zip(panels, values.items(), strict=True):
        kept = int(np.sum(la < threshold))
        ax.hist(la, bins=50, color="tab:blue", alpha=0.8)
        ax.axvline(threshold, color="tab:red", linestyle="--", label=f"threshold {threshold:g}")
        ax.set(xlabel="log α", ylabel="weights")
        ax.set_title(f"{name}: {kept / la.size:.1%} kept ({kept}/{la.size})", fontsize="medium")
        ax.legend(fontsize="small")
    return panels[0].figure


def plot_sparsity(report: SparsityReport, ax: Axes | None = None) -> Axes:
    """Kept against total weights per layer, each layer's compression written above it.

    The count axis is logarithmic when the bars span more than two orders of magnitude.
    The title gives the overall compression ``|W| / |W != 0|`` at the report's threshold.
    """
    if not report.layers:
        raise ValueError("report has no layers; build it with vdppl.sparsity.report_from_masks")
    names = [layer.name for layer in report.layers]
    total = np.array([layer.total for layer in report.layers], dtype=float)
    kept = np.array([layer.kept for layer in report.layers], dtype=float)
    ax = _single_axes(ax, figsize=(max(5.0, 1.2 * len(names) + 2), 4.0))
    x = np.arange(len(names))
    ax.bar(x - 0.2, total, 0.4, color="lightgrey", edgecolor="grey", label="total")
    ax.bar(x + 0.2, kept, 0.4, color="tab:blue", label="kept")
    positive = np.concatenate([total, kept])
    positive = positive[positive > 0]
    if positive.size and positive.max() / positive.min() > 100:
        ax.set_yscale("log")
    for i, layer in enumerate(report.layers):
        text = f"×{layer.compression:.1f}" if layer.kept else "all pruned"
        ax.annotate(
            text,
            (x[i], total[i]),
            xytext=(0, 3),
            textcoords="offset points",
            ha="center",
            va="bottom",
            fontsize="small",
        )
    ax.margins(y=0.12)
    ax.set_xticks(x, names, rotation=30 if len(names) > 4 else 0)
    ax.set_ylabel("weights")
    ax.set_title(
        f"{report.kept:,} of {report.total:,} weights kept at log α < {report.threshold:g} "
        f"(×{report.compression:.1f})",
        fontsize="medium",
    )
    ax.legend(fontsize="small")
    return ax


def plot_weight_mask(
    mask: npt.ArrayLike,
    image_shape: tuple[int, int],
    ax: Axes | None = None,
    kind: Literal["count", "any"] = "count",
) -> Axes:
    """The image of which input pixels survive pruning in the first layer.

    ``mask`` is the first layer's keep-mask in vdppl's ``(out, in)`` layout (e.g.
    ``log_alpha < threshold``) with ``in = H * W`` or ``C * H * W`` (channels first, as
    flattened by torch). Per pixel::

        count = mask.sum(axis=0).reshape(C, H, W).sum(axis=0)   # output units using it
        any   = count > 0                                        # whether any does

    ``kind`` picks which one is drawn; the title counts the pixels still in use.
    """
    if kind not in ("count", "any"):
        raise ValueError(f"kind must be 'count' or 'any', got {kind!r}")
    mask = _checks.check_mask(mask)
    if len(image_shape) != 2:
        raise ValueError(
            f"image_shape must be (height, width), got {tuple(image_shape)}; channels are "
            "inferred from the mask's number of inputs"
        )
    height, width = (int(d) for d in image_shape)
    pixels = height * width
    if pixels < 1 or mask.shape[1] % pixels:
        raise ValueError(
            f"mask has {mask.shape[1]} inputs (shape (out, in) = {mask.shape}), which is not "
            f"a multiple of image_shape {tuple(image_shape)} = {pixels} pixels; pass the "
            "first layer's mask in (out, in) layout and the (height, width) of the images"
        )
    count = mask.sum(axis=0).reshape(-1, height, width).sum(axis=0)
    image = count if kind == "count" else (count > 0).astype(float)
    ax = _single_axes(ax)
    shown = ax.imshow(image, cmap="viridis" if kind == "count" else "gray", vmin=0)
    label = "output units using the pixel" if kind == "count" else "used by any output unit"
    ax.figure.colorbar(shown, ax=ax, label=label)
    ax.set(xticks=[], yticks=[])
    ax.set_title(f"{int(np.sum(count > 0))} of {pixels} input pixels still used")
    return ax


def plot_training_curves(
    history: Mapping[str, Sequence[float]], axes: Axes | Sequence[Axes] | None = None
) -> Figure:
    """Training curves against epoch: one panel per key, or all on one ``Axes``.

    Draws "elbo", "data" and "kl" first when present (in that order), then any other
    key; an "epoch" key, when present, is the x axis instead of ``1, 2, ...``. Pass
    ``axes`` as a single ``Axes`` to overlay every curve there (with a legend). NaN and
    infinite values (a diverged run) leave gaps. Returns the figure.
    """
    series = {  # NaN allowed: a diverged run's curve is drawn with gaps
        key: _checks.as_array(values, f"history[{key!r}]", ("epochs",), finite=False)
        for key, values in history.items()
        if key != "epoch"
    }
    if not series:
        raise ValueError("history has no curves; pass e.g. {'elbo': [...], 'kl': [...]}")
    keys = [k for k in _CURVE_ORDER if k in series] + [k for k in series if k not in _CURVE_ORDER]
    epochs = None
    if "epoch" in history:
        epochs = _checks.as_array(history["epoch"], "history['epoch']", ("epochs",))
        named = {f"history[{key!r}]": values for key, values in series.items()}
        _checks.check_same_shape(**{"history['epoch']": epochs}, **named)
    single = axes is not None and not np.iterable(axes)
    panels = [axes] * len(keys) if single else _panel_axes(axes, len(keys), "curve")
    for ax, key in zip(panels, keys, strict=True):
        values = series[key]
        x = np.arange(1, len(values) + 1) if epochs is None else epochs
        ax.plot(x, values, marker="." if len(values) < 30 else None, label=key)
        ax.set_xlabel("epoch")
        if single:
            ax.legend(fontsize="small")
        else:
            ax.set_title(key)
    return panels[0].figure
