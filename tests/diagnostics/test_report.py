"""``vdppl.report`` draws the first layer's mask from either backend's weight layout."""

import numpy as np
import pytest

from vdppl import report, runs
from vdppl.diagnostics import plots
from vdppl.diagnostics.inference_data import build_inference_data, layer_dims


@pytest.mark.parametrize("layout", ["out_in", "kernel_in_out"], ids=str)
def test_first_layer_mask_in_either_layout(layout, tmp_path, monkeypatch, rng):
    # 3 output units over 4x4 images; log alpha in torch's (out, in) or Flax's (in, out)
    log_alpha = rng.normal(3.0, 2.0, size=(3, 16))
    stored = log_alpha if layout == "out_in" else log_alpha.T
    logits = rng.normal(size=(2, 5, 3))
    idata = build_inference_data(
        posterior={"a": rng.normal(size=2)},
        posterior_predictive={"logits": logits},
        observed_data={"y": np.array([0, 1, 2, 0, 1])},
        log_alpha={"fc.w": stored},
        dims={
            "logits": ["obs_id", "class"],
            "y": ["obs_id"],
            "fc.w": layer_dims("fc.w", 2, layout),
        },
    )
    idata.to_netcdf(tmp_path / runs.IDATA)
    config = {"method": "sparse-vd", "dataset": "digits", "threshold": 3.0}
    runs.write_json(tmp_path / runs.CONFIG, config)
    runs.write_json(tmp_path / runs.METRICS, {"image_shape": [4, 4]})
    drawn = []

    def record(mask, image_shape, **kwargs):
        drawn.append((np.asarray(mask), image_shape))
        return draw_mask(mask, image_shape, **kwargs)

    draw_mask = plots.plot_weight_mask
    monkeypatch.setattr(plots, "plot_weight_mask", record)
    report.build_report(tmp_path)
    assert (tmp_path / "mask.png").stat().st_size > 0
    ((mask, image_shape),) = drawn
    np.testing.assert_array_equal(mask, log_alpha < 3.0)  # (out, in) whatever the layout
    assert image_shape == (4, 4)
