"""Predictions from a fitted variational dropout model, in the three usual modes."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
from jax import random
from numpyro.handlers import replay, seed, substitute, trace

from vdppl import kl as vdkl
from vdppl.numpyro._checks import check_finite_args, is_concrete
from vdppl.numpyro.local_reparam_messenger import VARIANCE_SUFFIX, local_reparam

__all__ = ["MODES", "predict"]

#: ``"mean"``: the pruned mean network (deterministic, one draw);
#: ``"mc"``: Monte Carlo with one sampled weight tensor per draw;
#: ``"lrt"``: Monte Carlo with local reparameterization (independent noise per example).
MODES = ("mean", "mc", "lrt")


def _returned(tr: dict, latent: set[str], return_sites) -> dict:
    out = {}
    for name, site in tr.items():
        if site["type"] not in ("sample", "deterministic") or name.endswith(VARIANCE_SUFFIX):
            continue
        wanted = name in return_sites if return_sites is not None else name not in latent
        if wanted:
            out[name] = site["value"]
    return out


def predict(
    model: Callable,
    guide,
    params: Mapping[str, Any],
    rng_key,
    *args,
    mode: str = "mean",
    num_samples: int = 100,
    threshold: float = vdkl.DEFAULT_THRESHOLD,
    return_sites: Sequence[str] | None = None,
    **kwargs,
) -> dict:
    """Draws of the model's non-latent sites (observations, ``numpyro.deterministic``).

    Returns a dict from site name to an array with a leading draw dimension (of size 1 in
    ``"mean"`` mode), like :class:`numpyro.infer.Predictive`. Pass observations as
    ``None`` to sample them.

    * ``"mean"``: every latent site at its posterior median, weights with
      ``log alpha >= threshold`` set to 0 (the sparse deterministic predictor of
      Molchanov et al. 2017); observations are still sampled with ``rng_key``;
    * ``"mc"``: weights sampled from the guide, one tensor per draw (what
      ``Predictive(model, guide=guide, params=params)`` gives);
    * ``"lrt"``: pre-activations sampled under :class:`~vdppl.numpyro.local_reparam`,
      independent per example.

    Draws are computed with ``jax.vmap`` over ``num_samples`` keys.

    :param params: fitted parameters, ``svi.get_params(state)`` (merge
        ``svi_state.mutable_state`` for models with ``numpyro.mutable`` state).
    :param rng_key: a JAX PRNG key; required.
    :param return_sites: names to return; default every sample and deterministic site
        that is not latent.
    :raises ValueError: for NaN or inf in a concrete array argument (traced arguments,
        under ``jit``, are not inspected).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if not (isinstance(num_samples, int) and not isinstance(num_samples, bool) and num_samples > 0):
        raise ValueError(f"num_samples must be a positive int, got {num_samples!r}")
    if rng_key is None:
        raise ValueError("predict needs an explicit rng_key (jax.random.key(...)).")
    threshold = vdkl.check_threshold(threshold)
    check_finite_args("predict", args, kwargs)
    if guide.prototype_trace is None:
        if not is_concrete(rng_key):
            raise RuntimeError("set the guide up (svi.init) before calling predict under jit")
        seed(substitute(guide, data=params), rng_key)(*args, **kwargs)
    latent = set(guide.median(params))

    if mode == "mean":
        values = guide.pruned_median(params, threshold)
        run = substitute(substitute(model, data=params), data=values)
        tr = trace(seed(run, rng_key)).get_trace(*args, **kwargs)
        return jax.tree.map(lambda v: v[None], _returned(tr, latent, return_sites))

    def draw(key):
        guide_key, model_key = random.split(key)
        with local_reparam() if mode == "lrt" else contextlib.nullcontext():
            guide_run = seed(substitute(guide, data=params), guide_key)
            guide_trace = trace(guide_run).get_trace(*args, **kwargs)
            model_run = substitute(replay(seed(model, model_key), guide_trace), data=params)
            tr = trace(model_run).get_trace(*args, **kwargs)
        return _returned(tr, latent, return_sites)

    return jax.vmap(draw)(random.split(rng_key, num_samples))
