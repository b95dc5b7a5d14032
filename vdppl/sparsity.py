"""Sparsity reports from pruning masks: backend-free (plain NumPy arrays in).

The compression ratio is the sparse VD paper's ``|W| / |W != 0|``: all weights of the
variational dropout layers over those kept. Units are counted in the layout both backends
share for reports: a weight of shape ``(out, in, *kernel)``; a unit is *dead on output*
when all its incoming weights are pruned (a row of ``W``) and *dead on input* when all
its outgoing weights are pruned (a column).

[2] Molchanov, Ashukha, Vetrov (2017) arXiv:1701.05369.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

import numpy as np

__all__ = ["LayerSparsity", "SparsityReport", "report_from_masks"]


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


def report_from_masks(masks: Mapping[str, np.ndarray], threshold: float) -> SparsityReport:
    """Build a :class:`SparsityReport` from boolean keep-masks in ``(out, in, ...)`` layout."""
    layers = []
    for name, mask in masks.items():
        mask = np.asarray(mask, dtype=bool)
        if mask.ndim >= 2:
            rows = mask.reshape(mask.shape[0], -1).any(axis=1)
            cols = np.moveaxis(mask, 1, 0).reshape(mask.shape[1], -1).any(axis=1)
            dead_out, dead_in = int((~rows).sum()), int((~cols).sum())
        else:
            dead_out = dead_in = 0
        layers.append(
            LayerSparsity(
                name, tuple(mask.shape), int(mask.sum()), int(mask.size), dead_out, dead_in
            )
        )
    return SparsityReport(float(threshold), layers)
