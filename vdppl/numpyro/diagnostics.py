"""``to_inference_data``: an ArviZ InferenceData from a NumPyro variational dropout fit.

ArviZ's NumPyro converter reads MCMC runs; this one runs the guide once per draw and the
model row by row (``jax.vmap`` over rows and over draws, jitted per chunk of rows and of
draws, with per-row keys so that chunking changes nothing) and hands NumPy arrays to
:func:`vdppl.diagnostics.inference_data.build_inference_data`, the same layout as the Pyro
backend's converter except that weights keep Flax's ``(*kernel, in, out)`` layout (dims
``{site}_kernel_i``, ``{site}_in``, ``{site}_out``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import random
from numpyro.handlers import replay, seed, substitute, trace

from vdppl import kl as vdkl
from vdppl.diagnostics._checks import check_positive_int
from vdppl.diagnostics.inference_data import (
    DrawCollector,
    build_inference_data,
    check_variational_guide,
    converter_attrs,
    example_dims,
    layer_dims,
)
from vdppl.numpyro._checks import check_finite
from vdppl.numpyro.guide import AutoVariationalDropout
from vdppl.numpyro.local_reparam_messenger import VARIANCE_SUFFIX, local_reparam
from vdppl.numpyro.predict import MODES

__all__ = ["to_inference_data"]


def _check_inputs(guide, x, y, num_samples, mode, weight_sites, chunk_size) -> None:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    for name, value in (("num_samples", num_samples), ("chunk_size", chunk_size)):
        if not (isinstance(value, int) and not isinstance(value, bool) and value > 0):
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if not all(isinstance(v, (jax.Array, np.ndarray)) for v in (x, y)):
        raise TypeError("x and y must be arrays (jnp.asarray(...) or NumPy)")
    if len(x) == 0:
        raise ValueError("the data set is empty: x has no rows")
    if len(x) != len(y):
        raise ValueError(f"x has {len(x)} rows but y has {len(y)}; they must match")
    for name, value in (("x", x), ("y", y)):  # eager call: the arrays are concrete
        check_finite(value, f"to_inference_data: {name}")
    if guide.prototype_trace is None:
        raise RuntimeError("fit the guide first (or call it once with the model's arguments)")
    unknown = sorted(set(weight_sites) - set(guide.dropout_sites))
    if unknown:
        raise ValueError(
            f"unknown weight site(s) {unknown}; the guide's weight sites are {guide.dropout_sites}"
        )


def _row_values(model_trace, latent, obs_key) -> dict[str, dict]:
    """Observed sites' log likelihood and sample, and deterministic sites, of a one-row run."""
    out: dict[str, dict] = {"predictive": {}, "log_lik": {}}
    for index, (name, site) in enumerate(model_trace.items()):
        if name in latent or name.endswith(VARIANCE_SUFFIX):
            continue
        if site["type"] == "deterministic":
            if jnp.ndim(site["value"]) == 0 or jnp.shape(site["value"])[0] != 1:
                raise ValueError(
                    f"deterministic site {name!r} has shape {jnp.shape(site['value'])} when the "
                    "model runs on one row; to_inference_data keeps per-example sites only "
                    "(first axis = data). Record global quantities as latent sites instead."
                )
            out["predictive"][name] = site["value"][0]
        elif site["type"] == "sample" and site["is_observed"]:
            fn = site["fn"]
            out["log_lik"][name] = fn.log_prob(site["value"])[0]
            out["predictive"][name] = fn.sample(random.fold_in(obs_key, index))[0]
    return out


