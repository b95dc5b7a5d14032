"""Predictions from a fitted variational dropout model, in the three usual modes."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

import torch
from pyro import poutine

from vdppl import kl as vdkl
from vdppl.pyro.local_reparam_messenger import LocalReparamMessenger

if TYPE_CHECKING:
    from vdppl.pyro.guide import AutoVariationalDropout

__all__ = ["MODES", "predict"]

#: ``"mean"``: the pruned mean network (deterministic, one draw);
#: ``"mc"``: Monte Carlo with one sampled weight tensor per draw;
#: ``"lrt"``: Monte Carlo with local reparameterization (independent noise per example).
MODES = ("mean", "mc", "lrt")


@contextlib.contextmanager
def _eval_mode(module: torch.nn.Module | None) -> Iterator[None]:
    """``module.eval()`` for the block, then each submodule's own mode back."""
    if module is None:
        yield
        return
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


def _return_sites(
    trace: poutine.Trace, latent: set[str], return_sites: Iterable[str] | None
) -> dict[str, torch.Tensor]:
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
    model: Callable[..., Any],
    guide: AutoVariationalDropout,
    *args: Any,
    mode: str = "mean",
    num_samples: int = 100,
    threshold: float = vdkl.DEFAULT_THRESHOLD,
    return_sites: Iterable[str] | None = None,
    module: torch.nn.Module | None = None,
    **kwargs: Any,
) -> dict[str, torch.Tensor]:
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
    :param module: the network (e.g. from :func:`~vdppl.pyro.bayesianize`), put in eval
        mode for the call and restored after, so that BatchNorm uses its running
        statistics (and does not update them) and ``nn.Dropout`` is off. Without it the
        network runs in whatever mode it is in: call ``.eval()`` first, as in torch.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if not (isinstance(num_samples, int) and num_samples > 0):
        raise ValueError(f"num_samples must be a positive int, got {num_samples!r}")
    with _eval_mode(module):
        return _predict(model, guide, args, kwargs, mode, num_samples, threshold, return_sites)


def _predict(model, guide, args, kwargs, mode, num_samples, threshold, return_sites):
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
