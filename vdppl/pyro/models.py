"""Build ``torch.nn.Sequential`` networks from :mod:`vdppl.models` specs."""

from __future__ import annotations

import torch
from torch import nn

from vdppl import models as specs

__all__ = ["build"]


def build(layers: list, input_shape: tuple[int, ...]) -> nn.Sequential:
    """A torch network for ``layers`` taking inputs of shape ``(batch, *input_shape)``.

    Sizes are inferred by pushing a dummy input through, so ``Dense`` after ``Flatten``
    gets the right ``in_features`` for any image size.
    """
    modules: list[nn.Module] = []
    x = torch.zeros((1, *input_shape))
    for spec in layers:
        if isinstance(spec, specs.Dense):
            module = nn.Linear(x.shape[-1], spec.features)
        elif isinstance(spec, specs.Conv):
            module = nn.Conv2d(x.shape[1], spec.features, spec.kernel, spec.stride, spec.padding)
        elif isinstance(spec, specs.ReLU):
            module = nn.ReLU()
        elif isinstance(spec, specs.MaxPool):
            module = nn.MaxPool2d(spec.size)
        elif isinstance(spec, specs.Flatten):
            module = nn.Flatten()
        elif isinstance(spec, specs.BatchNorm):
            module = nn.BatchNorm2d(x.shape[1]) if x.dim() == 4 else nn.BatchNorm1d(x.shape[1])
        else:
            raise TypeError(f"unknown layer spec {spec!r}")
        try:
            x = module.eval()(x)
        except RuntimeError as err:
            raise ValueError(
                f"layer {spec} does not fit inputs of shape {tuple(x.shape[1:])}: {err}"
            ) from err
        modules.append(module.train())
    return nn.Sequential(*modules)
