"""Each plot returns its axes or figure, draws what it says, and saves to PNG."""

import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from vdppl.diagnostics import metrics, plots
from vdppl.sparsity import report_from_masks

from .conftest import assert_close


def saves(figure, tmp_path, name="plot.png"):
    path = tmp_path / name
    figure.savefig(path)
    return path.stat().st_size > 0


@pytest.fixture
def classified(rng):
    probs = rng.dirichlet(np.ones(4), size=300)
    return probs, np.where(rng.random(300) < 0.3, rng.integers(0, 4, 300), probs.argmax(axis=1))


def test_reliability_diagram(classified, tmp_path):
    probs, y = classified
    ax = plots.plot_reliability(probs, y, n_bins=10)
    assert isinstance(ax, Axes)
    assert len(ax.patches) == 20  # 10 accuracy bars and 10 faint share-of-examples bars
    assert len(ax.lines) == 1  # the diagonal
    assert f"ECE = {metrics.calibration_errors(probs, y, n_bins=10).ece:.3f}" in ax.get_title()
    assert saves(ax.figure, tmp_path)


def test_plots_draw_into_a_given_axes(classified):
    probs, y = classified
    _, ax = plt.subplots()
    assert plots.plot_reliability(probs, y, ax=ax) is ax
    assert plots.plot_entropy_histograms([0.1, 0.2], [0.3], ax=ax) is ax


def test_entropy_histograms_share_bins_and_report_auroc(rng, tmp_path):
    entropy_in, entropy_out = rng.gamma(1.0, 0.2, size=500), rng.gamma(3.0, 0.3, size=200)
    ax = plots.plot_entropy_histograms(entropy_in, entropy_out, bins=20, labels=("a", "b"))
    assert len(ax.patches) == 40
    lefts = np.array([patch.get_x() for patch in ax.patches])
    assert_close(lefts[:20], lefts[20:])  # the same 20 bins for both histograms
    assert f"AUROC = {metrics.auroc(entropy_in, entropy_out):.3f}" in ax.get_title()
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["a (n = 500)", "b (n = 200)"]
    assert saves(ax.figure, tmp_path)


def test_log_alpha_histograms_one_per_layer(rng, tmp_path):
    log_alpha = {"0.weight": rng.normal(2.0, 2.0, size=(20, 64)), "2.weight": np.arange(10.0)}
    fig = plots.plot_log_alpha(log_alpha, threshold=3.0)
    assert isinstance(fig, Figure)
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert len(panels) == 2
    kept = int(np.sum(log_alpha["0.weight"] < 3.0))
    assert panels[0].get_title() == f"0.weight: {kept / 1280:.1%} kept ({kept}/1280)"
    assert panels[1].get_title() == "2.weight: 30.0% kept (3/10)"  # 0, 1, 2 are below 3
    for ax in panels:
        assert len(ax.patches) > 0
        assert ax.lines[0].get_xdata()[0] == 3.0  # the threshold line
    assert saves(fig, tmp_path)


def test_log_alpha_into_given_axes_and_too_few_axes():
    _, axes = plt.subplots(1, 2)
    assert plots.plot_log_alpha({"a": [1.0, 5.0]}, axes=axes) is axes[0].figure
    with pytest.raises(
        ValueError, match=r"axes holds 2 panel\(s\) but 3 are needed \(one per layer"
    ):
        plots.plot_log_alpha({"a": [1.0], "b": [2.0], "c": [3.0]}, axes=axes)
    with pytest.raises(ValueError, match=r"log_alpha is empty"):
        plots.plot_log_alpha({})


@pytest.fixture
def report(rng):
    masks = {
        "0.weight": rng.random((300, 784)) < 0.02,
        "2.weight": rng.random((10, 300)) < 0.5,
        "4.weight": np.zeros((2, 10), dtype=bool),
    }
    return report_from_masks(masks, threshold=3.0)


def test_sparsity_bars_with_compression(report, tmp_path):
    ax = plots.plot_sparsity(report)
    assert isinstance(ax, Axes)
    assert len(ax.patches) == 6  # total and kept per layer
    assert ax.get_yscale() == "log"  # 235,200 against 20 weights
    expected = [f"×{layer.compression:.1f}" for layer in report.layers[:2]] + ["all pruned"]
    assert [text.get_text() for text in ax.texts] == expected
    assert f"(×{report.compression:.1f})" in ax.get_title()
    assert saves(ax.figure, tmp_path)


