"""The backend-free pieces the converters share: method names, masks, dims, collection."""

from types import SimpleNamespace

import numpy as np
import pytest
import xarray as xr

from vdppl.diagnostics import inference_data as vdid


@pytest.mark.parametrize(
    "noise,alpha_shape,fixed_alpha,method",
    [
        ("additive", "weight", None, "sparse-vd"),
        ("multiplicative", "unit", None, "vd-a"),
        ("multiplicative", "weight", None, "vd-b"),
        ("multiplicative", "layer", None, "vd-layer"),
        ("multiplicative", "weight", 1.0, "gaussian-dropout"),
        ("multiplicative", "unit", 0.25, "gaussian-dropout"),
    ],
    ids=str,
)
def test_guide_method(noise, alpha_shape, fixed_alpha, method):
    guide = SimpleNamespace(noise=noise, alpha_shape=alpha_shape, fixed_alpha=fixed_alpha)
    assert vdid.guide_method(guide) == method


def test_keep_mask_is_out_in_in_either_layout():
    log_alpha = np.arange(12.0).reshape(3, 4) - 5.0  # torch: 3 outputs, 4 inputs
    torch_like = xr.DataArray(log_alpha, dims=["w_out", "w_in"], name="w")
    flax_like = xr.DataArray(log_alpha.T, dims=["w_in", "w_out"], name="w")
    expected = log_alpha < 3.0
    np.testing.assert_array_equal(vdid.keep_mask_out_in(torch_like, 3.0), expected)
    np.testing.assert_array_equal(vdid.keep_mask_out_in(flax_like, 3.0), expected)


def test_keep_mask_of_other_layers_is_none():
    conv = xr.DataArray(np.zeros((2, 2, 3, 4)), name="c", dims=vdid.layer_dims("c", 4))
    unnamed = xr.DataArray(np.zeros((3, 4)), name="w", dims=["a", "b"])
    assert vdid.keep_mask_out_in(conv, 3.0) is None
    assert vdid.keep_mask_out_in(unnamed, 3.0) is None


def test_example_dims():
    assert vdid.example_dims("y", 1) == ["obs_id"]
    assert vdid.example_dims("logits", 2, classes=True) == ["obs_id", "class"]
    assert vdid.example_dims("x", 3) == ["obs_id", "x_dim_0", "x_dim_1"]


def test_layout_must_be_known():
    with pytest.raises(ValueError, match=r"layout must be one of \('out_in', 'kernel_in_out'\)"):
        vdid.layer_dims("w", 2, layout="in_out")


def test_draw_collector_places_blocks():
    collector = vdid.DrawCollector(num_draws=3, n=5)
    full = np.arange(30.0).reshape(3, 5, 2)
    for first, draws in ((0, 2), (2, 1)):
        for start, rows in ((0, 3), (3, 2)):
            block = full[first : first + draws, start : start + rows]
            collector.put("v", first, start, block)
    np.testing.assert_array_equal(collector.arrays["v"], full)


def test_a_point_estimate_guide_is_refused():
    class Guide:
        pass

    with pytest.raises(TypeError, match=r"got object\. A point estimate \(MAP, AutoDelta\)"):
        vdid.check_variational_guide(object(), Guide, "pyro")