def _draw_fn(model, guide, params, mode, threshold, latent, keep, weight_sites) -> Callable:
    """``(key, x, y, rows) -> arrays`` of one draw on one chunk (vmapped over keys later).

    ``rows`` are the chunk's row numbers in the whole data set. The guide runs once per
    draw with the draw's key; the model runs row by row (``jax.vmap`` over one-row
    batches) with keys ``fold_in(model_key, row)`` and ``fold_in(obs_key, row)``. So the
    LRT noise and the sampled observation of row ``i`` in draw ``d`` depend on ``(d, i)``
    only, never on how rows or draws are chunked, and rows of different chunks never
    share noise. ``keep``: the latent sites whose values are returned.
    """
    pruned = guide.pruned_median(params, threshold) if mode == "mean" else None
    handler = local_reparam if mode == "lrt" else contextlib.nullcontext

    def draw(key, x, y, rows):
        guide_key, model_key, obs_key, weight_key = random.split(key, 4)
        guide_trace = None
        if mode == "mean":
            values = {n: v for n, v in pruned.items() if n in keep}
        else:
            with handler():
                guide_run = seed(substitute(guide, data=params), guide_key)
                guide_trace = trace(guide_run).get_trace(x, y)
            values = {n: s["value"] for n, s in guide_trace.items() if n in keep}
        if mode == "lrt":  # the model used no weight sample: draw the kept ones here
            for i, name in enumerate(weight_sites):
                fn = guide.get_posterior(params, name)
                values[name] = fn.sample(random.fold_in(weight_key, i))

        def one_row(row, x_row, y_row):
            seeded = seed(model, random.fold_in(model_key, row))
            if mode == "mean":
                run = substitute(substitute(seeded, data=params), data=pruned)
            else:
                run = substitute(replay(seeded, guide_trace), data=params)
            with handler():
                model_trace = trace(run).get_trace(x_row[None], y_row[None])
            return _row_values(model_trace, latent, random.fold_in(obs_key, row))

        return {"latent": values, **jax.vmap(one_row)(rows, x, y)}

    return draw


def _padded(array, size: int):
    """``array`` with its last row repeated up to ``size`` rows (one compiled shape)."""
    missing = size - len(array)
    return array if missing == 0 else jnp.concatenate([array, jnp.repeat(array[-1:], missing, 0)])


