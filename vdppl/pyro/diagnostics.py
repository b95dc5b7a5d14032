"""``to_inference_data``: an ArviZ InferenceData from a Pyro variational dropout fit.

ArviZ has no converter for SVI results; this one runs the guide and the model draw by
draw, over the data in chunks, and hands NumPy arrays to
:func:`vdppl.diagnostics.inference_data.build_inference_data`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import numpy as np
import torch
from pyro import poutine

from vdppl import kl as vdkl
from vdppl.diagnostics import inference_data as vdid
from vdppl.pyro.guide import AutoVariationalDropout
from vdppl.pyro.local_reparam_messenger import LocalReparamMessenger
from vdppl.pyro.predict import MODES

__all__ = ["to_inference_data"]


def _check_inputs(guide, x, y, num_samples, mode, weight_sites, chunk_size):
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if not (isinstance(num_samples, int) and num_samples > 0):
        raise ValueError(f"num_samples must be a positive int, got {num_samples!r}")
    if not (isinstance(chunk_size, int) and chunk_size > 0):
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    if not (torch.is_tensor(x) and torch.is_tensor(y)):
        raise TypeError("x and y must be torch tensors (torch.as_tensor(array))")
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


@torch.no_grad()
def to_inference_data(
    model,
    guide,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    num_samples: int = 100,
    mode: str = "lrt",
    weight_sites: Sequence[str] | None = None,
    threshold: float = vdkl.DEFAULT_THRESHOLD,
    chunk_size: int = 1000,
    include_x: bool = True,
    method: str | None = None,
    progress: bool = False,
):
    """Draw from the fitted model and return an :class:`arviz.InferenceData`.

    The model is called as ``model(x_chunk, y_chunk)`` (the convention of vdppl's examples
    and CLI), ``chunk_size`` rows at a time, so many draws over a large test set stay
    within memory; every chunk of one draw shares that draw's weights (``"mc"``) or its
    guide run (``"lrt"``, independent noise per example). Groups and dims:

    * ``posterior``: draws of ``weight_sites`` with dims ``{site}_out``, ``{site}_in``, ...
      (by default only the smallest weight site: a network's weights can be millions of
      numbers; ArviZ's ``loo``/``waic`` need some posterior group) and draws of the other
      latent sites (e.g. an observation noise);
    * ``posterior_predictive``: each observed site, sampled (``obs_id``), and each
      ``pyro.deterministic`` site (``obs_id``, ``class`` for 2-d ones such as logits);
    * ``log_likelihood``: ``log p(y_n | x_n, w)`` per draw, unscaled by the plate;
    * ``observed_data`` (``y``), ``constant_data`` (``x``, unless ``include_x=False``);
    * ``log_alpha``: every weight site's log alpha with its layer axes named.

    Draws run one at a time (torch's global RNG; seed it with ``pyro.set_rng_seed``), so
    memory holds one chunk's activations for one draw beside the result.

    :param mode: ``"lrt"`` (default), ``"mc"`` or ``"mean"`` (the pruned mean network;
        one draw's worth of predictions per draw, so LOO is degenerate).
    :param weight_sites: weight sites whose draws go to ``posterior``: under ``"mc"`` the
        weights the model used for that draw, under ``"lrt"`` (which samples no weight)
        independent draws from the guide's posterior, under ``"mean"`` the pruned means.
    :param threshold: pruning threshold on ``log alpha`` (``"mean"`` mode, and the attrs).
    :param method: the ``method`` attr; default from the guide (``"sparse-vd"``,
        ``"vd-a"``, ``"vd-b"``, ``"gaussian-dropout"``: see
        :func:`~vdppl.diagnostics.inference_data.guide_method`).
    :raises TypeError: for a guide that is not an ``AutoVariationalDropout`` (a MAP
        point estimate has no posterior draws to compute LOO from).
    """
    vdid.check_variational_guide(guide, AutoVariationalDropout, "pyro")
    threshold = vdkl.check_threshold(threshold)
    if weight_sites is None and guide.prototype_trace is not None:
        sizes = {
            name: v.numel() for name, v in guide.median().items() if name in guide.dropout_sites
        }
        weight_sites = [min(sizes, key=sizes.get)]
    _check_inputs(guide, x, y, num_samples, mode, weight_sites or (), chunk_size)
    from tqdm.auto import tqdm

    latent = {name for name, _ in guide.prototype_trace.iter_stochastic_nodes()}
    predictive = vdid.DrawCollector(num_samples, len(x))
    log_lik = vdid.DrawCollector(num_samples, len(x))
    posterior: dict[str, list[np.ndarray]] = {}
    dims: dict[str, list[str]] = {}
    pruned = guide.pruned_median(threshold) if mode == "mean" else None
    for draw in tqdm(range(num_samples), disable=not progress, desc="draws"):
        handler = LocalReparamMessenger() if mode == "lrt" else contextlib.nullcontext()
        with handler:
            if mode == "mean":
                run_model = poutine.condition(model, data=pruned)
                values = pruned
            else:
                guide_trace = poutine.trace(guide).get_trace(x[:chunk_size], y[:chunk_size])
                run_model = poutine.replay(model, trace=guide_trace)
                values = {n: s["value"] for n, s in guide_trace.nodes.items() if n in latent}
            for start in range(0, len(x), chunk_size):
                xc, yc = x[start : start + chunk_size], y[start : start + chunk_size]
                trace = poutine.util.prune_subsample_sites(
                    poutine.trace(run_model).get_trace(xc, yc)
                )
                _collect_chunk(trace, latent, draw, start, predictive, log_lik, dims)
        for name in sorted(latent - set(guide.dropout_sites)):
            posterior.setdefault(name, []).append(values[name].detach().cpu().numpy())
        for name in weight_sites:  # "lrt" sampled no weight: draw one from the posterior
            sample = guide.get_posterior(name).sample() if mode == "lrt" else values[name]
            posterior.setdefault(name, []).append(sample.detach().cpu().numpy())
    log_alpha = {name: v.cpu().numpy() for name, v in guide.log_alpha().items()}
    for name, value in {**log_alpha, **{n: posterior[n][0] for n in weight_sites}}.items():
        dims[name] = vdid.layer_dims(name, value.ndim)
    observed = {name: y.cpu().numpy() for name in log_lik.arrays}
    for name in observed:
        dims.setdefault(name, vdid.example_dims(name, y.dim()))
    constant = {"x": x.cpu().numpy()} if include_x else None
    if include_x:
        dims["x"] = vdid.example_dims("x", x.dim())
    attrs = vdid.converter_attrs(
        guide,
        backend="pyro",
        method=method,
        mode=mode,
        threshold=threshold,
        weight_layout="out_in",
        libraries=("torch", "pyro-ppl"),
    )
    return vdid.build_inference_data(
        posterior={name: np.stack(v) for name, v in posterior.items()},
        posterior_predictive=predictive.arrays,
        log_likelihood=log_lik.arrays,
        observed_data=observed,
        constant_data=constant,
        log_alpha=log_alpha,
        dims=dims,
        attrs=attrs,
    )


def _collect_chunk(trace, latent, draw, start, predictive, log_lik, dims):
    def put(collector, name, value):
        collector.put(name, draw, start, value.detach().cpu().numpy()[None])

    for name, site in trace.nodes.items():
        if site["type"] != "sample" or name in latent:
            continue
        if site["infer"].get("_deterministic"):
            put(predictive, name, site["value"])
            dims.setdefault(name, vdid.example_dims(name, site["value"].dim(), classes=True))
        elif site["is_observed"]:
            fn = site["fn"]
            put(log_lik, name, fn.log_prob(site["value"]))
            put(predictive, name, fn.sample())
