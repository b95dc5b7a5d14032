"""Build an ``arviz.InferenceData`` from plain arrays of draws (backend-free).

Both backends' converters (``vdppl.pyro.to_inference_data``,
``vdppl.numpyro.to_inference_data``) collect NumPy arrays and call
:func:`build_inference_data`, so the layout is the same whichever framework fitted the
model:

* ``posterior``: draws of the chosen weight sites and of the other latent sites,
  ``(chain, draw, ...)``; one chain (SVI draws are independent);
* ``posterior_predictive``: draws of each observed site and of data-dependent
  ``deterministic`` sites (e.g. logits), ``(chain, draw, obs_id, ...)``;
* ``log_likelihood``: pointwise ``log p(y_n | x_n, w)`` per draw, ``(chain, draw, obs_id)``,
  for ``az.loo`` and ``az.waic``;
* ``observed_data`` and ``constant_data`` (``obs_id``, ...);
* ``log_alpha``: each variational dropout layer's ``log alpha`` (not a draw: a property
  of the variational posterior), with the layer's axes named.

Every group carries the same ``attrs`` (backend, method, noise mode, threshold, library
versions).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["build_inference_data", "layer_dims", "library_versions"]


def library_versions(*names: str) -> dict[str, str]:
    """``{"vdppl": ..., name: version}`` of the installed packages among ``names``."""
    from importlib import metadata

    versions = {}
    for name in ("vdppl", "arviz", "numpy", *names):
        try:
            versions[f"{name}_version"] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def layer_dims(site: str, ndim: int, layout: str = "out_in") -> list[str]:
    """Dimension names of a weight: ``{site}_out``, ``{site}_in``, ``{site}_kernel_i``.

    ``layout="out_in"`` is torch's ``(out, in, *kernel)``; ``"kernel_in_out"`` is Flax's
    ``(*kernel, in, out)``.
    """
    if ndim == 1:
        return [f"{site}_out"]
    kernel = [f"{site}_kernel_{i}" for i in range(ndim - 2)]
    if layout == "out_in":
        return [f"{site}_out", f"{site}_in", *kernel]
    if layout == "kernel_in_out":
        return [*kernel, f"{site}_in", f"{site}_out"]
    raise ValueError(f"layout must be 'out_in' or 'kernel_in_out', got {layout!r}")


def _with_chain(draws: Mapping[str, np.ndarray] | None) -> dict[str, np.ndarray] | None:
    if not draws:
        return None
    return {name: np.asarray(value)[None] for name, value in draws.items()}


def build_inference_data(
    *,
    posterior: Mapping[str, np.ndarray] | None = None,
    posterior_predictive: Mapping[str, np.ndarray] | None = None,
    log_likelihood: Mapping[str, np.ndarray] | None = None,
    observed_data: Mapping[str, np.ndarray] | None = None,
    constant_data: Mapping[str, np.ndarray] | None = None,
    log_alpha: Mapping[str, np.ndarray] | None = None,
    dims: Mapping[str, list[str]] | None = None,
    attrs: Mapping[str, Any] | None = None,
):
    """InferenceData from draw-major arrays (``(draw, ...)``; a chain dim is added).

    :param dims: dimension names after ``(chain, draw)`` per variable, e.g.
        ``{"y": ["obs_id"], "logits": ["obs_id", "class"]}``; ``log_alpha`` variables use
        the same mapping (without chain and draw).
    """
    import arviz as az
    import xarray as xr

    dims = dict(dims or {})
    attrs = dict(attrs or {})
    idata = az.from_dict(
        posterior=_with_chain(posterior),
        posterior_predictive=_with_chain(posterior_predictive),
        log_likelihood=_with_chain(log_likelihood),
        observed_data=dict(observed_data) if observed_data else None,
        constant_data=dict(constant_data) if constant_data else None,
        dims=dims,
        attrs=attrs,
    )
    if log_alpha:
        data = {name: (dims.get(name), np.asarray(value)) for name, value in log_alpha.items()}
        dataset = xr.Dataset(
            {
                name: (names or [f"{name}_dim_{i}" for i in range(value.ndim)], value)
                for name, (names, value) in data.items()
            },
            attrs=attrs,
        )
        idata.add_groups(log_alpha=dataset)
    for group in idata.groups():
        idata[group].attrs.update(attrs)
    return idata
