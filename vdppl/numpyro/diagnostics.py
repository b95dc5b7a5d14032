"""``to_inference_data``: an ArviZ InferenceData from a NumPyro variational dropout fit.

ArviZ's NumPyro converter reads MCMC runs; this one runs the guide and the model draw by
draw (``jax.vmap`` over draws, jitted per chunk of the data) and hands NumPy arrays to
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
from vdppl.diagnostics.inference_data import build_inference_data, layer_dims, library_versions
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
    if guide.prototype_trace is None:
        raise RuntimeError("fit the guide first (or call it once with the model's arguments)")
    unknown = sorted(set(weight_sites) - set(guide.dropout_sites))
    if unknown:
        raise ValueError(
            f"unknown weight site(s) {unknown}; the guide's weight sites are {guide.dropout_sites}"
        )


def _draw_fn(model, guide, params, mode, threshold, latent, keep) -> Callable:
    """``(key, x, y) -> arrays`` of one draw on one chunk (vmapped over keys later).

    ``keep``: the latent sites whose values are returned (weights only when asked for).
    """
    pruned = guide.pruned_median(params, threshold) if mode == "mean" else None

    def draw(key, x, y):
        guide_key, model_key, obs_key = random.split(key, 3)
        model_key = random.fold_in(model_key, x.shape[0])  # fresh LRT noise per chunk size
        with local_reparam() if mode == "lrt" else contextlib.nullcontext():
            if mode == "mean":
                run = substitute(substitute(seed(model, model_key), data=params), data=pruned)
                values = {n: v for n, v in pruned.items() if n in keep}
            else:
                guide_run = seed(substitute(guide, data=params), guide_key)
                guide_trace = trace(guide_run).get_trace(x, y)
                run = substitute(replay(seed(model, model_key), guide_trace), data=params)
                values = {n: s["value"] for n, s in guide_trace.items() if n in keep}
            model_trace = trace(run).get_trace(x, y)
        out: dict[str, dict] = {"predictive": {}, "log_lik": {}, "latent": dict(values)}
        for index, (name, site) in enumerate(model_trace.items()):
            if name in latent or name.endswith(VARIANCE_SUFFIX):
                continue
            if site["type"] == "deterministic":
                out["predictive"][name] = site["value"]
            elif site["type"] == "sample" and site["is_observed"]:
                fn = site["fn"]
                out["log_lik"][name] = fn.log_prob(site["value"])
                out["predictive"][name] = fn.sample(random.fold_in(obs_key, index))
        return out

    return draw


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
    include_x: bool = True,
    method: str = "sparse-vd",
):
    """Draw from the fitted model and return an :class:`arviz.InferenceData`.

    The model is called as ``model(x_chunk, y_chunk)`` (the convention of vdppl's
    examples), ``chunk_size`` rows at a time; every chunk of one draw uses that draw's
    guide key, so it shares the draw's weights (``"mc"``) or guide run (``"lrt"``,
    independent noise per example). Groups and dims:

    * ``posterior``: draws of ``weight_sites`` (default: only the smallest weight site)
      and of the other latent sites;
    * ``posterior_predictive``: each observed site, sampled (``obs_id``), and each
      ``numpyro.deterministic`` site (``obs_id``, ``class`` for 2-d ones such as logits);
    * ``log_likelihood``: ``log p(y_n | x_n, w)`` per draw, unscaled by the plate;
    * ``observed_data`` (``y``), ``constant_data`` (``x``, unless ``include_x=False``);
    * ``log_alpha``: every weight site's log alpha with its layer axes named.

    :param params: fitted parameters, ``svi.get_params(state)``.
    :param rng_key: a JAX PRNG key; required.
    :param mode: ``"lrt"`` (default), ``"mc"`` or ``"mean"`` (the pruned mean network).
    """
    if rng_key is None:
        raise ValueError("to_inference_data needs an explicit rng_key (jax.random.key(...)).")
    threshold = vdkl.check_threshold(threshold)
    if weight_sites is None and guide.prototype_trace is not None:
        sizes = {name: int(np.size(v)) for name, v in guide.log_alpha(params).items()}
        weight_sites = [min(sizes, key=sizes.get)]
    _check_inputs(guide, x, y, num_samples, mode, weight_sites or (), chunk_size)
    latent = set(guide.median(params))
    keep = (latent - set(guide.dropout_sites)) | set(weight_sites)
    draw_fn = _draw_fn(model, guide, params, mode, threshold, latent, keep)
    draw = jax.jit(jax.vmap(draw_fn, (0, None, None)))
    keys = random.split(rng_key, num_samples if mode != "mean" else 1)
    chunks = [
        jax.device_get(
            draw(keys, jnp.asarray(x[i : i + chunk_size]), jnp.asarray(y[i : i + chunk_size]))
        )
        for i in range(0, len(x), chunk_size)
    ]
    if mode == "mean":  # one deterministic network: repeat its draw
        chunks = [jax.tree.map(lambda v: np.repeat(v, num_samples, 0), c) for c in chunks]
    predictive = {
        k: np.concatenate([c["predictive"][k] for c in chunks], 1) for k in chunks[0]["predictive"]
    }
    log_lik = {
        k: np.concatenate([c["log_lik"][k] for c in chunks], 1) for k in chunks[0]["log_lik"]
    }

    # the draws' own values ("mc": the sampled weights the model used; "mean": the pruned
    # means); under "lrt" the model used no weight sample, so weights are drawn here
    posterior = {name: np.asarray(chunks[0]["latent"][name]) for name in sorted(keep)}
    if mode == "lrt":
        weight_key = random.fold_in(rng_key, 1)
        for name in weight_sites:
            fn = guide.get_posterior(params, name)
            posterior[name] = np.asarray(fn.sample(weight_key, (num_samples,)))
    dims: dict[str, list[str]] = {}
    log_alpha = {name: np.asarray(v) for name, v in guide.log_alpha(params).items()}
    for name, value in {**log_alpha, **{n: posterior[n][0] for n in weight_sites}}.items():
        dims[name] = layer_dims(name, value.ndim, layout="kernel_in_out")
    for name, value in predictive.items():
        extra = ["class"] if value.ndim == 3 and name not in log_lik else []
        extra += [f"{name}_dim_{i}" for i in range(len(extra) + 1, value.ndim - 1)]
        dims[name] = ["obs_id", *extra]
    y = np.asarray(y)
    observed = {name: y for name in log_lik}
    constant = {"x": np.asarray(x)} if include_x else None
    if include_x:
        dims["x"] = ["obs_id", *[f"x_dim_{i}" for i in range(np.ndim(x) - 1)]]
    attrs = {
        "backend": "numpyro",
        "inference_library": "numpyro",
        "method": method,
        "mode": mode,
        "noise": guide.noise,
        "kl_approximation": guide.kl_approximation,
        "threshold": float(threshold),
        **library_versions("jax", "numpyro", "flax"),
    }
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
