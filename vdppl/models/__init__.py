"""Reference architectures as backend-neutral layer specs.

Each backend turns a spec into its own network (``vdppl.pyro.models.build`` gives a
``torch.nn.Sequential``; the NumPyro backend a Flax module), so ``--arch lenet5`` is the
same network whichever backend trains it. Layers:

* ``Dense(features)``, ``Conv(features, kernel, stride, padding)`` (2-d, square kernel),
* ``ReLU()``, ``MaxPool(size)``, ``Flatten()``, ``BatchNorm()``.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "ARCHITECTURES",
    "BatchNorm",
    "Conv",
    "Dense",
    "Flatten",
    "MaxPool",
    "ReLU",
    "architecture",
]


@dataclass(frozen=True)
class Dense:
    features: int


@dataclass(frozen=True)
class Conv:
    features: int
    kernel: int
    stride: int = 1
    padding: int = 0


@dataclass(frozen=True)
class ReLU:
    pass


@dataclass(frozen=True)
class MaxPool:
    size: int = 2


@dataclass(frozen=True)
class Flatten:
    pass


@dataclass(frozen=True)
class BatchNorm:
    pass


def mlp(outputs: int, hidden: tuple[int, ...] = (100, 100)) -> list:
    """Flatten, then ``Dense(h), ReLU`` per hidden size, then ``Dense(outputs)``."""
    layers: list = [Flatten()]
    for h in hidden:
        layers += [Dense(h), ReLU()]
    return [*layers, Dense(outputs)]


def lenet300(outputs: int, hidden: tuple[int, ...] = ()) -> list:
    """LeNet-300-100 (LeCun et al. 1998): 784-300-100-outputs with ReLU."""
    return mlp(outputs, (300, 100))


def lenet5(outputs: int, hidden: tuple[int, ...] = ()) -> list:
    """The Caffe LeNet-5 of the sparse VD paper: conv 20 5x5, pool 2, conv 50 5x5, pool 2,
    fc 500, fc outputs (ReLU after each conv and the first fc)."""
    return [
        Conv(20, 5), ReLU(), MaxPool(2),
        Conv(50, 5), ReLU(), MaxPool(2),
        Flatten(), Dense(500), ReLU(), Dense(outputs),
    ]  # fmt: skip


def vgg_like(outputs: int, hidden: tuple[int, ...] = ()) -> list:
    """VGG-like for CIFAR-10 (Zagoruyko 2015, used by the sparse VD paper): 3x3 convs with
    BatchNorm, 64-64-M-128-128-M-256x3-M-512x3-M-512x3-M, then fc 512 (BatchNorm, ReLU),
    fc outputs. BatchNorm stays deterministic (a point estimate)."""
    layers: list = []
    for block in ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)):
        for width in block:
            layers += [Conv(width, 3, padding=1), BatchNorm(), ReLU()]
        layers.append(MaxPool(2))
    return [*layers, Flatten(), Dense(512), BatchNorm(), ReLU(), Dense(outputs)]


#: name -> function(outputs, hidden) returning the layer list.
ARCHITECTURES = {"mlp": mlp, "lenet300": lenet300, "lenet5": lenet5, "vgg-like": vgg_like}


def architecture(name: str, outputs: int, hidden: tuple[int, ...] = (100, 100)) -> list:
    """The layer list of architecture ``name`` with ``outputs`` units at the top."""
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {name!r}; choose one of {sorted(ARCHITECTURES)}")
    if outputs < 1:
        raise ValueError(f"outputs must be >= 1, got {outputs}")
    return ARCHITECTURES[name](outputs, tuple(hidden))