def test_sparsity_linear_scale_and_empty_report():
    ax = plots.plot_sparsity(report_from_masks({"w": np.ones((3, 4), dtype=bool)}, 3.0))
    assert ax.get_yscale() == "linear"
    with pytest.raises(ValueError, match=r"report has no layers"):
        plots.plot_sparsity(report_from_masks({}, 3.0))


def test_weight_mask_image_counts_units_per_pixel(rng, tmp_path):
    mask = rng.random((5, 12)) < 0.3
    ax = plots.plot_weight_mask(mask, (3, 4))
    assert isinstance(ax, Axes)
    assert_close(ax.images[0].get_array(), mask.sum(axis=0).reshape(3, 4))
    used = int(np.sum(mask.any(axis=0)))
    assert ax.get_title() == f"{used} of 12 input pixels still used"
    assert saves(ax.figure, tmp_path)


def test_weight_mask_any_and_channels():
    mask = np.zeros((2, 2 * 4), dtype=int)  # 2 channels of 2x2 pixels, flattened (C, H, W)
    mask[0, 1] = mask[1, 4 + 1] = mask[1, 4 + 2] = 1
    counts = plots.plot_weight_mask(mask, (2, 2)).images[0].get_array()
    assert_close(counts, [[0, 2], [1, 0]])  # pixel 1 used in both channels
    used = plots.plot_weight_mask(mask, (2, 2), kind="any").images[0].get_array()
    assert_close(used, [[0, 1], [1, 0]])


def test_weight_mask_bad_inputs():
    with pytest.raises(ValueError, match=r"mask has 10 inputs .* not a multiple of image_shape"):
        plots.plot_weight_mask(np.ones((3, 10), dtype=bool), (3, 3))
    with pytest.raises(ValueError, match=r"mask must be boolean .* e.g. log_alpha < threshold"):
        plots.plot_weight_mask(np.full((3, 9), 2.5), (3, 3))
    with pytest.raises(ValueError, match=r"image_shape must be \(height, width\), got \(1, 3, 3\)"):
        plots.plot_weight_mask(np.ones((3, 9), dtype=bool), (1, 3, 3))
    with pytest.raises(ValueError, match=r"kind must be 'count' or 'any'"):
        plots.plot_weight_mask(np.ones((3, 9), dtype=bool), (3, 3), kind="all")


def test_training_curves_one_panel_per_key(tmp_path):
    history = {"kl": [3.0, 2.0, 1.5], "loss_scale": [1.0, 1.0, 1.0], "elbo": [-9.0, -5.0, -4.0]}
    fig = plots.plot_training_curves(history)
    assert isinstance(fig, Figure)
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in panels] == ["elbo", "kl", "loss_scale"]  # known keys first
    assert_close(panels[0].lines[0].get_xdata(), [1, 2, 3])
    assert_close(panels[0].lines[0].get_ydata(), history["elbo"])
    assert saves(fig, tmp_path)


def test_training_curves_on_one_axes_with_epochs():
    _, ax = plt.subplots()
    history = {"epoch": [10, 20], "elbo": [-3.0, -2.0], "data": [-2.5, -1.8], "kl": [0.5, 0.2]}
    assert plots.plot_training_curves(history, axes=ax) is ax.figure
    assert [line.get_label() for line in ax.lines] == ["elbo", "data", "kl"]
    assert_close(ax.lines[0].get_xdata(), [10, 20])


def test_training_curves_of_a_diverged_run_draw_with_gaps():
    fig = plots.plot_training_curves({"elbo": [-9.0, -5.0, np.nan, np.inf]})
    assert len(fig.axes[0].lines) == 1


def test_training_curves_bad_inputs():
    with pytest.raises(ValueError, match=r"history has no curves"):
        plots.plot_training_curves({"epoch": [1, 2]})
    with pytest.raises(ValueError, match=r"history\['epoch'\] has shape \(2,\), history\['kl'\]"):
        plots.plot_training_curves({"epoch": [1, 2], "kl": [1.0, 2.0, 3.0]})
