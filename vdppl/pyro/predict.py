"""Predictions from a fitted variational dropout model, in the three usual modes."""

from __future__ import annotations

import contextlib

import torch
from pyro import poutine

from vdppl import kl as vdkl
from vdppl.pyro.local_reparam_messenger import LocalReparamMessenger

__all__ = ["MODES", "predict"]

#: ``"mean"``: the pruned mean network (deterministic, one draw);
#: ``"mc"``: Monte Carlo with one sampled weight tensor per draw;
#: ``"lrt"``: Monte Carlo with local reparameterization (independent noise per example).
MODES = ("mean", "mc", "lrt")


def _return_sites(trace, latent: set[str], return_sites) -> dict[str, torch.Tensor]:
    trace = poutine.util.prune_subsample_sites(trace)
    out = {}
    for name, site in trace.nodes.items():
        if site["type"] != "sample":
            continue
        wanted = name in return_sites if return_sites is not None else name not in latent
        if wanted:
            out[name] = site["value"]
    return out


@torch.no_grad()
def predict(
    model,
    guide,
    *args,
    mode: str = "mean",
    num_samples: int = 100,
    threshold: float = vdkl.DEFAULT_THRESHOLD,
    return_sites=None,
    **kwargs,
):
    """Draws of the model's non-latent sites (observations, ``pyro.deterministic``).

    Returns a dict from site name to a tensor with a leading draw dimension (of size 1 in
    ``"mean"`` mode), like :class:`pyro.infer.Predictive`. Pass observations as ``None``
    to sample them. ``Predictive(model, guide=guide)`` itself gives the ``"mc"`` mode.

    * ``"mean"``: every latent site at its posterior median, weights with
      ``log alpha >= threshold`` set to 0 (the sparse deterministic predictor of
      Molchanov et al. 2017);
    * ``"mc"``: weights sampled from the guide, one tensor per draw;
    * ``"lrt"``: pre-activations sampled under :class:`~vdppl.pyro.local_reparam`.

    :param return_sites: names to return; default every sample site that is not latent.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if not (isinstance(num_samples, int) and num_samples > 0):
        raise ValueError(f"num_samples must be a positive int, got {num_samples!r}")
    if guide.prototype_trace is None:
        guide(*args, **kwargs)
    latent = {name for name, _ in guide.prototype_trace.iter_stochastic_nodes()}
    if mode == "mean":
        conditioned = poutine.condition(model, data=guide.pruned_median(threshold))
        trace = poutine.trace(conditioned).get_trace(*args, **kwargs)
        draws = [_return_sites(trace, latent, return_sites)]
    else:
        draws = []
        for _ in range(num_samples):
            handler = LocalReparamMessenger() if mode == "lrt" else contextlib.nullcontext()
            with handler:
                guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
                replayed = poutine.replay(model, trace=guide_trace)
                trace = poutine.trace(replayed).get_trace(*args, **kwargs)
            draws.append(_return_sites(trace, latent, return_sites))
    return {name: torch.stack([d[name] for d in draws]) for name in draws[0]}
