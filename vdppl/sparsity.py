"""Sparsity reports from pruning masks: backend-free (plain NumPy arrays in).

The compression ratio is the sparse VD paper's ``|W| / |W != 0|``: all weights of the
variational dropout layers over those kept. Units are counted in the layout both backends
share for reports: a weight of shape ``(out, in, *kernel)``; a unit is *dead on output*
when all its incoming weights are pruned (a row of ``W``) and *dead on input* when all
its outgoing weights are pruned (a column). A grouped convolution's weight is
``(out, in/groups, *kernel)``: output ``o`` of group ``g = o // (out/groups)`` reads input
channels ``g * in/groups + j``, so its ``in`` input channels are counted group by group.

[2] Molchanov, Ashukha, Vetrov (2017) arXiv:1701.05369.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import NamedTuple

import numpy as np

__all__ = [
    "LayerSparsity",
    "SparsityReport",
    "UnitPlan",
    "folded_bias",
    "plan_dead_units",
    "report_from_masks",
]


@dataclass(frozen=True)
class LayerSparsity:
    """Kept and total weights of one layer, and its units with every weight pruned."""

    name: str
    shape: tuple[int, ...]
    kept: int
    total: int
    dead_outputs: int
    dead_inputs: int

    @property
    def compression(self) -> float:
        """``total / kept`` (``inf`` when every weight is pruned)."""
        return self.total / self.kept if self.kept else math.inf

    @property
    def kept_fraction(self) -> float:
        return self.kept / self.total if self.total else 0.0


@dataclass(frozen=True)
class SparsityReport:
    """Per-layer and overall sparsity at one ``log alpha`` threshold."""

    threshold: float
    layers: list[LayerSparsity] = field(default_factory=list)

    @property
    def kept(self) -> int:
        return sum(layer.kept for layer in self.layers)

    @property
    def total(self) -> int:
        return sum(layer.total for layer in self.layers)

    @property
    def compression(self) -> float:
        """Overall ``|W| / |W != 0|``."""
        return self.total / self.kept if self.kept else math.inf

    def to_dict(self) -> dict:
        """Plain JSON-ready dict (``compression`` per layer and overall)."""
        return {
            "threshold": self.threshold,
            "kept_weights": self.kept,
            "total_weights": self.total,
            "compression": self.compression,
            "layers": [
                {**asdict(layer), "shape": list(layer.shape), "compression": layer.compression}
                for layer in self.layers
            ],
        }

    def __str__(self) -> str:
        head = f"{'layer':<24}{'shape':>18}{'kept':>10}{'total':>10}{'x':>9}{'dead out':>10}"
        lines = [f"sparsity at log alpha < {self.threshold:g}", head, "-" * len(head)]
        for layer in self.layers:
            lines.append(
                f"{layer.name:<24}{'x'.join(map(str, layer.shape)):>18}{layer.kept:>10}"
                f"{layer.total:>10}{layer.compression:>9.1f}{layer.dead_outputs:>10}"
            )
        lines.append(
            f"{'total':<24}{'':>18}{self.kept:>10}{self.total:>10}{self.compression:>9.1f}"
        )
        return "\n".join(lines)


def _dead_inputs(mask: np.ndarray, groups: int) -> int:
    """Input channels with every outgoing weight pruned, for ``(out, in/groups, ...)``."""
    if mask.shape[0] % groups:
        raise ValueError(
            f"a weight of shape {mask.shape} cannot have groups={groups}: its first "
            "(output) dim must be a multiple of groups"
        )
    grouped = mask.reshape(groups, mask.shape[0] // groups, mask.shape[1], -1)
    return int((~grouped.any(axis=(1, 3))).sum())  # (groups, in/groups): one per channel


def report_from_masks(
    masks: Mapping[str, np.ndarray],
    threshold: float,
    groups: Mapping[str, int] | None = None,
) -> SparsityReport:
    """Build a :class:`SparsityReport` from boolean keep-masks in ``(out, in, ...)`` layout.

    :param groups: ``groups`` of the grouped convolutions among the layers, by name
        (absent: 1), so that their input channels are counted right.
    """
    groups = {} if groups is None else groups
    layers = []
    for name, mask in masks.items():
        mask = np.asarray(mask, dtype=bool)
        if mask.ndim >= 2:
            rows = mask.reshape(mask.shape[0], -1).any(axis=1)
            dead_out = int((~rows).sum())
            dead_in = _dead_inputs(mask, int(groups.get(name, 1)))
        else:
            dead_out = dead_in = 0
        layers.append(
            LayerSparsity(
                name, tuple(mask.shape), int(mask.sum()), int(mask.size), dead_out, dead_in
            )
        )
    return SparsityReport(float(threshold), layers)


# ------------------------------------------------------------ dead units (compress)
class UnitPlan(NamedTuple):
    """Which units between two layers :func:`plan_dead_units` keeps, and which it folds.

    ``keep[u]``: unit ``u`` stays in the smaller network. ``fold[u]``: unit ``u`` is
    removed and its constant output is added to the next layer's bias
    (:func:`folded_bias`). Removed units that are not folded have no outgoing weight.
    """

    keep: np.ndarray
    fold: np.ndarray


def plan_dead_units(incoming: np.ndarray, outgoing: np.ndarray, can_fold: bool) -> UnitPlan | None:
    """The units between two consecutive layers that can be removed (NumPy, backend-free).

    ``incoming[u]`` holds every weight into unit ``u`` (the previous layer's weight in the
    shared ``(out, in, *kernel)`` layout); ``outgoing[o, u, ...]`` every weight from unit
    ``u`` to output ``o`` of the next layer (its weight with the input axis split as
    ``(units, slots)``: one slot per unit for a dense or convolutional successor, one per
    spatial position after a flatten, plus the kernel's axes). A unit is removed when

    * all its outgoing weights are pruned (its value is never used), or
    * all its incoming weights are pruned and ``can_fold``: it then outputs a constant
      (its bias, through the elementwise layers in between), which the caller folds into
      the next layer's bias with :func:`folded_bias`. Pass ``can_fold=False`` when the
      next layer has no bias, or when the constant is not the same at every position it
      reaches (a padded convolution sees zeros at the border).

    Returns ``None`` when nothing would be removed, or everything would (an empty layer
    would disconnect the network; the layers are then kept as they are).

    >>> w_in = np.array([[1.0, 2.0], [0.0, 0.0], [3.0, 0.0]])  # 3 units, 2 inputs each
    >>> w_out = np.array([[[1.0], [1.0], [0.0]]])  # 1 output; unit 2 unused
    >>> plan_dead_units(w_in, w_out, can_fold=True)
    UnitPlan(keep=array([ True, False, False]), fold=array([False,  True, False]))
    """
    incoming = np.asarray(incoming)
    outgoing = np.asarray(outgoing)
    units = incoming.shape[0]
    if outgoing.ndim < 2 or outgoing.shape[1] != units:
        raise ValueError(
            f"outgoing weights must have shape (next_out, {units}, ...) for {units} units; "
            f"got {outgoing.shape}"
        )
    incoming_dead = ~(incoming.reshape(units, -1) != 0).any(axis=1)
    outgoing_dead = ~(np.moveaxis(outgoing, 1, 0).reshape(units, -1) != 0).any(axis=1)
    fold = incoming_dead & ~outgoing_dead if can_fold else np.zeros(units, dtype=bool)
    remove = outgoing_dead | fold
    if not remove.any() or remove.all():
        return None
    return UnitPlan(~remove, fold)


def folded_bias(outgoing: np.ndarray, constants: np.ndarray, fold: np.ndarray) -> np.ndarray:
    """What the folded units add to the next layer's bias::

        delta_b[o] = sum_{u in fold} sum_s outgoing[o, u, s] * constants[u, s]

    ``outgoing`` is ``(next_out, units, slots)`` as for :func:`plan_dead_units` (kernel
    axes of a convolution flattened into ``slots``); ``constants[u, s]`` is unit ``u``'s
    constant value at slot ``s`` (the same value in every slot when the unit feeds the
    next layer directly).

    >>> folded_bias(np.ones((2, 3, 1)), np.array([[1.0], [2.0], [4.0]]), np.array([0, 1, 1], bool))
    array([6., 6.])
    """
    outgoing = np.asarray(outgoing)
    constants = np.broadcast_to(np.asarray(constants), outgoing.shape[1:])
    return np.einsum("ous,us->o", outgoing[:, fold], constants[fold])
