"""Checks that both backends' converter tests run on their InferenceData."""

import warnings

import arviz as az
import numpy as np
import xarray as xr


def assert_arviz_functions_work(idata, other, var_name, tmp_path):
    """``az.summary``, ``loo``, ``waic``, ``compare`` (``idata`` against ``other``),
    ``plot_ppc`` and ``plot_loo_pit`` run, give finite numbers and save non-empty PNGs."""
    assert not az.summary(idata, var_names=[var_name]).empty
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # few draws: Pareto k warnings are expected here
        loo, waic = az.loo(idata), az.waic(idata)
        comparison = az.compare({"first": idata, "second": other})
    assert np.isfinite(loo.elpd_loo) and np.isfinite(waic.elpd_waic)
    assert set(comparison.index) == {"first", "second"}
    ax = az.plot_ppc(idata, data_pairs={"y": "y"}, num_pp_samples=10)
    np.ravel(ax)[0].figure.savefig(tmp_path / "ppc.png")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ax = az.plot_loo_pit(idata, y="y")
    np.ravel(ax)[0].figure.savefig(tmp_path / "loo_pit.png")
    assert all((tmp_path / f).stat().st_size > 0 for f in ("ppc.png", "loo_pit.png"))


def assert_netcdf_round_trip(idata, tmp_path):
    """Written to netCDF and read back, every group is identical (values, dims, attrs)."""
    path = tmp_path / "idata.nc"
    idata.to_netcdf(path)
    back = az.from_netcdf(path)
    assert set(back.groups()) == set(idata.groups())
    for group in idata.groups():
        xr.testing.assert_identical(back[group].load(), idata[group])