def to_inference_data(
    model: Callable,
    guide,
    params: Mapping[str, Any],
    rng_key,
    x,
    y,
    *,
    num_samples: int = 100,
    mode: str = "lrt",
    weight_sites: Sequence[str] | None = None,
    threshold: float = vdkl.DEFAULT_THRESHOLD,
    chunk_size: int = 1000,
    draw_chunk_size: int = 10,
    include_x: bool = True,
    method: str | None = None,
):
    """Draw from the fitted model and return an :class:`arviz.InferenceData`.

    The model is called as ``model(x_rows, y_rows)`` (the convention of vdppl's
    examples) on one row at a time, vmapped over ``chunk_size`` rows and
    ``draw_chunk_size`` draws per jitted call, so memory holds about
    ``draw_chunk_size * chunk_size`` rows of activations beside the result (the Pyro
    converter runs one draw at a time instead). Draw ``d`` uses the key
    ``random.split(rng_key, num_samples)[d]`` for its guide run and, folded with the row
    number, for each row's noise: the result does not depend on ``chunk_size`` or
    ``draw_chunk_size``, every row of a draw shares the draw's weights (``"mc"``) or
    guide run (``"lrt"``), and rows get independent LRT noise. Groups and dims:

    * ``posterior``: draws of ``weight_sites`` (default: only the smallest weight site)
      and of the other latent sites;
    * ``posterior_predictive``: each observed site, sampled (``obs_id``), and each
      per-example ``numpyro.deterministic`` site (``obs_id``, ``class`` for 2-d ones
      such as logits);
    * ``log_likelihood``: ``log p(y_n | x_n, w)`` per draw, unscaled by the plate;
    * ``observed_data`` (``y``), ``constant_data`` (``x``, unless ``include_x=False``);
    * ``log_alpha``: every weight site's log alpha with its layer axes named.

    :param params: fitted parameters, ``svi.get_params(state)``.
    :param rng_key: a JAX PRNG key; required.
    :param mode: ``"lrt"`` (default), ``"mc"`` or ``"mean"`` (the pruned mean network;
        one draw repeated, so LOO is degenerate).
    :param weight_sites: weight sites whose draws go to ``posterior``: under ``"mc"`` the
        weights the model used, under ``"lrt"`` (which samples no weight) independent
        draws from the guide's posterior, under ``"mean"`` the pruned means.
    :param chunk_size: rows per jitted call.
    :param draw_chunk_size: draws per jitted call.
    :param method: the ``method`` attr; default from the guide (``"sparse-vd"``,
        ``"vd-a"``, ``"vd-b"``, ``"gaussian-dropout"``: see
        :func:`~vdppl.diagnostics.inference_data.guide_method`).
    :raises TypeError: for a guide that is not an ``AutoVariationalDropout`` (a MAP
        point estimate has no posterior draws to compute LOO from).
    """
    if rng_key is None:
        raise ValueError("to_inference_data needs an explicit rng_key (jax.random.key(...)).")
    check_variational_guide(guide, AutoVariationalDropout, "numpyro")
    threshold = vdkl.check_threshold(threshold)
    draw_chunk_size = check_positive_int(draw_chunk_size, "draw_chunk_size")
    if weight_sites is None and guide.prototype_trace is not None:
        sizes = {name: int(np.size(v)) for name, v in guide.log_alpha(params).items()}
        weight_sites = [min(sizes, key=sizes.get)]
    _check_inputs(guide, x, y, num_samples, mode, weight_sites or (), chunk_size)
    latent = set(guide.median(params))
    keep = (latent - set(guide.dropout_sites)) | set(weight_sites)
    draw_fn = _draw_fn(model, guide, params, mode, threshold, latent, keep, weight_sites)
    draw = jax.jit(jax.vmap(draw_fn, (0, None, None, None)))
    num_draws = num_samples if mode != "mean" else 1  # "mean": one network, repeated below
    keys = random.split(rng_key, num_draws)
    rows, draws = min(chunk_size, len(x)), min(draw_chunk_size, num_draws)
    predictive, log_lik = DrawCollector(num_draws, len(x)), DrawCollector(num_draws, len(x))
    latent_draws: dict[str, list[np.ndarray]] = {}
    for first in range(0, num_draws, draws):
        taken = min(draws, num_draws - first)
        group = _padded(keys[first : first + draws], draws)
        for start in range(0, len(x), rows):
            stop = min(start + rows, len(x))
            chunk = [*(jnp.asarray(a[start:stop]) for a in (x, y)), jnp.arange(start, stop)]
            out = jax.device_get(draw(group, *(_padded(a, rows) for a in chunk)))
            for kind, collector in (("predictive", predictive), ("log_lik", log_lik)):
                for name, value in out[kind].items():
                    collector.put(name, first, start, value[:taken, : stop - start])
            if start == 0:  # the draw's latent values are the same for every chunk
                for name, value in out["latent"].items():
                    latent_draws.setdefault(name, []).append(value[:taken])
    posterior = {name: np.concatenate(latent_draws[name]) for name in sorted(keep)}
    groups = (predictive.arrays, log_lik.arrays, posterior)
    if mode == "mean":
        groups = tuple({k: np.repeat(v, num_samples, 0) for k, v in g.items()} for g in groups)
    predictive, log_lik, posterior = groups
    dims: dict[str, list[str]] = {}
    log_alpha = {name: np.asarray(v) for name, v in guide.log_alpha(params).items()}
    for name, value in {**log_alpha, **{n: posterior[n][0] for n in weight_sites}}.items():
        dims[name] = layer_dims(name, value.ndim, layout="kernel_in_out")
    for name, value in predictive.items():
        dims[name] = example_dims(name, value.ndim - 1, classes=name not in log_lik)
    y = np.asarray(y)
    observed = {name: y for name in log_lik}
    constant = {"x": np.asarray(x)} if include_x else None
    if include_x:
        dims["x"] = example_dims("x", np.ndim(x))
    attrs = converter_attrs(
        guide,
        backend="numpyro",
        method=method,
        mode=mode,
        threshold=threshold,
        weight_layout="kernel_in_out",
        libraries=("jax", "numpyro", "flax"),
    )
    return build_inference_data(
        posterior=posterior,
        posterior_predictive=predictive,
        log_likelihood=log_lik,
        observed_data=observed,
        constant_data=constant,
        log_alpha=log_alpha,
        dims=dims,
        attrs=attrs,
    )
