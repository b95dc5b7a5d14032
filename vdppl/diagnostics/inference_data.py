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

Every group carries the same ``attrs`` (:func:`converter_attrs`: backend, method, noise
mode, weight layout, threshold, library versions).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = [
    "DrawCollector",
    "build_inference_data",
    "check_variational_guide",
    "converter_attrs",
    "example_dims",
    "guide_method",
    "keep_mask_out_in",
    "layer_dims",
    "library_versions",
]

#: how each backend lays out a weight: torch's ``(out, in, *kernel)``, Flax's ``(*kernel, in, out)``
WEIGHT_LAYOUTS = ("out_in", "kernel_in_out")


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
    raise ValueError(f"layout must be one of {WEIGHT_LAYOUTS}, got {layout!r}")


def example_dims(name: str, ndim: int, *, classes: bool = False) -> list[str]:
    """Dimension names of a per-example variable with ``ndim`` axes, ``obs_id`` first.

    ``["obs_id", "class"]`` for a 2-d variable when ``classes`` (logits, probabilities);
    otherwise ``["obs_id", "{name}_dim_0", ...]``, numbered from the axis after ``obs_id``.
    """
    if classes and ndim == 2:
        return ["obs_id", "class"]
    return ["obs_id", *[f"{name}_dim_{i}" for i in range(ndim - 1)]]


def keep_mask_out_in(log_alpha, threshold: float) -> np.ndarray | None:
    """``log_alpha < threshold`` of a dense layer as ``(out, in)``, whatever its layout.

    ``log_alpha`` is one variable of an InferenceData's ``log_alpha`` group (an
    ``xarray.DataArray``); its axes are found by name (``{site}_out``, ``{site}_in``,
    from :func:`layer_dims`), so a torch ``(out, in)`` weight and a Flax ``(in, out)``
    kernel give the same mask. Returns ``None`` for other variables (convolution kernels,
    biases, unnamed axes).
    """
    name = log_alpha.name
    wanted = (f"{name}_out", f"{name}_in")
    if log_alpha.ndim != 2 or set(log_alpha.dims) != set(wanted):
        return None
    return np.asarray(log_alpha.transpose(*wanted).values < threshold)


def guide_method(guide: Any) -> str:
    """The method name (as ``vdppl train --method``) of an ``AutoVariationalDropout``.

    ``fixed_alpha`` set: ``"gaussian-dropout"``; additive noise: ``"sparse-vd"``;
    multiplicative noise with ``alpha_shape="unit"``: ``"vd-a"``, ``"weight"``: ``"vd-b"``
    (Kingma et al. 2015's variants A and B), ``"layer"``: ``"vd-layer"``.
    """
    if guide.fixed_alpha is not None:
        return "gaussian-dropout"
    if guide.noise == "additive":
        return "sparse-vd"
    return {"unit": "vd-a", "weight": "vd-b"}.get(guide.alpha_shape, f"vd-{guide.alpha_shape}")


def check_variational_guide(guide: Any, expected: type, backend: str) -> None:
    """Refuse guides without a variational dropout posterior (e.g. MAP's ``AutoDelta``).

    A point estimate is a single draw: ``az.loo`` and ``az.waic`` need the spread of
    the log likelihood over posterior draws, which one draw does not have.
    """
    if not isinstance(guide, expected):
        raise TypeError(
            f"to_inference_data needs a fitted vdppl.{backend}.AutoVariationalDropout guide, "
            f"got {type(guide).__name__}. A point estimate (MAP, AutoDelta) is one draw, so "
            "LOO and WAIC would be meaningless; score its predictions on held-out data with "
            "vdppl.diagnostics.classification_metrics(probs[None], y) or "
            "regression_metrics(pred[None], y) instead."
        )


def converter_attrs(
    guide: Any,
    *,
    backend: str,
    method: str | None,
    mode: str,
    threshold: float,
    weight_layout: str,
    libraries: tuple[str, ...],
) -> dict[str, Any]:
    """The ``attrs`` both converters write: what was fitted, how it was drawn, versions.

    ``method=None`` takes it from the guide (:func:`guide_method`); ``weight_layout`` is
    one of :data:`WEIGHT_LAYOUTS` (the axes are also named, see :func:`layer_dims`).
    """
    return {
        "backend": backend,
        "inference_library": backend,
        "method": guide_method(guide) if method is None else method,
        "mode": mode,
        "noise": guide.noise,
        "alpha_shape": guide.alpha_shape,
        "kl_approximation": guide.kl_approximation,
        "threshold": float(threshold),
        "weight_layout": weight_layout,
        **library_versions(*libraries),
    }


class DrawCollector:
    """Preallocated ``(draws, n, ...)`` arrays, filled block by block of draws and rows.

    The converters loop over draws and over chunks of the data; each block lands in its
    place, so memory holds the result once (no list of chunks to concatenate).
    """

    def __init__(self, num_draws: int, n: int) -> None:
        self.num_draws, self.n = num_draws, n
        self.arrays: dict[str, np.ndarray] = {}

    def put(self, name: str, first_draw: int, start: int, value: np.ndarray) -> None:
        """Store ``value`` of shape ``(draws, rows, ...)`` at draws ``first_draw, ...`` and
        rows ``start, ...``."""
        value = np.asarray(value)
        if name not in self.arrays:
            shape = (self.num_draws, self.n, *value.shape[2:])
            self.arrays[name] = np.empty(shape, value.dtype)
        self.arrays[name][first_draw : first_draw + len(value), start : start + value.shape[1]] = (
            value
        )


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
