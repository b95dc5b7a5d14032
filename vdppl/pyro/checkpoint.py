"""Save and resume Pyro training: parameters, module buffers, optimizer and random state.

Everything SVI learns lives in Pyro's param store (the guide's parameters and the point
estimates of a :func:`~vdppl.pyro.bayesianize` module's biases); what a network updates
outside SVI lives in its buffers (BatchNorm's ``running_mean``, ``running_var`` and
``num_batches_tracked``). ``save`` writes both, with the optimizer's state and the random
number generators' states, to one file, atomically, so that a fresh process that rebuilds
the same model and guide and calls :func:`load` continues training exactly where the saved
one stopped.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import pyro
import torch
from pyro.optim import PyroOptim

from vdppl._io import atomic_write

__all__ = ["load", "save"]

FORMAT = "vdppl.pyro.checkpoint/1"


def _buffers(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The module's persistent buffers (those ``state_dict`` keeps), by qualified name."""
    persistent = module.state_dict(keep_vars=True).keys()
    return {name: buf for name, buf in module.named_buffers() if name in persistent}


def _restore_buffers(module: torch.nn.Module, saved: dict[str, torch.Tensor], path) -> None:
    own = _buffers(module)
    if own.keys() != saved.keys():
        missing, unexpected = sorted(saved.keys() - own.keys()), sorted(own.keys() - saved.keys())
        raise ValueError(
            f"the module does not match the one saved in {path}: buffers only in the "
            f"checkpoint {missing}, only in the module {unexpected}. Rebuild the network "
            "the same way before loading."
        )
    for name, buf in own.items():
        if buf.shape != saved[name].shape:
            raise ValueError(
                f"buffer {name!r} has shape {tuple(buf.shape)} but {path} saved "
                f"{tuple(saved[name].shape)}; rebuild the network the same way before loading."
            )
    with torch.no_grad():
        for name, buf in own.items():
            buf.copy_(saved[name])


def save(
    path: str | os.PathLike,
    *,
    module: torch.nn.Module | None = None,
    optimizer: PyroOptim | None = None,
    overwrite: bool = True,
    **extra: Any,
) -> Path:
    """Write the param store, ``module``'s buffers, ``optimizer``'s state, RNG states and
    ``extra`` to ``path``.

    The file is written to a temporary name, flushed to disk and renamed, so an
    interrupted save never replaces a good checkpoint with a partial one. With
    ``overwrite=False`` an existing file is an error instead of being replaced.

    :param module: the network (e.g. the one :func:`~vdppl.pyro.bayesianize` returned);
        its persistent buffers are saved. Its parameters are in the param store already.
    :param optimizer: a :class:`pyro.optim.PyroOptim` (e.g. the one given to ``SVI``).
    :param extra: anything picklable by ``torch.save`` (epoch, config, history...).
    """
    path = Path(path)
    if not overwrite and path.exists():
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
    if module is not None and not isinstance(module, torch.nn.Module):
        raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
    state = {
        "format": FORMAT,
        "param_store": pyro.get_param_store().get_state(),
        "buffers": None
        if module is None
        else {k: v.detach().clone() for k, v in _buffers(module).items()},
        "optimizer": None if optimizer is None else optimizer.get_state(),
        "rng": {
            "torch": torch.get_rng_state(),
            "numpy": np.random.get_state(),
            "python": random.getstate(),
        },
        "extra": extra,
    }
    return atomic_write(path, lambda tmp: torch.save(state, tmp))


def load(
    path: str | os.PathLike,
    *,
    module: torch.nn.Module | None = None,
    optimizer: PyroOptim | None = None,
    restore_rng: bool = True,
) -> dict[str, Any]:
    """Restore what :func:`save` wrote; return its ``extra`` dict.

    Rebuild the model and the guide the same way first; the guide picks up the loaded
    parameters when it is first called. The param store is replaced, not merged. Pass
    the rebuilt network as ``module`` to restore its buffers (BatchNorm statistics); a
    module left out keeps its own.

    A guide's set-up draws no random numbers (it leaves the generators as they were), but
    it runs the model once, and BatchNorm in training mode updates its statistics then:
    with BatchNorm in the network, set the guide up (call it once) before ``load``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    state = torch.load(path, weights_only=False)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{path} is not a vdppl Pyro checkpoint (format {FORMAT!r})")
    if module is not None:
        if state.get("buffers") is None:
            raise ValueError(f"{path} was saved without module buffers; save(..., module=net)")
        _restore_buffers(module, state["buffers"], path)
    if optimizer is not None and state["optimizer"] is None:
        raise ValueError(f"{path} was saved without optimizer state")
    store = pyro.get_param_store()
    store.clear()
    store.set_state(state["param_store"])
    if optimizer is not None:
        optimizer.set_state(state["optimizer"])
    if restore_rng:
        torch.set_rng_state(state["rng"]["torch"])
        np.random.set_state(state["rng"]["numpy"])
        random.setstate(state["rng"]["python"])
    return state["extra"]
