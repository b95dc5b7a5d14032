"""Save and resume Pyro training: parameters, optimizer state and random state.

Everything SVI learns lives in Pyro's param store (the guide's parameters and the point
estimates of a :func:`~vdppl.pyro.bayesianize` module's biases); ``save`` writes it with
the optimizer's state and the random number generators' states to one file, atomically,
so that a fresh process that rebuilds the same model and guide and calls :func:`load`
continues training exactly where the saved one stopped.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import pyro
import torch

from vdppl._io import atomic_write

__all__ = ["load", "save"]

FORMAT = "vdppl.pyro.checkpoint/1"


def save(path: str | os.PathLike, *, optimizer=None, overwrite: bool = True, **extra: Any) -> Path:
    """Write the param store, ``optimizer``'s state, RNG states and ``extra`` to ``path``.

    The file is written to a temporary name and renamed, so an interrupted save never
    replaces a good checkpoint with a partial one. With ``overwrite=False`` an existing
    file is an error instead of being replaced.

    :param optimizer: a :class:`pyro.optim.PyroOptim` (e.g. the one given to ``SVI``).
    :param extra: anything picklable by ``torch.save`` (epoch, config, history...).
    """
    path = Path(path)
    if not overwrite and path.exists():
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
    state = {
        "format": FORMAT,
        "param_store": pyro.get_param_store().get_state(),
        "optimizer": None if optimizer is None else optimizer.get_state(),
        "rng": {
            "torch": torch.get_rng_state(),
            "numpy": np.random.get_state(),
            "python": random.getstate(),
        },
        "extra": extra,
    }
    return atomic_write(path, lambda tmp: torch.save(state, tmp))


def load(path: str | os.PathLike, *, optimizer=None, restore_rng: bool = True) -> dict[str, Any]:
    """Restore what :func:`save` wrote; return its ``extra`` dict.

    Rebuild the model and the guide the same way first; the guide picks up the loaded
    parameters when it is first called. The param store is replaced, not merged.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    state = torch.load(path, weights_only=False)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{path} is not a vdppl Pyro checkpoint (format {FORMAT!r})")
    store = pyro.get_param_store()
    store.clear()
    store.set_state(state["param_store"])
    if optimizer is not None:
        if state["optimizer"] is None:
            raise ValueError(f"{path} was saved without optimizer state")
        optimizer.set_state(state["optimizer"])
    if restore_rng:
        torch.set_rng_state(state["rng"]["torch"])
        np.random.set_state(state["rng"]["numpy"])
        random.setstate(state["rng"]["python"])
    return state["extra"]
