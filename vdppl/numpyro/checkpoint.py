"""Save and resume NumPyro training: parameters, optimizer/SVI state, extra values.

JAX has no global random state: everything needed to continue training exactly lives in
``svi_state`` (the optimizer's state, the mutable state and the PRNG key that SVI splits
at each step) plus whatever key the user's own loop carries (pass it in ``extra``).
:func:`save` writes them to one file, atomically; a fresh process that rebuilds the same
model, guide and optimizer, calls :func:`load` and continues from the loaded state gives
the same results as an uninterrupted run.

The file is a pickle of NumPy arrays and containers (JAX arrays are converted; typed PRNG
keys are stored as their key data and rebuilt). Load only files you trust.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from vdppl._io import atomic_write

__all__ = ["FORMAT", "load", "save"]

FORMAT = "vdppl.numpyro.checkpoint/1"


class _Key:
    """A typed PRNG key, stored as its implementation name and key data."""

    def __init__(self, impl: str, data: np.ndarray):
        self.impl, self.data = impl, data


def _is_typed_key(x: Any) -> bool:
    return isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key)


def _to_host(tree: Any) -> Any:
    def leaf(x):
        if _is_typed_key(x):
            return _Key(str(jax.random.key_impl(x)), np.asarray(jax.random.key_data(x)))
        return np.asarray(x) if isinstance(x, jax.Array) else x

    return jax.tree.map(leaf, tree, is_leaf=_is_typed_key)


def _to_device(tree: Any) -> Any:
    def leaf(x):
        if isinstance(x, _Key):
            return jax.random.wrap_key_data(jnp.asarray(x.data), impl=x.impl)
        return jnp.asarray(x) if isinstance(x, np.ndarray) else x

    return jax.tree.map(leaf, tree, is_leaf=lambda x: isinstance(x, _Key))


def save(
    path: str | os.PathLike,
    params: Any = None,
    opt_state: Any = None,
    *,
    overwrite: bool = True,
    **extra: Any,
) -> Path:
    """Write ``params``, ``opt_state`` and ``extra`` to ``path`` (atomically).

    The file is written to a temporary name and renamed, so an interrupted save never
    replaces a good checkpoint with a partial one. With ``overwrite=False`` an existing
    file is an error instead of being replaced.

    :param params: e.g. ``svi.get_params(svi_state)`` (for prediction).
    :param opt_state: what training resumes from: the whole ``svi_state`` (recommended:
        optimizer state, mutable state and SVI's PRNG key) or an optimizer state.
    :param extra: picklable values (epoch, config, the data-shuffling key, history...).
    """
    path = Path(path)
    if not overwrite and path.exists():
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
    state = {
        "format": FORMAT,
        "params": _to_host(params),
        "opt_state": _to_host(opt_state),
        "extra": _to_host(extra),
    }

    def write(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            pickle.dump(state, fh, protocol=pickle.HIGHEST_PROTOCOL)

    return atomic_write(path, write)


def load(path: str | os.PathLike) -> dict[str, Any]:
    """Read what :func:`save` wrote: ``{"params", "opt_state", "extra"}`` as JAX arrays.

    An ``svi_state`` comes back as ``numpyro.infer.svi.SVIState``, ready for
    ``svi.update``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        with open(path, "rb") as fh:
            state = pickle.load(fh)
    except (pickle.UnpicklingError, EOFError, AttributeError, ValueError) as err:
        raise ValueError(f"{path} is not a vdppl NumPyro checkpoint ({err})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{path} is not a vdppl NumPyro checkpoint (format {FORMAT!r})")
    return {k: _to_device(state[k]) for k in ("params", "opt_state", "extra")}
